//! The source operator: reads a worker's partitions, stamps records with ingest epochs, and
//! splits them into decoded records and dead letters.
//!
//! ```text
//!  partitions owned by this worker (i % workers == worker)
//!      |  poll (bounded batches)
//!      v
//!  [Source(name)] --output 0--> (T, epoch, +1)            decoded records
//!                 --output 1--> (DeadLetter, epoch, +1)   undecodable records
//! ```
//!
//! Epochs: all sources of a worker share one [`EpochClock`]. The clock closes the current
//! epoch after `engine.epoch_records` records or `engine.epoch_ms` milliseconds, whichever
//! comes first; every source operator then records, per owned partition, the position up
//! to which the epoch covers its input (a [`LogRecord`], appended to the epoch log) and
//! downgrades its capability to the next epoch. Event time is data; it never drives epochs.
//!
//! Backpressure: a worker does not read input for epoch `e` while its outputs have not
//! completed epoch `e - engine.max_epochs_in_flight`, so a fast source cannot run ahead of a
//! slow downstream operator (or a slower worker) and queue unbounded work. While it holds
//! back it pauses its partitions ([`SourcePartition::set_paused`]), so a prefetching source
//! (Kafka) stops fetching too, and counts the pause in `cap_source_backpressure_pauses_total`.
//!
//! A graceful stop (SIGINT/SIGTERM) closes the current epoch, records its positions and
//! drops the capabilities; downstream operators then complete and sinks flush.
//!
//! Replay: a restarted run seeks each partition to where its plan starts it
//! ([`crate::checkpoint::log::Plan`]) and, for each replayed epoch, reads every partition
//! exactly up to the position recorded for it; the clock closes a replayed epoch once every
//! source of the worker has, whatever the record count or time. A partition the plan does not
//! know reads nothing while the run replays. A partition that ends before its recorded
//! position stops the process (exit code 3): its input changed, and going on would publish
//! outputs that differ from those already published.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::Scope;

use crate::checkpoint::log::{EpochLog, LogRecord, Plan};
use crate::dead_letter::DeadLetter;
use crate::metrics::{Gauge, SourceMetrics};
use crate::source::{Polled, Position, Source, SourceError, SourcePartition, SourceRecord};

/// Records read per partition per activation, at most.
const BATCH: usize = 4096;

/// How often the per-partition lag gauges are refreshed.
const LAG_INTERVAL: Duration = Duration::from_millis(500);

/// The per-worker epoch clock shared by all source operators of the worker.
pub struct EpochClock {
    current: u64,
    records: u64,
    /// Records read by this worker in this run.
    read: u64,
    opened: Instant,
    epoch_records: u64,
    epoch_ms: u64,
    /// Epochs closed on this worker and when, awaiting completion (for latency).
    pub closed: VecDeque<(u64, Instant)>,
    stop: Arc<AtomicBool>,
    /// The last epoch cut by the replay plan instead of by records and time.
    replay_through: Option<u64>,
    /// Per source operator of the worker: whether it has ended, and the replayed epoch it
    /// has read all of.
    sources: Vec<SourceState>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SourceState {
    finished: bool,
    ready: Option<u64>,
}

impl EpochClock {
    /// A clock at epoch 0.
    pub fn new(epoch_records: u64, epoch_ms: u64, stop: Arc<AtomicBool>) -> EpochClock {
        EpochClock {
            current: 0,
            records: 0,
            read: 0,
            opened: Instant::now(),
            epoch_records,
            epoch_ms,
            closed: VecDeque::new(),
            stop,
            replay_through: None,
            sources: Vec::new(),
        }
    }

    /// A clock at `first_epoch` that cuts the epochs through `replay_through` by the replay
    /// plan: an epoch closes when every source of the worker has read its recorded end.
    pub fn resuming(mut self, first_epoch: u64, replay_through: Option<u64>) -> EpochClock {
        self.current = first_epoch;
        self.replay_through = replay_through.filter(|&t| t >= first_epoch);
        self
    }

    /// The open epoch.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Whether the open epoch is cut by the replay plan.
    pub fn replaying(&self) -> bool {
        self.replay_through.is_some_and(|t| self.current <= t)
    }

    /// Whether this worker has read any record in this run.
    pub fn read_any(&self) -> bool {
        self.read > 0
    }

    /// Whether every source operator of the worker has ended (and at least one exists).
    pub fn sources_finished(&self) -> bool {
        !self.sources.is_empty() && self.sources.iter().all(|s| s.finished)
    }

    /// Registers a source operator; returns its index.
    fn register(&mut self) -> usize {
        self.sources.push(SourceState::default());
        self.sources.len() - 1
    }

    /// Source `i` has ended.
    fn finish(&mut self, i: usize) {
        self.sources[i].finished = true;
        self.maybe_close_replayed();
    }

    /// Source `i` has read everything of the replayed open epoch.
    fn ready(&mut self, i: usize) {
        self.sources[i].ready = Some(self.current);
        self.maybe_close_replayed();
    }

    fn maybe_close_replayed(&mut self) {
        if !self.replaying() {
            return;
        }
        let current = self.current;
        let all = self
            .sources
            .iter()
            .all(|s| s.finished || s.ready == Some(current));
        if all && self.sources.iter().any(|s| !s.finished) {
            self.close();
        }
    }

    /// Records that `n` records were read into the open epoch; closes it when full.
    fn note(&mut self, n: u64) {
        self.records += n;
        self.read += n;
        self.maybe_close();
    }

    /// Closes the open epoch when it is full or old enough.
    fn maybe_close(&mut self) {
        if self.replaying() {
            return;
        }
        let full = self.epoch_records > 0 && self.records >= self.epoch_records;
        let old =
            self.epoch_ms > 0 && self.opened.elapsed() >= Duration::from_millis(self.epoch_ms);
        if full || (old && self.records > 0) {
            self.close();
        } else if old {
            // Nothing read: restart the timer instead of closing empty epochs.
            self.opened = Instant::now();
        }
    }

    fn close(&mut self) {
        self.closed.push_back((self.current, Instant::now()));
        self.current += 1;
        self.records = 0;
        self.opened = Instant::now();
    }

    /// Records to read before the open epoch is full.
    fn room(&self) -> usize {
        if self.epoch_records == 0 || self.replaying() {
            BATCH
        } else {
            (self.epoch_records.saturating_sub(self.records) as usize).clamp(1, BATCH)
        }
    }

    /// Time until the open epoch times out.
    fn time_left(&self) -> Duration {
        if self.epoch_ms == 0 {
            return Duration::from_millis(10);
        }
        Duration::from_millis(self.epoch_ms).saturating_sub(self.opened.elapsed())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Marks `epoch` as closed now if it is not already (a source ended inside it).
    fn note_final(&mut self, epoch: u64) {
        if !self.closed.iter().any(|(e, _)| *e == epoch) {
            self.closed.push_back((epoch, Instant::now()));
        }
    }
}

/// The collections a source contributes to the dataflow.
pub struct SourceStreams<'s, T: 'static> {
    /// Decoded records, stamped with their ingest epoch.
    pub records: VecCollection<'s, u64, T>,
    /// Undecodable records with their reasons.
    pub dead_letters: VecCollection<'s, u64, DeadLetter>,
}

struct OwnedPartition<T> {
    label: String,
    lag: Gauge,
    inner: Box<dyn SourcePartition<T>>,
    remaining: Option<u64>,
    done: bool,
    /// The recorded end of each replayed epoch (from the plan's first epoch on); empty: the
    /// partition reads nothing while the run replays (it is new).
    ends: Vec<Position>,
}

impl<T> OwnedPartition<T> {
    /// The recorded end of replayed `epoch` (`first` is the plan's first epoch).
    fn end_of(&self, epoch: u64, first: u64) -> Option<Position> {
        let i = usize::try_from(epoch.checked_sub(first)?).ok()?;
        self.ends.get(i).copied()
    }
}

/// Everything the source operator needs, bundled.
pub struct SourceSpec<T> {
    /// The probe of every output: the source pauses while it is more than
    /// `max_epochs_in_flight` epochs ahead of it (backpressure).
    pub outputs: timely::dataflow::operators::probe::Handle<u64>,
    /// Epochs a worker may read ahead of its completed outputs.
    pub max_epochs_in_flight: u64,
    /// The configured source.
    pub source: Arc<dyn Source<T>>,
    /// Total records to read over all partitions (split by partition), if limited.
    pub limit: Option<u64>,
    /// Counters.
    pub metrics: SourceMetrics,
    /// Where each partition starts and how replayed epochs are cut.
    pub plan: Arc<Plan>,
}

/// The share of `total` that partition `index` of `count` reads.
pub fn share(total: u64, index: usize, count: usize) -> u64 {
    let count = count as u64;
    let index = index as u64;
    total / count + u64::from(index < total % count)
}

/// Builds the source operator for `spec` in `scope`.
pub fn source_operator<'s, T: ExchangeData>(
    scope: Scope<'s, u64>,
    spec: SourceSpec<T>,
    clock: Rc<RefCell<EpochClock>>,
    log: Rc<RefCell<EpochLog>>,
) -> Result<SourceStreams<'s, T>, SourceError> {
    let name = spec.source.name().to_owned();
    let labels = spec.source.partitions();
    let (index, peers) = (scope.index(), scope.peers());
    let mine: Vec<usize> = (0..labels.len()).filter(|i| i % peers == index).collect();
    let opened = spec.source.open_owned(&mine)?;
    let plan = spec.plan;
    let mut owned: Vec<OwnedPartition<T>> = Vec::new();
    for (i, mut inner) in mine.into_iter().zip(opened) {
        let planned = plan.partition(&name, &labels[i]);
        if let Some(start) = planned.and_then(|p| p.start) {
            inner.seek(start).map_err(|e| match e {
                SourceError::Seek {
                    partition,
                    position,
                    reason,
                    ..
                } => SourceError::Seek {
                    source_name: name.clone(),
                    partition,
                    position,
                    reason: format!("{reason} (resuming where the restored epoch ended)"),
                },
                other => other,
            })?;
        }
        owned.push(OwnedPartition {
            label: labels[i].clone(),
            lag: spec.metrics.lag(&labels[i]),
            inner,
            remaining: spec.limit.map(|n| share(n, i, labels.len())),
            done: false,
            ends: planned.map(|p| p.ends.clone()).unwrap_or_default(),
        });
    }
    let first_epoch = plan.first_epoch;
    let id = clock.borrow_mut().register();
    if !owned.is_empty() {
        log.borrow_mut().record(&LogRecord {
            epoch: first_epoch,
            source: name.clone(),
            positions: owned
                .iter()
                .map(|p| (p.label.clone(), p.inner.position()))
                .collect(),
            start: true,
            finished: false,
        });
    }
    tracing::info!(source = %name, worker = index, partitions = owned.len(), first_epoch, replay_through = ?plan.replay_through, "source opened");

    let mut builder = OperatorBuilder::new(format!("Source({name})"), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(info.address);
    type Updates<D> = Vec<(D, u64, isize)>;
    type Builder<D> = timely::container::CapacityContainerBuilder<Updates<D>>;
    let (out_ok, stream_ok) = builder.new_output::<Updates<T>>();
    let (out_err, stream_err) = builder.new_output::<Updates<DeadLetter>>();
    let mut out_ok: OutputBuilder<u64, Builder<T>> = OutputBuilder::from(out_ok);
    let mut out_err: OutputBuilder<u64, Builder<DeadLetter>> = OutputBuilder::from(out_err);
    let metrics = spec.metrics;
    let outputs = spec.outputs;
    let max_in_flight = spec.max_epochs_in_flight.max(1);

    builder.build(move |mut caps| {
        let mut caps = {
            let err_cap = caps.pop();
            let ok_cap = caps.pop();
            match (ok_cap, err_cap) {
                (Some(a), Some(b)) => Some((a, b)),
                _ => None,
            }
        };
        let mut buffer: Vec<SourceRecord<T>> = Vec::with_capacity(BATCH);
        let mut cursor = 0usize;
        let mut paused = false;
        let mut lag_updated = Instant::now();
        move |_frontiers| {
            let Some((cap_ok, cap_err)) = caps.as_mut() else { return };
            let mut clock = clock.borrow_mut();
            let epoch = *cap_ok.time();

            // Close epochs the clock has moved past: record positions, downgrade.
            let finished = owned.iter().all(|p| p.done) || clock.stopping();
            if clock.current() > epoch || finished {
                let rec = LogRecord {
                    epoch,
                    source: name.clone(),
                    positions: owned.iter().map(|p| (p.label.clone(), p.inner.position())).collect(),
                    start: false,
                    finished: finished && clock.current() == epoch,
                };
                if !owned.is_empty() {
                    log.borrow_mut().record(&rec);
                }
                if finished {
                    if !owned.is_empty() {
                        clock.note_final(epoch);
                    }
                    clock.finish(id);
                    tracing::info!(source = %name, worker = index, last_epoch = epoch, "source finished");
                    caps = None;
                    return;
                }
                let next = clock.current();
                cap_ok.downgrade(&next);
                cap_err.downgrade(&next);
            }
            let epoch = *cap_ok.time();

            // Backpressure: do not read further ahead of the outputs than allowed; reading
            // on would only queue work and stretch every epoch's latency.
            if outputs.less_than(&epoch.saturating_sub(max_in_flight)) {
                if !paused {
                    paused = true;
                    metrics.pauses.add(1);
                    for p in owned.iter_mut() {
                        p.inner.set_paused(true);
                    }
                }
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            if paused {
                paused = false;
                for p in owned.iter_mut() {
                    p.inner.set_paused(false);
                }
            }
            if lag_updated.elapsed() >= LAG_INTERVAL {
                lag_updated = Instant::now();
                for p in owned.iter() {
                    if let Some(lag) = p.inner.lag() {
                        p.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
                    }
                }
            }

            // Read a bounded batch from the owned partitions, round robin.
            let mut read_any = false;
            let replaying = clock.replaying();
            let n = owned.len();
            for step in 0..n {
                if clock.current() != epoch {
                    break;
                }
                let p = &mut owned[(cursor + step) % n];
                if p.done {
                    continue;
                }
                let mut budget = clock.room();
                if replaying {
                    // A replayed epoch ends exactly where it was recorded to end; every record
                    // moves the position on by at least one, so the budget never overshoots.
                    let Some(end) = p.end_of(epoch, first_epoch) else { continue };
                    let at = p.inner.position();
                    if at >= end {
                        continue;
                    }
                    budget = budget.min(usize::try_from(end - at).unwrap_or(usize::MAX));
                }
                if let Some(rem) = p.remaining {
                    if rem == 0 {
                        p.done = true;
                        continue;
                    }
                    budget = budget.min(rem as usize);
                }
                buffer.clear();
                match p.inner.poll(budget, &mut buffer) {
                    Ok(Polled::Records(_)) => {}
                    Ok(Polled::Idle) => {}
                    Ok(Polled::Exhausted) => p.done = true,
                    Err(e) => {
                        // The partition failed (I/O): stop reading it, loudly, keep the rest.
                        tracing::error!(source = %name, partition = %p.label, error = %e, "partition failed; no further records will be read from it");
                        p.done = true;
                    }
                }
                if replaying && p.done {
                    if let Some(end) = p.end_of(epoch, first_epoch) {
                        let at = p.inner.position();
                        if at < end {
                            // The input is not what the earlier run read: replaying on would
                            // publish outputs that differ from the ones already published.
                            tracing::error!(source = %name, partition = %p.label, epoch, at, recorded_end = end, "cannot replay: the partition ended before the position an earlier run recorded for this epoch (was the input truncated, or did retention delete it?); stopping rather than publishing different outputs");
                            std::process::exit(3);
                        }
                    }
                }
                if buffer.is_empty() {
                    continue;
                }
                read_any = true;
                if let Some(rem) = p.remaining.as_mut() {
                    *rem = rem.saturating_sub(buffer.len() as u64);
                }
                let (mut oks, mut errs) = (0u64, 0u64);
                {
                    let mut ok_out = out_ok.activate();
                    let mut err_out = out_err.activate();
                    let mut ok_session = ok_out.session(&*cap_ok);
                    let mut err_session = err_out.session(&*cap_err);
                    for rec in buffer.drain(..) {
                        match rec.item {
                            Ok(item) => {
                                oks += 1;
                                ok_session.give((item, epoch, 1isize));
                            }
                            Err(dead) => {
                                errs += 1;
                                err_session.give((dead, epoch, 1isize));
                            }
                        }
                    }
                }
                metrics.records.add(oks);
                metrics.dead_letters.add(errs);
                clock.note(oks + errs);
            }
            cursor = cursor.wrapping_add(1);
            if replaying
                && clock.current() == epoch
                && owned.iter().all(|p| {
                    p.done || p.end_of(epoch, first_epoch).is_none_or(|end| p.inner.position() >= end)
                })
            {
                clock.ready(id);
            }
            clock.maybe_close();

            if read_any || owned.iter().all(|p| p.done) || clock.stopping() || clock.current() != epoch {
                activator.activate();
            } else {
                activator.activate_after(clock.time_left().min(Duration::from_millis(5)));
            }
        }
    });

    Ok(SourceStreams {
        records: stream_ok.as_collection(),
        dead_letters: stream_err.as_collection(),
    })
}
