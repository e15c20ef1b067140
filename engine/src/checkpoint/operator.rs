//! The checkpoint operators: the clock that marks checkpoint epochs, the operator that keeps
//! and writes one checkpointed collection, the feed that restores it, and the manifest
//! writer.
//!
//! ```text
//!  CheckpointClock (every worker; worker 0 marks) ── marks ──broadcast──┐
//!  collection ──exchange by hash──▶ Checkpoint(name): consolidated state ├─▶ parts ──▶ Manifest (worker 0)
//!  RestoreFeed(name): restored state at epoch C ──▶ concat into the collection
//! ```
//!
//! A checkpoint operator holds its share of the collection consolidated (record -> diff).
//! When both its inputs' frontiers have passed an epoch it applies the epoch's updates, and
//! if the epoch is marked it copies the state (the only pause of the worker) and hands the
//! copy to a thread that compresses and writes the part. It keeps a capability at the epoch
//! until the part is written, so the manifest writer's frontier passes the epoch only when
//! every worker's every part is on disk.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Concat};
use timely::dataflow::{Scope, StreamVec};

use super::store::{self, Manifest, PartMeta};
use crate::input::EpochClock;
use crate::metrics::CheckpointMetrics;

/// A part written (or not) by one checkpoint operator at one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartDone {
    pub epoch: u64,
    /// The parts of one collection's share on one worker: a base and the deltas since.
    pub part: Result<Vec<PartMeta>, String>,
}

/// Records the restore feed gives per activation.
const FEED_BATCH: usize = 65_536;

/// How often an operator waiting for a writer thread looks again.
const POLL: Duration = Duration::from_millis(2);

/// The marks of checkpoint epochs (only epochs `e` with `e % align == align - 1`, see
/// `Dataflow::align_epochs`):
/// - worker 0 marks, once per interval, the latest epoch it has closed; once its own sources
///   have ended, the latest epoch every sink has published (`outputs`), since the other
///   workers' sources may run on;
/// - every worker that read records marks its own last aligned epoch when its sources end
///   (workers end at different epochs: the greatest of these is the run's last aligned
///   epoch, so the run's end is checkpointed; a bounded input may so end with one checkpoint
///   per worker).
///
/// Every worker's clock holds the marks' frontier at the least epoch it may still mark, so a
/// checkpoint operator knows whether an epoch is marked once the frontier has passed it.
pub(crate) fn checkpoint_clock<'s>(
    scope: Scope<'s, u64>,
    clock: Rc<RefCell<EpochClock>>,
    interval: Duration,
    align: Rc<std::cell::Cell<u64>>,
    outputs: ProbeHandle<u64>,
) -> StreamVec<'s, u64, u64> {
    let marker = scope.index() == 0;
    source::<_, CapacityContainerBuilder<Vec<u64>>, _, _>(
        scope,
        "CheckpointClock",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap);
            let mut last = Instant::now();
            let mut marked: Option<u64> = None;
            move |output| {
                let Some(c) = cap.as_mut() else { return };
                let clock = clock.borrow();
                let current = clock.current();
                let finished = clock.sources_finished();
                let a = align.get().max(1);
                let markable = |e: &u64| *e >= *c.time() && e % a == a - 1;
                // The greatest aligned epoch up to `e`.
                let aligned_down = |e: u64| (e + 1).checked_sub((e + 1) % a + 1);
                // The least epoch every sink has yet to publish (None: all published).
                let published = || outputs.with_frontier(|f| f.iter().min().copied());
                let mut marks = Vec::new();
                // A worker that read nothing (no partitions) has no last epoch of its own.
                if finished && clock.read_any() {
                    marks.extend(aligned_down(current).filter(markable));
                }
                if marker && last.elapsed() >= interval {
                    let closed = if finished {
                        published().and_then(|t| t.checked_sub(1))
                    } else {
                        current.checked_sub(1)
                    };
                    if let Some(e) = closed.and_then(aligned_down).filter(markable) {
                        marks.push(e);
                        last = Instant::now();
                    }
                }
                marks.sort_unstable();
                marks.dedup();
                for e in marks {
                    if marked.is_none_or(|m| e > m) {
                        output.session(&c.delayed(&e)).give(e);
                        marked = Some(e);
                    }
                }
                // The least epoch this worker may still mark (epochs only grow).
                let hold = if !finished {
                    let least = if marker {
                        current.checked_sub(1)
                    } else {
                        Some(current)
                    };
                    Some(least.and_then(aligned_down).unwrap_or(0))
                } else if marker {
                    published().map(|p| p.checked_sub(1).and_then(aligned_down).unwrap_or(0))
                } else {
                    None
                };
                match hold {
                    None => {
                        cap = None;
                        return;
                    }
                    Some(h) if h > *c.time() => c.downgrade(&h),
                    Some(_) => {}
                }
                activator.activate_after(Duration::from_millis(5));
            }
        },
    )
}

/// A consolidated set of updates (record -> difference).
type Consolidated<D, R> = HashMap<D, R, foldhash::fast::FixedState>;

/// Applies one update to a consolidated set.
fn apply<D: std::hash::Hash + Eq, R: Semigroup>(state: &mut Consolidated<D, R>, d: D, r: R) {
    match state.entry(d) {
        Entry::Occupied(mut o) => {
            o.get_mut().plus_equals(&r);
            if o.get().is_zero() {
                o.remove();
            }
        }
        Entry::Vacant(v) => {
            if !r.is_zero() {
                v.insert(r);
            }
        }
    }
}

/// What a checkpoint operator hands its writer at a marked epoch.
struct WriteJob<D, R> {
    epoch: u64,
    changes: Consolidated<D, R>,
    pause_us: u64,
}

/// One checkpointed collection's writer on one worker: a thread that writes each marked
/// epoch's changes as a delta part, and keeps the chain of parts (a base, then deltas)
/// whose sum is the worker's share. When the deltas hold as many records as the base, it
/// folds the chain into a new base instead (reading the earlier parts back), so a restore
/// reads at most about twice the share.
struct PartWriter<D, R> {
    root: PathBuf,
    name: String,
    worker: usize,
    /// (epoch of the checkpoint directory, part), base first.
    chain: Vec<(u64, PartMeta)>,
    /// Changes whose part could not be written: they go into the next part.
    unwritten: Consolidated<D, R>,
}

impl<D, R> PartWriter<D, R>
where
    D: ExchangeData + std::hash::Hash,
    R: ExchangeData + Semigroup,
{
    /// Writes one epoch's part; returns the parts of the checkpoint, as its manifest lists them.
    fn write(&mut self, job: WriteJob<D, R>) -> Result<Vec<PartMeta>, String> {
        let WriteJob {
            epoch,
            mut changes,
            pause_us,
        } = job;
        for (d, r) in std::mem::take(&mut self.unwritten) {
            apply(&mut changes, d, r);
        }
        let base = self.chain.first().map_or(0, |(_, p)| p.records);
        let deltas: u64 = self.chain.iter().skip(1).map(|(_, p)| p.records).sum();
        let dir = store::checkpoint_dir(&self.root, epoch);
        let part = if self.chain.is_empty() {
            // The first part of a run holds everything since it started (a restored run's
            // checkpointed collections start with the restored state): a base.
            self.write_part(&dir, &changes, false)
                .inspect_err(|_| self.unwritten = changes)?
        } else if deltas + changes.len() as u64 >= base {
            // Fold the chain and the changes into a new base.
            let mut whole = match self.read_chain() {
                Ok(w) => w,
                Err(e) => {
                    self.unwritten = changes;
                    return Err(e);
                }
            };
            for (d, r) in changes {
                apply(&mut whole, d, r);
            }
            match self.write_part(&dir, &whole, false) {
                Ok(p) => p,
                Err(e) => {
                    // The next part is a base of all of it.
                    self.chain.clear();
                    self.unwritten = whole;
                    return Err(e);
                }
            }
        } else {
            self.write_part(&dir, &changes, true)
                .inspect_err(|_| self.unwritten = changes)?
        };
        let part = PartMeta { pause_us, ..part };
        if !part.delta {
            self.chain.clear();
        }
        self.chain.push((epoch, part));
        Ok(self
            .chain
            .iter()
            .map(|(e, p)| PartMeta {
                stored_in: (*e != epoch).then_some(*e),
                ..p.clone()
            })
            .collect())
    }

    /// The sum of the chain's parts (the share as of the last part), read back.
    fn read_chain(&self) -> Result<Consolidated<D, R>, String> {
        let mut whole = Consolidated::default();
        for (e, part) in &self.chain {
            let dir = store::checkpoint_dir(&self.root, *e);
            let records = store::read_part::<(D, R)>(&dir, part)
                .map_err(|e| format!("cannot fold the earlier parts into a new base: {e}"))?;
            for (d, r) in records {
                apply(&mut whole, d, r);
            }
        }
        Ok(whole)
    }

    fn write_part(
        &self,
        dir: &std::path::Path,
        changes: &Consolidated<D, R>,
        delta: bool,
    ) -> Result<PartMeta, String> {
        let records: Vec<(&D, &R)> = changes.iter().collect();
        let mut part =
            store::write_part(dir, &self.name, self.worker, &records).map_err(|e| e.to_string())?;
        part.delta = delta;
        Ok(part)
    }
}

/// Keeps the changes of `collection` since the last checkpoint, consolidated, and hands them
/// at every marked epoch to its writer thread, which writes this worker's part into
/// `<root>/ckpt-<epoch>/<name>.w<worker>.part` (see [`PartWriter`]).
pub(crate) fn checkpoint_collection<'s, D, R>(
    collection: VecCollection<'s, u64, D, R>,
    marks: StreamVec<'s, u64, u64>,
    name: &str,
    root: PathBuf,
    metrics: CheckpointMetrics,
) -> StreamVec<'s, u64, PartDone>
where
    D: ExchangeData + Hashable + std::hash::Hash,
    R: ExchangeData + Semigroup,
{
    let name = name.to_owned();
    let scope = collection.inner.scope();
    let worker = scope.index();
    let op_name = format!("Checkpoint({name})");
    collection
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<PartDone>>, _, _, _, _>(
            marks.broadcast(),
            Exchange::new(|(d, _, _): &(D, u64, R)| d.hashed().into()),
            Pipeline,
            &op_name,
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut base: Option<Capability<u64>> = Some(cap);
                let mut changes: Consolidated<D, R> = Consolidated::default();
                let mut pending: BTreeMap<u64, Vec<(D, R)>> = BTreeMap::new();
                let mut marked: BTreeSet<u64> = BTreeSet::new();
                let mut writing: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
                let mut writer: Option<Writer<D, R>> = None;
                move |(data, data_frontier), (marks_in, marks_frontier), output| {
                    data.for_each(|_cap, batch| {
                        for (d, t, r) in batch.drain(..) {
                            pending.entry(t).or_default().push((d, r));
                        }
                    });
                    marks_in.for_each(|_cap, batch| marked.extend(batch.drain(..)));
                    let passed =
                        |t: &u64| !data_frontier.less_equal(t) && !marks_frontier.less_equal(t);
                    // Epochs complete on both inputs, in order.
                    let mut epochs: BTreeSet<u64> =
                        pending.keys().copied().filter(|t| passed(t)).collect();
                    epochs.extend(marked.iter().copied().filter(|t| passed(t)));
                    for epoch in epochs {
                        for (d, r) in pending.remove(&epoch).unwrap_or_default() {
                            apply(&mut changes, d, r);
                        }
                        if !marked.remove(&epoch) {
                            continue;
                        }
                        let Some(b) = base.as_ref() else { continue };
                        // The worker's only pause: handing the changes to the writer.
                        let started = Instant::now();
                        let handed = std::mem::take(&mut changes);
                        let count = handed.len();
                        let pause = started.elapsed();
                        metrics.pause.record(pause);
                        metrics
                            .records
                            .set(i64::try_from(count).unwrap_or(i64::MAX));
                        let job = WriteJob {
                            epoch,
                            changes: handed,
                            pause_us: u64::try_from(pause.as_micros()).unwrap_or(u64::MAX),
                        };
                        let w = writer.get_or_insert_with(|| {
                            Writer::spawn(PartWriter {
                                root: root.clone(),
                                name: name.clone(),
                                worker,
                                chain: Vec::new(),
                                unwritten: Consolidated::default(),
                            })
                        });
                        match w.send(job) {
                            Ok(()) => {
                                writing.insert(epoch, b.delayed(&epoch));
                            }
                            Err(e) => output.session(&b.delayed(&epoch)).give(PartDone {
                                epoch,
                                part: Err(e),
                            }),
                        }
                    }
                    // Report the parts written; the capability at their epoch goes with them.
                    if let Some(w) = writer.as_ref() {
                        for done in w.done() {
                            if let Some(cap) = writing.remove(&done.epoch) {
                                output.session(&cap).give(done);
                            }
                        }
                        if w.died() {
                            for (epoch, cap) in std::mem::take(&mut writing) {
                                output.session(&cap).give(PartDone {
                                    epoch,
                                    part: Err("the writer thread ended".into()),
                                });
                            }
                        }
                    }
                    if !writing.is_empty() {
                        activator.activate_after(POLL);
                    }
                    // Hold the base capability at the least epoch still to come.
                    let least = data_frontier
                        .frontier()
                        .iter()
                        .chain(marks_frontier.frontier().iter())
                        .min()
                        .copied();
                    match (least, base.as_mut()) {
                        (Some(t), Some(b)) if t > *b.time() => b.downgrade(&t),
                        (None, _) => base = None,
                        _ => {}
                    }
                }
            },
        )
}

/// A checkpoint operator's handle on its writer thread.
struct Writer<D, R> {
    jobs: Option<std::sync::mpsc::Sender<WriteJob<D, R>>>,
    done: std::sync::mpsc::Receiver<PartDone>,
    thread: Option<JoinHandle<()>>,
    error: Option<String>,
}

impl<D, R> Writer<D, R>
where
    D: ExchangeData + std::hash::Hash,
    R: ExchangeData + Semigroup,
{
    fn spawn(mut part_writer: PartWriter<D, R>) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<WriteJob<D, R>>();
        let (tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("cap-ckpt-{}", part_writer.worker))
            .spawn(move || {
                for job in rx {
                    let epoch = job.epoch;
                    let part = part_writer.write(job);
                    if tx.send(PartDone { epoch, part }).is_err() {
                        break;
                    }
                }
            });
        match spawned {
            Ok(h) => Writer {
                jobs: Some(jobs),
                done,
                thread: Some(h),
                error: None,
            },
            Err(e) => Writer {
                jobs: None,
                done,
                thread: None,
                error: Some(format!("cannot start the writer thread: {e}")),
            },
        }
    }

    fn send(&self, job: WriteJob<D, R>) -> Result<(), String> {
        match &self.jobs {
            Some(tx) => tx
                .send(job)
                .map_err(|_| "the writer thread ended".to_owned()),
            None => Err(self.error.clone().unwrap_or_default()),
        }
    }

    /// The parts written since the last call.
    fn done(&self) -> Vec<PartDone> {
        self.done.try_iter().collect()
    }

    /// Whether the writer thread has ended (it panicked: it ends otherwise only when the
    /// operator drops its handle).
    fn died(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl<D, R> Drop for Writer<D, R> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Gives the restored records of one collection at `epoch`: this worker reads the parts of
/// the workers `w` with `w % peers == index` (the checkpoint operator's exchange then spreads
/// them by hash, so any number of workers can restore any checkpoint).
pub(crate) fn restore_feed<'s, D, R>(
    scope: Scope<'s, u64>,
    name: &str,
    epoch: u64,
    records: Vec<(D, R)>,
) -> VecCollection<'s, u64, D, R>
where
    D: ExchangeData,
    R: ExchangeData + Semigroup,
{
    let op_name = format!("Restore({name})");
    source::<_, CapacityContainerBuilder<Vec<(D, u64, R)>>, _, _>(
        scope,
        &op_name,
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut cap = Some(cap.delayed(&epoch));
            let mut records = records.into_iter();
            move |output| {
                let Some(c) = cap.as_ref() else { return };
                let mut session = output.session(c);
                let mut given = 0;
                for (d, r) in records.by_ref() {
                    session.give((d, epoch, r));
                    given += 1;
                    if given == FEED_BATCH {
                        break;
                    }
                }
                drop(session);
                if given == FEED_BATCH {
                    activator.activate();
                } else {
                    cap = None;
                }
            }
        },
    )
    .as_collection()
}

/// Reads the parts of `name` this worker restores (see [`restore_feed`]).
/// A writer's parts (a base and its deltas) are read by one worker, which sums them.
pub(crate) fn restored_records<D, R>(
    dir: &std::path::Path,
    manifest: &Manifest,
    name: &str,
    index: usize,
    peers: usize,
) -> Result<Vec<(D, R)>, store::StoreError>
where
    D: ExchangeData + std::hash::Hash,
    R: ExchangeData + Semigroup,
{
    let mut sum: Consolidated<D, R> = Consolidated::default();
    for part in manifest
        .parts
        .iter()
        .filter(|p| p.collection == name && p.worker % peers == index)
    {
        for (d, r) in store::read_part::<(D, R)>(dir, part)? {
            apply(&mut sum, d, r);
        }
    }
    Ok(sum.into_iter().collect())
}

/// What the manifest writer needs besides the parts.
pub(crate) struct ManifestSpec {
    pub root: PathBuf,
    pub keep: usize,
    pub job: String,
    pub version: String,
    /// Set once the dataflow is built: the fingerprint and the collections.
    pub fingerprint: (String, usize),
    pub metrics: CheckpointMetrics,
    /// The sinks' progress: a checkpoint is complete only once every sink has published its
    /// epoch, since a restore drops the outputs up to it.
    pub outputs: ProbeHandle<u64>,
}

/// On worker 0: writes the manifest of every marked epoch once every part of it is written
/// and every sink has published the epoch, then deletes old checkpoints. Elsewhere: forwards
/// the parts to worker 0. Its output's frontier is empty once nothing is left to write, so a
/// worker waits for the last checkpoint before it exits.
pub(crate) fn manifest_writer<'s>(
    marks: StreamVec<'s, u64, u64>,
    parts: Vec<StreamVec<'s, u64, PartDone>>,
    spec: ManifestSpec,
) -> StreamVec<'s, u64, ()> {
    let scope = marks.scope();
    let peers = scope.peers();
    let mut all = parts.into_iter();
    let first = match all.next() {
        Some(s) => s,
        None => timely::dataflow::operators::generic::operator::empty(scope),
    };
    let parts = all.fold(first, |acc, s| acc.concat(s));
    // Every worker's marks go to worker 0: each worker marks its own last epoch, which
    // worker 0 may not have marked.
    parts.binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
        marks,
        Exchange::new(|_: &PartDone| 0),
        Exchange::new(|_: &u64| 0),
        "CheckpointManifest",
        move |cap, info| {
            let activator = scope.activator_for(info.address);
            let mut base = Some(cap);
            let mut received: BTreeMap<u64, Vec<Result<Vec<PartMeta>, String>>> = BTreeMap::new();
            let mut marked: BTreeSet<u64> = BTreeSet::new();
            let mut started: BTreeMap<u64, Instant> = BTreeMap::new();
            move |(parts_in, parts_frontier), (marks_in, marks_frontier), _output| {
                parts_in.for_each(|_cap, batch| {
                    for done in batch.drain(..) {
                        received.entry(done.epoch).or_default().push(done.part);
                    }
                });
                marks_in.for_each(|_cap, batch| {
                    for e in batch.drain(..) {
                        marked.insert(e);
                        started.insert(e, Instant::now());
                    }
                });
                let complete: Vec<u64> = marked
                    .iter()
                    .copied()
                    .filter(|t| {
                        !parts_frontier.less_equal(t)
                            && !marks_frontier.less_equal(t)
                            && !spec.outputs.less_equal(t)
                    })
                    .collect();
                for epoch in complete {
                    marked.remove(&epoch);
                    let since = started.remove(&epoch);
                    let results = received.remove(&epoch).unwrap_or_default();
                    let (fingerprint, collections) = spec.fingerprint.clone();
                    let mut metas = Vec::new();
                    let mut failures = Vec::new();
                    let shares = results.len();
                    for r in results {
                        match r {
                            Ok(m) => metas.extend(m),
                            Err(e) => failures.push(e),
                        }
                    }
                    if shares != collections * peers && failures.is_empty() {
                        failures.push(format!(
                            "{shares} shares arrived, expected {} ({collections} collections x {peers} workers)",
                            collections * peers
                        ));
                    }
                    if !failures.is_empty() {
                        spec.metrics.failed.add(1);
                        tracing::error!(epoch, failures = ?failures, "checkpoint not written; the previous one stays the newest");
                        continue;
                    }
                    metas.sort_by(|a, b| {
                        (&a.collection, a.worker, a.stored_in)
                            .cmp(&(&b.collection, b.worker, b.stored_in))
                    });
                    let manifest = Manifest {
                        format: store::FORMAT,
                        job: spec.job.clone(),
                        version: spec.version.clone(),
                        fingerprint,
                        epoch,
                        workers: peers,
                        written_ms: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis() as u64)
                            .unwrap_or(0),
                        parts: metas,
                    };
                    let dir = store::checkpoint_dir(&spec.root, epoch);
                    match store::write_manifest(&dir, &manifest) {
                        Ok(()) => {
                            spec.metrics.written.add(1);
                            spec.metrics.bytes.set(i64::try_from(manifest.bytes()).unwrap_or(i64::MAX));
                            tracing::info!(
                                epoch,
                                parts = manifest.parts.len(),
                                records = manifest.parts.iter().map(|p| p.records).sum::<u64>(),
                                bytes = manifest.bytes(),
                                written_bytes = manifest.written_bytes(),
                                pause_us = manifest.worker_pause_us(),
                                ms = since.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0),
                                "checkpoint written"
                            );
                            let (root, keep) = (spec.root.clone(), spec.keep);
                            let _ = std::thread::Builder::new()
                                .name("cap-ckpt-retain".into())
                                .spawn(move || store::retain(&root, keep));
                        }
                        Err(e) => {
                            spec.metrics.failed.add(1);
                            tracing::error!(epoch, error = %e, "checkpoint manifest not written; the previous checkpoint stays the newest");
                        }
                    }
                }
                // Parts of an epoch can arrive before its mark: keep them until both frontiers
                // have passed the epoch without a mark (which cannot happen; drop it then).
                received.retain(|t, _| {
                    parts_frontier.less_equal(t)
                        || marks_frontier.less_equal(t)
                        || marked.contains(t)
                });
                if !marked.is_empty() {
                    // Waiting for the sinks, which do not wake this operator.
                    activator.activate_after(POLL);
                } else if parts_frontier.is_empty() && marks_frontier.is_empty() {
                    // Nothing left to write: let the worker's checkpoint probe finish.
                    drop(base.take());
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(root: &std::path::Path) -> PartWriter<u32, isize> {
        PartWriter {
            root: root.to_owned(),
            name: "c".into(),
            worker: 0,
            chain: Vec::new(),
            unwritten: Consolidated::default(),
        }
    }

    /// The sum of the parts a manifest of `epoch` would list.
    fn read_back(root: &std::path::Path, epoch: u64, parts: &[PartMeta]) -> BTreeMap<u32, isize> {
        let dir = store::checkpoint_dir(root, epoch);
        let mut sum = BTreeMap::new();
        for p in parts {
            for (d, r) in store::read_part::<(u32, isize)>(&dir, p).unwrap() {
                *sum.entry(d).or_insert(0) += r;
            }
        }
        sum.retain(|_, r| *r != 0);
        sum
    }

    #[test]
    fn the_chain_of_parts_sums_to_the_share_and_folds_into_new_bases() {
        let root = tempfile::tempdir().unwrap();
        let mut w = writer(root.path());
        let mut oracle: BTreeMap<u32, isize> = BTreeMap::new();
        let mut z = 7u64;
        let mut folds = 0;
        for epoch in 0..40u64 {
            let mut changes = Consolidated::default();
            // A first epoch of many records, then a few changes each, with retractions.
            let n = if epoch == 0 { 2_000 } else { 150 };
            for _ in 0..n {
                z = z
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let d = ((z >> 33) % 3_000) as u32;
                let r = if (z >> 20) % 3 == 0 { -1 } else { 1 };
                apply(&mut changes, d, r);
                *oracle.entry(d).or_insert(0) += r;
            }
            let parts = w
                .write(WriteJob {
                    epoch,
                    changes,
                    pause_us: 0,
                })
                .unwrap();
            oracle.retain(|_, r| *r != 0);
            assert_eq!(
                read_back(root.path(), epoch, &parts),
                oracle,
                "epoch {epoch}"
            );
            assert!(!parts[0].delta && parts[1..].iter().all(|p| p.delta));
            assert_eq!(parts.last().unwrap().stored_in, None);
            if epoch > 0 && parts.len() == 1 {
                folds += 1;
            }
            // A restore reads at most about twice the share.
            let read: u64 = parts.iter().map(|p| p.records).sum();
            assert!(
                read <= 2 * parts[0].records + 150,
                "epoch {epoch}: {read} records"
            );
        }
        assert!(folds >= 2, "the chain never folded ({folds})");
    }

    #[test]
    fn changes_of_a_part_that_cannot_be_written_go_into_the_next() {
        let root = tempfile::tempdir().unwrap();
        let mut w = writer(root.path());
        let job = |epoch, d: u32| {
            let mut changes = Consolidated::default();
            apply(&mut changes, d, 1isize);
            WriteJob {
                epoch,
                changes,
                pause_us: 0,
            }
        };
        w.write(job(0, 1)).unwrap();
        // Epoch 1's directory cannot be created: a file is in its place.
        std::fs::write(store::checkpoint_dir(root.path(), 1), b"x").unwrap();
        assert!(w.write(job(1, 2)).is_err());
        let parts = w.write(job(2, 3)).unwrap();
        let expect: BTreeMap<u32, isize> = [(1, 1), (2, 1), (3, 1)].into_iter().collect();
        assert_eq!(read_back(root.path(), 2, &parts), expect);
    }
}
