//! The generator as an engine source: one [`GeneratorPartition`] per configured partition.
//!
//! A partition's output is its in-order stream (see `sim.rs`) passed through the delivery
//! faults: with `out_of_order_fraction`, an event is held back and released once the
//! stream's time passes `event_time + delay` (delay uniform in 1 s..=`max_lateness_ms`);
//! with `duplicate_fraction`, an event is followed by an identical copy. Positions number
//! this output densely from 0, so replaying from a position re-reads the same records.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use cap_engine::source::{
    Polled, Position, Progress, Source, SourceError, SourcePartition, SourceRecord,
};

use crate::clickstream::Event;

use super::rng::{hash, tag, Prob, Rng};
use super::sim::{Model, Sim};
use super::truth::GroundTruth;
use super::{GeneratorConfig, GeneratorError};

/// The synthetic clickstream as a partitioned source (see the [module docs](super)).
///
/// Partitions are labelled `gen-0` .. `gen-{n-1}`; partition `k` is a [`GeneratorPartition`].
pub struct GeneratorSource {
    name: String,
    config: GeneratorConfig,
    /// The model, or why the configuration is unusable.
    model: Result<Arc<Model>, String>,
}

impl GeneratorSource {
    /// A source for `config`, which the caller has [validated](GeneratorConfig::validate).
    /// Never fails: if `config` is invalid after all, opening a partition reports it (as
    /// [`SourceError::Config`]). Use [`try_new`](GeneratorSource::try_new) to fail here.
    pub fn new(name: impl Into<String>, config: GeneratorConfig) -> GeneratorSource {
        let model = Model::build(&config)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        GeneratorSource {
            name: name.into(),
            config,
            model,
        }
    }

    /// Validates `config` and builds the catalog and incident plan (tens of milliseconds
    /// with the defaults). `name` is the source's name in the job.
    pub fn try_new(
        name: impl Into<String>,
        config: GeneratorConfig,
    ) -> Result<GeneratorSource, GeneratorError> {
        let model = Arc::new(Model::build(&config)?);
        Ok(GeneratorSource {
            name: name.into(),
            config,
            model: Ok(model),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    fn model(&self) -> Result<&Arc<Model>, GeneratorError> {
        self.model
            .as_ref()
            .map_err(|e| GeneratorError::Config(e.clone()))
    }

    /// The ground truth of the incidents this source injects.
    pub fn ground_truth(&self) -> Result<GroundTruth, GeneratorError> {
        Ok(GroundTruth::from_model(self.model()?))
    }

    /// Opens partition `index` as its concrete type (what [`Source::open`] boxes).
    pub fn partition(&self, index: u32) -> Result<GeneratorPartition, GeneratorError> {
        let model = self.model()?;
        if index >= model.cfg.partitions {
            return Err(GeneratorError::Config(format!(
                "partition {index} does not exist: generator.partitions is {}",
                model.cfg.partitions
            )));
        }
        Ok(GeneratorPartition::new(
            Arc::clone(model),
            self.name.clone(),
            index,
        ))
    }
}

impl Source<Event> for GeneratorSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Vec<String> {
        (0..self.config.partitions)
            .map(|k| format!("gen-{k}"))
            .collect()
    }

    fn open(&self, index: usize) -> Result<Box<dyn SourcePartition<Event>>, SourceError> {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        match self.partition(index) {
            Ok(p) => Ok(Box::new(p)),
            Err(e) => Err(SourceError::Config {
                source_name: self.name.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// An event held back for late delivery (a min-heap entry by release time, then order).
struct Late {
    release: i64,
    seq: u64,
    event: Event,
}

impl PartialEq for Late {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl Eq for Late {}
impl PartialOrd for Late {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Late {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// One partition of the generator: `gen-k`.
///
/// Position = number of events this partition has yielded (the 0-based index of the next
/// one). [`seek`](SourcePartition::seek) regenerates from the start and skips, so it costs
/// O(position) (several million events per second). Also an [`Iterator`] over the events,
/// which ignores `rate`.
pub struct GeneratorPartition {
    model: Arc<Model>,
    source_name: String,
    label: String,
    index: u32,
    sim: Sim,
    out_rng: Rng,
    late: BinaryHeap<Late>,
    late_seq: u64,
    dup: Option<Event>,
    emitted: u64,
    share: Option<u64>,
    p_late: Prob,
    p_dup: Prob,
    lateness_span: u64,
    /// Events per second of wall clock for this partition.
    rate: Option<f64>,
    /// When pacing started, and the position then.
    paced_from: Option<(Instant, u64)>,
}

impl GeneratorPartition {
    fn new(model: Arc<Model>, source_name: String, index: u32) -> GeneratorPartition {
        let cfg = &model.cfg;
        GeneratorPartition {
            source_name,
            label: format!("gen-{index}"),
            index,
            sim: Sim::new(Arc::clone(&model), index),
            out_rng: Rng::new(hash(&[cfg.seed, tag::OUTPUT, u64::from(index)])),
            late: BinaryHeap::new(),
            late_seq: 0,
            dup: None,
            emitted: 0,
            share: cfg.share(index),
            p_late: Prob::new(cfg.out_of_order_fraction),
            p_dup: Prob::new(cfg.duplicate_fraction),
            lateness_span: cfg.max_lateness_ms.saturating_sub(1000) + 1,
            rate: cfg.rate.map(|r| r as f64 / f64::from(cfg.partitions)),
            paced_from: None,
            model,
        }
    }

    /// The number of events this partition yields in all (`None` when unbounded).
    pub fn share(&self) -> Option<u64> {
        self.share
    }

    /// The next event, or `None` after the partition's share. Ignores `rate`.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.share.is_some_and(|s| self.emitted >= s) {
            return None;
        }
        self.emitted += 1;
        Some(self.produce())
    }

    fn produce(&mut self) -> Event {
        if let Some(e) = self.dup.take() {
            return e;
        }
        loop {
            if self
                .late
                .peek()
                .is_some_and(|l| l.release <= self.sim.peek_time())
            {
                if let Some(l) = self.late.pop() {
                    return self.maybe_duplicate(l.event);
                }
            }
            let e = self.sim.next_event();
            if !self.p_late.is_zero() && self.out_rng.hit(self.p_late) {
                let delay = 1000 + self.out_rng.below(self.lateness_span) as i64;
                self.late.push(Late {
                    release: e.event_time + delay,
                    seq: self.late_seq,
                    event: e,
                });
                self.late_seq += 1;
                continue;
            }
            return self.maybe_duplicate(e);
        }
    }

    #[inline]
    fn maybe_duplicate(&mut self, e: Event) -> Event {
        if !self.p_dup.is_zero() && self.out_rng.hit(self.p_dup) {
            self.dup = Some(e.clone());
        }
        e
    }

    /// Back to position 0, as freshly opened.
    fn reset(&mut self) {
        *self = GeneratorPartition::new(
            Arc::clone(&self.model),
            std::mem::take(&mut self.source_name),
            self.index,
        );
    }
}

impl Iterator for GeneratorPartition {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.next_event()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.share {
            Some(s) => {
                let left = usize::try_from(s - self.emitted).unwrap_or(usize::MAX);
                (left, Some(left))
            }
            None => (usize::MAX, None),
        }
    }
}

impl SourcePartition<Event> for GeneratorPartition {
    fn label(&self) -> &str {
        &self.label
    }

    fn position(&self) -> Position {
        self.emitted
    }

    fn poll(
        &mut self,
        budget: usize,
        out: &mut Vec<SourceRecord<Event>>,
    ) -> Result<Polled, SourceError> {
        if self.share.is_some_and(|s| self.emitted >= s) {
            return Ok(Polled::Exhausted);
        }
        let mut budget = budget as u64;
        if let Some(rate) = self.rate {
            let now = Instant::now();
            let (since, base) = *self.paced_from.get_or_insert((now, self.emitted));
            // One event is allowed at once, then `rate` per second of wall clock.
            let allowed = (rate * now.duration_since(since).as_secs_f64()) as u64 + 1;
            let sent = self.emitted - base;
            if sent >= allowed {
                return Ok(Polled::Idle);
            }
            budget = budget.min(allowed - sent);
        }
        let mut n = 0;
        while n < budget {
            let position = self.emitted;
            match self.next_event() {
                Some(event) => out.push(SourceRecord {
                    position,
                    item: Ok(event),
                }),
                None => break,
            }
            n += 1;
        }
        if n == 0 && self.share.is_some_and(|s| self.emitted >= s) {
            return Ok(Polled::Exhausted);
        }
        Ok(Polled::Records(n as usize))
    }

    /// Regenerates from the start and skips `position` events: O(position).
    fn seek(&mut self, position: Position) -> Result<(), SourceError> {
        if let Some(s) = self.share.filter(|&s| position > s) {
            return Err(SourceError::Seek {
                source_name: self.source_name.clone(),
                partition: self.label.clone(),
                position,
                reason: format!("the partition has only {s} events"),
            });
        }
        if position < self.emitted {
            self.reset();
        }
        while self.emitted < position {
            self.emitted += 1;
            self.produce();
        }
        // Pacing restarts from here.
        self.paced_from = None;
        Ok(())
    }

    fn progress(&self) -> Option<Progress> {
        Some(Progress {
            done: self.emitted,
            total: self.share,
        })
    }
}
