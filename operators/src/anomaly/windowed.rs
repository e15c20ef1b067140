//! [`windowed_tallies`] and [`windowed_distinct`]: per-window counts as hand-written timely
//! operators over hash maps, with an optional retention horizon (see the parent module's
//! docs for the semantics), and their `_stateful` variants, which also emit the changes of
//! their state for checkpoints (the parent module's "Checkpoints").
//!
//! Both hold plain per-worker state and process each epoch once it is complete, in epoch
//! order (like the similarity operators, they need totally ordered times):
//! - tallies keep, per key, its non-empty buckets (sorted, a few per key) with their event
//!   and marked counts; a window's tally is summed from its buckets when one of them
//!   changes, and only windows with at least `min_events` events are output;
//! - distinct counts keep, per `(key, window)`, a count per value.
//!
//! The retention horizon needs the stream's watermark: every worker sends the largest event
//! time of each batch it read to every worker, so all workers agree on the horizon of each
//! epoch whatever the number of workers.
//!
//! ```text
//!  events ─▶ epoch_maxima ─▶ Shared::Maximum ───┐ broadcast
//!  restored Watermark ────▶ Shared::Watermark ──┤
//!                                               ▼
//!  events ─▶ pre_aggregate ─▶ Keyed::Update ──▶ by_time ─▶ Change::Output ─▶ output
//!  restored Held ───────────▶ Keyed::Restored ─┘ by key    Change::State ──▶ state
//! ```
//!
//! The state a worker emits is what it changes: the updates it accepts, passed through,
//! the retraction of what it forgets and (worker 0 only: all workers hold the same
//! watermark) the watermark's moves. Restored records are installed when their time
//! completes, before that time's updates, and are not emitted again. The plain operators
//! emit no state at all.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::StreamVec;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use super::{Window, Windows};
use crate::local::pre_aggregate;
use crate::timed::{by_time, fast_map, FastMap};

/// The events of a `(key, window)`, and how many of them were marked (e.g. were not views).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Tally {
    /// Events in the window (with multiplicity).
    pub events: u64,
    /// Marked events in the window.
    pub marked: u64,
}

/// How long windows stay open: a window is final once its end is at or before the horizon,
/// `ms` behind the watermark of the epochs before (see the parent module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Distance of the horizon behind the watermark, in ms (at least 0).
    pub ms: i64,
}

/// Updates ignored because every window they fall in was final: called once per epoch
/// with their number (when it is not zero), on the worker that ignored them.
pub type LateCallback = Box<dyn FnMut(u64)>;

/// A windowed operator's state, as the records of a collection (for checkpoints).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum WindowState<U> {
    /// An update the operator holds (accumulated: the record with its summed difference).
    Held(U),
    /// The watermark the horizon is computed from (with a retention only).
    Watermark(i64),
}

/// The state of [`windowed_tallies_stateful`]: held bucket updates `(key, (bucket, marked))`.
pub type TallyState<K> = WindowState<(K, (i64, bool))>;

/// The state of [`windowed_distinct_stateful`]: held `((key, last bucket of the window),
/// value)`.
pub type DistinctState<K, V> = WindowState<((K, i64), V)>;

/// An operator's output and the changes of its state.
pub struct Stateful<'s, T: Timestamp, O: 'static, S: 'static> {
    /// The operator's output.
    pub output: VecCollection<'s, T, O>,
    /// The changes of the operator's state, without the restored records: the state is
    /// `restored` concatenated with it (see the parent module's docs).
    pub state: VecCollection<'s, T, S>,
}

/// A change of a key's events in a bucket: `((key, (bucket, marked)), diff)`.
type BucketUpdate<K> = ((K, (i64, bool)), isize);

/// A change of a value's multiplicity in a window: `(((key, last bucket), value), diff)`.
type ValueUpdate<K, V> = (((K, i64), V), isize);

/// An update reaching the worker that owns its key: from the input, or a held record of a
/// restored state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Keyed<U> {
    Update(U),
    Restored(U),
}

impl<U> Keyed<U> {
    fn inner(&self) -> &U {
        match self {
            Keyed::Update(u) | Keyed::Restored(u) => u,
        }
    }
}

/// What every worker hears: the largest event time of a batch one worker read, or the
/// watermark of a restored state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Shared {
    Maximum(i64),
    Watermark(i64),
}

/// What an operator emits at a time: a change of its output or of its state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Change<O, S> {
    Output(O),
    State(S),
}

/// Where an operator emits its changes at the time being completed.
type Emit<'a, O, S> = dyn FnMut(Change<O, S>, isize) + 'a;

/// What a worker received for a completed time, sorted by kind.
struct Arrivals<U> {
    updates: Vec<(U, isize)>,
    restored: Vec<(U, isize)>,
    maxima: Vec<i64>,
    watermarks: Vec<(i64, isize)>,
}

impl<U> Arrivals<U> {
    fn sort(keyed: Vec<(Keyed<U>, isize)>, shared: Vec<(Shared, isize)>) -> Self {
        let mut a = Arrivals {
            updates: Vec::with_capacity(keyed.len()),
            restored: Vec::new(),
            maxima: Vec::with_capacity(shared.len()),
            watermarks: Vec::new(),
        };
        for (k, d) in keyed {
            match k {
                Keyed::Update(u) => a.updates.push((u, d)),
                Keyed::Restored(u) => a.restored.push((u, d)),
            }
        }
        for (s, d) in shared {
            match s {
                // A maximum's difference is always 1.
                Shared::Maximum(m) => a.maxima.push(m),
                Shared::Watermark(w) => a.watermarks.push((w, d)),
            }
        }
        a
    }
}

/// The watermark and the horizon it gives, as every worker sees them.
struct Horizon {
    retention: Option<Retention>,
    watermark: Option<i64>,
    /// Whether this worker emits the watermark's moves as state (one worker does, with a
    /// retention, in the stateful operators).
    reports: bool,
}

impl Horizon {
    fn new(retention: Option<Retention>, reports: bool) -> Self {
        Horizon {
            retention,
            watermark: None,
            reports: reports && retention.is_some(),
        }
    }

    /// The horizon: windows ending at or before it are final. `None` keeps all open.
    fn limit(&self) -> Option<i64> {
        Some(self.watermark?.saturating_sub(self.retention?.ms))
    }

    /// Whether a window ending at `end` (exclusive, ms) is final.
    fn closed(&self, end: i64) -> bool {
        self.limit().is_some_and(|h| end <= h)
    }

    /// Installs the watermark records of a restored state, silently: the largest one whose
    /// accumulated count is positive (a consolidated state holds exactly one).
    fn restore(&mut self, mut watermarks: Vec<(i64, isize)>) {
        consolidate(&mut watermarks);
        if let Some(w) = watermarks
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|(w, _)| *w)
            .max()
        {
            self.watermark = Some(self.watermark.map_or(w, |x| x.max(w)));
        }
    }

    /// Takes in the largest event times of an epoch, emitting the watermark's move.
    fn advance<O, U>(&mut self, maxima: &[i64], emit: &mut Emit<O, WindowState<U>>) {
        let Some(m) = maxima.iter().copied().max() else {
            return;
        };
        let old = self.watermark;
        let new = old.map_or(m, |w| w.max(m));
        if old == Some(new) {
            return;
        }
        self.watermark = Some(new);
        if self.reports {
            if let Some(old) = old {
                emit(Change::State(WindowState::Watermark(old)), -1);
            }
            emit(Change::State(WindowState::Watermark(new)), 1);
        }
    }
}

/// Per time of `events`, the largest event time of each batch this worker read.
fn epoch_maxima<'s, T, D>(
    events: &VecCollection<'s, T, D, isize>,
    time_of: impl Fn(&D) -> i64 + 'static,
) -> StreamVec<'s, T, (i64, T, isize)>
where
    T: Timestamp,
    D: ExchangeData,
{
    events
        .inner
        .clone()
        .unary::<CapacityContainerBuilder<Vec<(i64, T, isize)>>, _, _, _>(
            Pipeline,
            "EpochMaxima",
            |_cap, _info| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        // A batch rarely spans several times; keep one maximum per time.
                        let mut maxima: Vec<(T, i64)> = Vec::new();
                        for (d, t, _) in data.iter() {
                            let m = time_of(d);
                            match maxima.iter_mut().find(|(x, _)| x == t) {
                                Some((_, best)) => *best = (*best).max(m),
                                None => maxima.push((t.clone(), m)),
                            }
                        }
                        let mut out = output.session(&cap);
                        for (t, m) in maxima {
                            out.give((m, t, 1));
                        }
                    });
                }
            },
        )
}

/// The inputs of a windowed operator's `by_time`: updates routed by key, and what every
/// worker hears.
type Inputs<'s, T, U> = (
    VecCollection<'s, T, Keyed<U>>,
    StreamVec<'s, T, (Shared, T, isize)>,
);

/// The inputs of a windowed operator's `by_time`: its updates with the restored held
/// records (routed alike, by key), and the batches' maxima with the restored watermark (sent
/// to every worker).
fn with_restored<'s, T, U>(
    updates: VecCollection<'s, T, U>,
    maxima: StreamVec<'s, T, (i64, T, isize)>,
    restored: Option<VecCollection<'s, T, WindowState<U>>>,
) -> Inputs<'s, T, U>
where
    T: Timestamp,
    U: ExchangeData,
{
    let updates = updates.map(Keyed::Update);
    let maxima = maxima.map(|(m, t, d)| (Shared::Maximum(m), t, d));
    let Some(restored) = restored else {
        return (updates, maxima);
    };
    let held = restored.clone().flat_map(|s| match s {
        WindowState::Held(u) => Some(Keyed::Restored(u)),
        WindowState::Watermark(_) => None,
    });
    let watermarks = restored.flat_map(|s| match s {
        WindowState::Watermark(w) => Some(Shared::Watermark(w)),
        WindowState::Held(_) => None,
    });
    (updates.concat(held), maxima.concat(watermarks.inner))
}

/// Splits an operator's changes into its output and its state.
fn split<'s, T, O, S>(changes: VecCollection<'s, T, Change<O, S>>) -> Stateful<'s, T, O, S>
where
    T: Timestamp,
    O: ExchangeData,
    S: ExchangeData,
{
    let (output, state) = changes
        .inner
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(|(c, t, d)| match c {
            Change::Output(o) => Ok((o, t, d)),
            Change::State(s) => Err((s, t, d)),
        });
    Stateful {
        output: output.as_collection(),
        state: state.as_collection(),
    }
}

/// Per `(key, window)` with at least `min_events` events (at least 1), its [`Tally`]:
/// events are `(key, (time, marked))`. With a retention, windows become final behind the
/// horizon and `late` hears of the updates that only fell in final windows.
pub fn windowed_tallies<'s, T, K>(
    events: VecCollection<'s, T, (K, (i64, bool)), isize>,
    windows: Windows,
    min_events: u64,
    retention: Option<Retention>,
    late: Option<LateCallback>,
) -> VecCollection<'s, T, ((K, Window), Tally), isize>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
{
    tallies(events, windows, min_events, retention, late, None, false).output
}

/// [`windowed_tallies`], restored from `restored` (an earlier run's accumulated state, at
/// one time), and the changes of its state (see the parent module's "Checkpoints").
pub fn windowed_tallies_stateful<'s, T, K>(
    events: VecCollection<'s, T, (K, (i64, bool)), isize>,
    windows: Windows,
    min_events: u64,
    retention: Option<Retention>,
    late: Option<LateCallback>,
    restored: Option<VecCollection<'s, T, TallyState<K>>>,
) -> Stateful<'s, T, ((K, Window), Tally), TallyState<K>>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
{
    tallies(events, windows, min_events, retention, late, restored, true)
}

/// Both tally operators: `report_state` says whether to emit the state's changes.
fn tallies<'s, T, K>(
    events: VecCollection<'s, T, (K, (i64, bool)), isize>,
    windows: Windows,
    min_events: u64,
    retention: Option<Retention>,
    late: Option<LateCallback>,
    restored: Option<VecCollection<'s, T, TallyState<K>>>,
    report_state: bool,
) -> Stateful<'s, T, ((K, Window), Tally), TallyState<K>>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
{
    let w = windows;
    let first_worker = events.scope().index() == 0;
    let maxima = epoch_maxima(&events, |(_, (t, _))| *t);
    let buckets = pre_aggregate(
        events.map(move |(k, (t, marked))| (k, (w.bucket_of(t), marked))),
        "WindowedTallies",
    );
    let (keyed, shared) = with_restored(buckets, maxima, restored);
    let mut state = Tallies {
        windows,
        min_events: min_events.max(1),
        horizon: Horizon::new(retention, report_state && first_worker),
        keys: fast_map(),
        created: BTreeMap::new(),
        late,
        report_state,
    };
    split(by_time(
        keyed,
        shared,
        |k: &Keyed<(K, (i64, bool))>| k.inner().0.hashed(),
        "WindowedTallies",
        move |keyed, shared, emit| {
            let a = Arrivals::sort(keyed, shared);
            state.restore(a.restored, a.watermarks);
            state.complete_time(a.updates, &a.maxima, emit);
        },
    ))
}

/// Event and marked counts of one bucket of one key.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    events: i64,
    marked: i64,
}

/// Adds `d` events (marked or not) to bucket `b` of a key's sorted buckets, dropping the
/// bucket when it empties; whether the bucket is new.
fn add_to_bucket(buckets: &mut Vec<(i64, Counts)>, b: i64, marked: bool, d: i64) -> bool {
    match buckets.binary_search_by_key(&b, |(x, _)| *x) {
        Ok(p) => {
            let c = &mut buckets[p].1;
            c.events += d;
            if marked {
                c.marked += d;
            }
            if c.events == 0 && c.marked == 0 {
                buckets.remove(p);
            }
            false
        }
        Err(p) => {
            let c = Counts {
                events: d,
                marked: if marked { d } else { 0 },
            };
            buckets.insert(p, (b, c));
            true
        }
    }
}

struct Tallies<K> {
    windows: Windows,
    min_events: u64,
    horizon: Horizon,
    /// Per key, its non-empty buckets, sorted.
    keys: FastMap<K, Vec<(i64, Counts)>>,
    /// With a retention: the keys that gained each bucket, to find what to forget.
    created: BTreeMap<i64, Vec<K>>,
    late: Option<LateCallback>,
    /// Whether to emit the changes of the held buckets as state.
    report_state: bool,
}

type TallyEmit<'a, K> = Emit<'a, ((K, Window), Tally), TallyState<K>>;

impl<K: ExchangeData + Hash> Tallies<K> {
    /// Installs the held bucket updates and the watermark of a restored state: no output,
    /// no horizon, not late, not emitted as state.
    fn restore(&mut self, held: Vec<BucketUpdate<K>>, watermarks: Vec<(i64, isize)>) {
        self.horizon.restore(watermarks);
        for ((key, (b, marked)), d) in held {
            let buckets = self.keys.entry(key.clone()).or_default();
            let new = add_to_bucket(buckets, b, marked, d as i64);
            if buckets.is_empty() {
                self.keys.remove(&key);
            } else if new && self.horizon.retention.is_some() {
                self.created.entry(b).or_default().push(key);
            }
        }
    }

    fn complete_time(
        &mut self,
        mut updates: Vec<BucketUpdate<K>>,
        maxima: &[i64],
        emit: &mut TallyEmit<K>,
    ) {
        let (w, span) = (self.windows, i64::from(self.windows.buckets()));
        let bucket_ms = w.bucket_ms();
        // A bucket is still wanted while the last window holding it is open.
        let wanted =
            |h: &Horizon, b: i64| !h.closed(b.saturating_add(span).saturating_mul(bucket_ms));
        let mut ignored = 0u64;
        updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut ends: Vec<i64> = Vec::new();
        let mut before: Vec<Tally> = Vec::new();
        for group in updates.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            let key = &group[0].0 .0;
            ends.clear();
            for ((_, (b, _)), d) in group {
                if !wanted(&self.horizon, *b) {
                    ignored += d.unsigned_abs() as u64;
                    continue;
                }
                ends.extend((*b..b.saturating_add(span)).filter(|e| {
                    !self
                        .horizon
                        .closed(e.saturating_add(1).saturating_mul(bucket_ms))
                }));
            }
            if ends.is_empty() {
                continue;
            }
            ends.sort_unstable();
            ends.dedup();
            if !self.keys.contains_key(key) {
                self.keys.insert(key.clone(), Vec::new());
            }
            let Some(buckets) = self.keys.get_mut(key) else {
                continue;
            };
            before.clear();
            before.extend(ends.iter().map(|e| window_tally(buckets, *e, span)));
            for ((_, (b, marked)), d) in group {
                if !wanted(&self.horizon, *b) {
                    continue;
                }
                if self.report_state {
                    emit(
                        Change::State(WindowState::Held((key.clone(), (*b, *marked)))),
                        *d,
                    );
                }
                if add_to_bucket(buckets, *b, *marked, *d as i64)
                    && self.horizon.retention.is_some()
                {
                    self.created.entry(*b).or_default().push(key.clone());
                }
            }
            for (e, old) in ends.iter().zip(&before) {
                let new = window_tally(buckets, *e, span);
                if new == *old {
                    continue;
                }
                let win = w.ending_at(*e);
                if old.events >= self.min_events {
                    emit(Change::Output(((key.clone(), win), *old)), -1);
                }
                if new.events >= self.min_events {
                    emit(Change::Output(((key.clone(), win), new)), 1);
                }
            }
            if buckets.is_empty() {
                self.keys.remove(key);
            }
        }
        if ignored > 0 {
            if let Some(late) = self.late.as_mut() {
                late(ignored);
            }
        }
        self.horizon.advance(maxima, emit);
        self.forget(span, bucket_ms, emit);
    }

    /// Drops the buckets whose windows are all final, retracting their held updates.
    fn forget(&mut self, span: i64, bucket_ms: i64, emit: &mut TallyEmit<K>) {
        let Some(h) = self.horizon.limit() else {
            return;
        };
        // (b + span) * bucket_ms <= h  <=>  b <= floor(h / bucket_ms) - span
        let last = h.div_euclid(bucket_ms).saturating_sub(span);
        while let Some(entry) = self.created.first_entry() {
            if *entry.key() > last {
                break;
            }
            for key in entry.remove() {
                if let Some(buckets) = self.keys.get_mut(&key) {
                    let keep = buckets.partition_point(|(b, _)| *b <= last);
                    if self.report_state {
                        for (b, c) in &buckets[..keep] {
                            let unmarked = c.events - c.marked;
                            for (marked, n) in [(true, c.marked), (false, unmarked)] {
                                if n != 0 {
                                    let held = WindowState::Held((key.clone(), (*b, marked)));
                                    emit(Change::State(held), -(n as isize));
                                }
                            }
                        }
                    }
                    buckets.drain(..keep);
                    if buckets.is_empty() {
                        self.keys.remove(&key);
                    }
                }
            }
        }
    }
}

/// The tally of the window ending at bucket `last`, from a key's sorted buckets.
fn window_tally(buckets: &[(i64, Counts)], last: i64, span: i64) -> Tally {
    let first = last.saturating_sub(span - 1);
    let from = buckets.partition_point(|(b, _)| *b < first);
    let mut sum = Counts::default();
    for (_, c) in buckets[from..].iter().take_while(|(b, _)| *b <= last) {
        sum.events += c.events;
        sum.marked += c.marked;
    }
    Tally {
        events: sum.events.max(0) as u64,
        marked: sum.marked.max(0) as u64,
    }
}

/// Per `(key, window)`, the number of distinct values among the key's events in the window
/// (events are `(key, (time, value))`); windows with no events are absent. With a
/// retention, windows become final behind the horizon and `late` hears of the updates
/// that only fell in final windows.
pub fn windowed_distinct<'s, T, K, V>(
    events: VecCollection<'s, T, (K, (i64, V)), isize>,
    windows: Windows,
    retention: Option<Retention>,
    late: Option<LateCallback>,
) -> VecCollection<'s, T, ((K, Window), u64), isize>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
{
    distinct(events, windows, retention, late, None, false).output
}

/// [`windowed_distinct`], restored from `restored` (an earlier run's accumulated state, at
/// one time), and the changes of its state (see the parent module's "Checkpoints").
// Spelled out rather than aliased: the signature is what a caller reads in the docs.
#[allow(clippy::type_complexity)]
pub fn windowed_distinct_stateful<'s, T, K, V>(
    events: VecCollection<'s, T, (K, (i64, V)), isize>,
    windows: Windows,
    retention: Option<Retention>,
    late: Option<LateCallback>,
    restored: Option<VecCollection<'s, T, DistinctState<K, V>>>,
) -> Stateful<'s, T, ((K, Window), u64), DistinctState<K, V>>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
{
    distinct(events, windows, retention, late, restored, true)
}

/// Both distinct operators: `report_state` says whether to emit the state's changes.
#[allow(clippy::type_complexity)] // as windowed_distinct_stateful's
fn distinct<'s, T, K, V>(
    events: VecCollection<'s, T, (K, (i64, V)), isize>,
    windows: Windows,
    retention: Option<Retention>,
    late: Option<LateCallback>,
    restored: Option<VecCollection<'s, T, DistinctState<K, V>>>,
    report_state: bool,
) -> Stateful<'s, T, ((K, Window), u64), DistinctState<K, V>>
where
    T: Timestamp + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
{
    let w = windows;
    let span = i64::from(w.buckets());
    let first_worker = events.scope().index() == 0;
    let maxima = epoch_maxima(&events, |(_, (t, _))| *t);
    let pairs = pre_aggregate(
        events.flat_map(move |(k, (t, v))| {
            let b = w.bucket_of(t);
            (b..b.saturating_add(span)).map(move |e| ((k.clone(), e), v.clone()))
        }),
        "WindowedDistinct",
    );
    let (keyed, shared) = with_restored(pairs, maxima, restored);
    let mut state = Distinct {
        windows,
        horizon: Horizon::new(retention, report_state && first_worker),
        sets: fast_map(),
        created: BTreeMap::new(),
        late,
        report_state,
    };
    split(by_time(
        keyed,
        shared,
        |k: &Keyed<((K, i64), V)>| k.inner().0.hashed(),
        "WindowedDistinct",
        move |keyed, shared, emit| {
            let a = Arrivals::sort(keyed, shared);
            state.restore(a.restored, a.watermarks);
            state.complete_time(a.updates, &a.maxima, emit);
        },
    ))
}

struct Distinct<K, V> {
    windows: Windows,
    horizon: Horizon,
    /// Per `(key, last bucket of the window)`, the multiplicity of each value.
    sets: FastMap<(K, i64), FastMap<V, i64>>,
    /// With a retention: the keys that gained a window, by its last bucket.
    created: BTreeMap<i64, Vec<K>>,
    late: Option<LateCallback>,
    /// Whether to emit the changes of the held values as state.
    report_state: bool,
}

type DistinctEmit<'a, K, V> = Emit<'a, ((K, Window), u64), DistinctState<K, V>>;

impl<K: ExchangeData + Hash, V: ExchangeData + Hash> Distinct<K, V> {
    /// Installs the held value updates and the watermark of a restored state: no output,
    /// no horizon, not late, not emitted as state.
    fn restore(&mut self, held: Vec<ValueUpdate<K, V>>, watermarks: Vec<(i64, isize)>) {
        self.horizon.restore(watermarks);
        for ((ke, v), d) in held {
            let set = match self.sets.entry(ke.clone()) {
                Entry::Occupied(set) => set.into_mut(),
                Entry::Vacant(slot) => {
                    if self.horizon.retention.is_some() {
                        self.created.entry(ke.1).or_default().push(ke.0.clone());
                    }
                    slot.insert(fast_map())
                }
            };
            let n = set.entry(v.clone()).or_insert(0);
            *n += d as i64;
            if *n == 0 {
                set.remove(&v);
            }
            if set.is_empty() {
                self.sets.remove(&ke);
            }
        }
    }

    fn complete_time(
        &mut self,
        updates: Vec<ValueUpdate<K, V>>,
        maxima: &[i64],
        emit: &mut DistinctEmit<K, V>,
    ) {
        let bucket_ms = self.windows.bucket_ms();
        let mut ignored = 0u64;
        // Per touched window, its distinct count before this time.
        let mut touched: FastMap<(K, i64), u64> = fast_map();
        for ((ke, v), d) in updates {
            if self
                .horizon
                .closed(ke.1.saturating_add(1).saturating_mul(bucket_ms))
            {
                ignored += d.unsigned_abs() as u64;
                continue;
            }
            if self.report_state {
                emit(Change::State(WindowState::Held((ke.clone(), v.clone()))), d);
            }
            let set = match self.sets.get_mut(&ke) {
                Some(set) => set,
                None => {
                    if self.horizon.retention.is_some() {
                        self.created.entry(ke.1).or_default().push(ke.0.clone());
                    }
                    self.sets.entry(ke.clone()).or_insert_with(fast_map)
                }
            };
            touched.entry(ke).or_insert(set.len() as u64);
            let n = set.entry(v.clone()).or_insert(0);
            *n += d as i64;
            if *n == 0 {
                set.remove(&v);
            }
        }
        for (ke, old) in touched {
            let new = self.sets.get(&ke).map_or(0, |s| s.len() as u64);
            if new == old {
                continue;
            }
            if new == 0 {
                self.sets.remove(&ke);
            }
            let kw = (ke.0, self.windows.ending_at(ke.1));
            if old > 0 {
                emit(Change::Output((kw.clone(), old)), -1);
            }
            if new > 0 {
                emit(Change::Output((kw, new)), 1);
            }
        }
        if ignored > 0 {
            if let Some(late) = self.late.as_mut() {
                late(ignored);
            }
        }
        self.horizon.advance(maxima, emit);
        self.forget(emit);
    }

    /// Drops the windows that are final, retracting their held values.
    fn forget(&mut self, emit: &mut DistinctEmit<K, V>) {
        let Some(h) = self.horizon.limit() else {
            return;
        };
        // (e + 1) * bucket_ms <= h  <=>  e <= floor(h / bucket_ms) - 1
        let last = h.div_euclid(self.windows.bucket_ms()).saturating_sub(1);
        while let Some(entry) = self.created.first_entry() {
            if *entry.key() > last {
                break;
            }
            let e = *entry.key();
            for key in entry.remove() {
                let Some((ke, set)) = self.sets.remove_entry(&(key, e)) else {
                    continue;
                };
                if self.report_state {
                    for (v, n) in set {
                        let held = WindowState::Held((ke.clone(), v));
                        emit(Change::State(held), -(n as isize));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn windows() -> Windows {
        Windows::new(10, 3).expect("valid")
    }

    #[test]
    fn tallies_forget_buckets_whose_windows_are_final() {
        let mut state = Tallies::<u64> {
            windows: windows(),
            min_events: 1,
            horizon: Horizon::new(Some(Retention { ms: 50 }), false),
            keys: fast_map(),
            created: BTreeMap::new(),
            late: None,
            report_state: false,
        };
        let mut rows = 0;
        // Epoch e: 100 keys each with an event at 100 * e; the watermark moves 100 a time.
        for e in 0..20i64 {
            let b = windows().bucket_of(100 * e);
            let updates = (0..100u64).map(|k| ((k, (b, false)), 1)).collect();
            state.complete_time(updates, &[100 * e], &mut |c, d| {
                assert!(matches!(c, Change::Output(_)), "no state is reported");
                rows += d;
            });
            // Only the newest epoch's buckets can still be in an open window.
            assert!(
                state.keys.values().map(Vec::len).sum::<usize>() <= 100,
                "epoch {e}"
            );
            assert!(state.created.len() <= 1, "epoch {e}");
        }
        // Every window ever opened stays in the output: 3 per key and epoch.
        assert_eq!(rows, 20 * 100 * 3);
    }

    #[test]
    fn distinct_sets_are_dropped_once_final() {
        let mut state = Distinct::<u8, u64> {
            windows: windows(),
            horizon: Horizon::new(Some(Retention { ms: 0 }), false),
            sets: fast_map(),
            created: BTreeMap::new(),
            late: None,
            report_state: false,
        };
        for e in 0..10i64 {
            let b = windows().bucket_of(100 * e);
            let updates = (0..50u64)
                .flat_map(|v| (b..b + 3).map(move |w| (((0u8, w), v), 1)))
                .collect();
            state.complete_time(updates, &[100 * e], &mut |_, _| {});
            assert!(
                state.sets.len() <= 3,
                "epoch {e}: {} windows held",
                state.sets.len()
            );
        }
    }

    // Checkpoint and restore: a run A over all epochs against a run B1 over the epochs up
    // to C, whose state restores a run B2 fed only the epochs after C.

    const EPOCHS: u64 = 6;

    /// A run's input: events, or the records of a restored state (all at one epoch).
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    enum Feed<E, S> {
        Event(E),
        Restored(S),
    }

    /// A run's outputs, tagged so one runner collects both.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    enum Seen<O, S> {
        Output(O),
        State(S),
    }

    /// What a run emitted, and how many updates it reported late.
    struct Run<O, S> {
        output: Vec<(O, u64, isize)>,
        state: Vec<(S, u64, isize)>,
        late: u64,
    }

    /// A stateful operator under test, given its events, its restored state (when
    /// restoring) and its late callback.
    trait Build<E: 'static, O: 'static, S: 'static>:
        for<'s> Fn(
            VecCollection<'s, u64, E>,
            Option<VecCollection<'s, u64, S>>,
            LateCallback,
        ) -> Stateful<'s, u64, O, S>
        + Send
        + Sync
        + 'static
    {
    }

    impl<E: 'static, O: 'static, S: 'static, F> Build<E, O, S> for F where
        F: for<'s> Fn(
                VecCollection<'s, u64, E>,
                Option<VecCollection<'s, u64, S>>,
                LateCallback,
            ) -> Stateful<'s, u64, O, S>
            + Send
            + Sync
            + 'static
    {
    }

    /// Runs `build` on `workers` over `feed`, restoring from its `Restored` records when
    /// `restore`.
    fn run<E, O, S>(
        workers: usize,
        feed: Vec<(Feed<E, S>, u64, isize)>,
        restore: bool,
        build: Arc<impl Build<E, O, S>>,
    ) -> Run<O, S>
    where
        E: ExchangeData + Sync,
        O: ExchangeData,
        S: ExchangeData + Sync,
    {
        let late = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&late);
        let changes = run_on_workers(workers, feed, move |c| {
            let events = c.clone().flat_map(|f| match f {
                Feed::Event(e) => Some(e),
                Feed::Restored(_) => None,
            });
            let restored = restore.then(|| {
                c.flat_map(|f| match f {
                    Feed::Restored(s) => Some(s),
                    Feed::Event(_) => None,
                })
            });
            let seen = Arc::clone(&seen);
            let report: LateCallback = Box::new(move |n| {
                seen.fetch_add(n, Ordering::Relaxed);
            });
            let s = build(events, restored, report);
            s.output.map(Seen::Output).concat(s.state.map(Seen::State))
        });
        let mut run = Run {
            output: Vec::new(),
            state: Vec::new(),
            late: late.load(Ordering::Relaxed),
        };
        for (x, t, d) in changes {
            match x {
                Seen::Output(o) => run.output.push((o, t, d)),
                Seen::State(s) => run.state.push((s, t, d)),
            }
        }
        run
    }

    /// Checks the restore guarantee on `events`, and the state against `oracle` (the state
    /// that should be held after each epoch): A runs on 1, 2 and 3 workers; B1 and B2 on
    /// each `(B1 workers, B2 workers, C)` of `restores`. Returns A's late count.
    fn check_restore<E, O, S>(
        what: &str,
        events: &[(E, u64, isize)],
        build: impl Build<E, O, S>,
        oracle: impl Fn(u64) -> BTreeMap<S, isize>,
        restores: &[(usize, usize, u64)],
    ) -> u64
    where
        E: ExchangeData + Sync,
        O: ExchangeData,
        S: ExchangeData + Sync,
    {
        let build = Arc::new(build);
        let feed = |from: u64, to: u64| -> Vec<(Feed<E, S>, u64, isize)> {
            events
                .iter()
                .filter(|(_, e, _)| from <= *e && *e <= to)
                .map(|(x, e, d)| (Feed::Event(x.clone()), *e, *d))
                .collect()
        };
        let a = run(1, feed(0, EPOCHS), false, Arc::clone(&build));
        for epoch in 0..EPOCHS {
            assert_eq!(
                accumulate_at(&a.state, epoch),
                oracle(epoch),
                "{what}: A's state on 1 worker, epoch {epoch}"
            );
        }
        for workers in [2, 3] {
            let other = run(workers, feed(0, EPOCHS), false, Arc::clone(&build));
            for epoch in 0..EPOCHS {
                assert_eq!(
                    accumulate_at(&other.output, epoch),
                    accumulate_at(&a.output, epoch),
                    "{what}: A's output on {workers} workers, epoch {epoch}"
                );
                assert_eq!(
                    accumulate_at(&other.state, epoch),
                    oracle(epoch),
                    "{what}: A's state on {workers} workers, epoch {epoch}"
                );
            }
        }
        for &(w1, w2, c) in restores {
            let at = format!("{what}: B1 on {w1} workers, B2 on {w2}, restored at {c}");
            let b1 = run(w1, feed(0, c), false, Arc::clone(&build));
            let restored = accumulate_at(&b1.state, c);
            assert_eq!(restored, oracle(c), "{at}: B1's state");
            let mut b2_feed: Vec<_> = restored
                .iter()
                .map(|(s, d)| (Feed::Restored(s.clone()), c, *d))
                .collect();
            b2_feed.extend(feed(c + 1, EPOCHS));
            let b2 = run(w2, b2_feed, true, Arc::clone(&build));
            assert!(
                b2.output.iter().all(|(_, t, _)| *t > c),
                "{at}: B2 output something for the restored state"
            );
            // The output restored as the job restores it, then B2's changes.
            let mut output: Vec<_> = a.output.iter().filter(|u| u.1 <= c).cloned().collect();
            output.extend(b2.output);
            // The state as the caller checkpoints it: restored, then B2's changes.
            let mut state: Vec<_> = restored.into_iter().map(|(s, d)| (s, c, d)).collect();
            state.extend(b2.state);
            for epoch in c..EPOCHS {
                assert_eq!(
                    accumulate_at(&output, epoch),
                    accumulate_at(&a.output, epoch),
                    "{at}: output at epoch {epoch}"
                );
                assert_eq!(
                    accumulate_at(&state, epoch),
                    accumulate_at(&a.state, epoch),
                    "{at}: state at epoch {epoch}"
                );
            }
            if w1 == 1 && w2 == 1 {
                // On one worker each epoch's updates are consolidated alike in every run:
                // B1 and B2 ignore what A ignores, and nothing restored counts as late.
                assert_eq!(b1.late + b2.late, a.late, "{at}: late updates");
            }
        }
        a.late
    }

    /// The restores checked: B1 on 2 workers restored on 1 and 3, and others, at several
    /// epochs.
    const RESTORES: [(usize, usize, u64); 5] =
        [(2, 1, 2), (2, 3, 3), (1, 2, 1), (3, 2, 4), (1, 1, 2)];

    /// An update of `(key, (time, payload))` at an epoch.
    type Event<P> = ((u8, (i64, P)), u64, isize);

    /// Random `(key, (time, payload))` with retractions and duplicates, whose times drift
    /// forward as the stream goes on (about 30 per epoch) with up to 60 of lateness, so a
    /// retention of 25 closes windows while late events still arrive for them.
    fn drifting<P: Clone + Ord>(
        seed: u64,
        n: usize,
        mut payload: impl FnMut(&mut Rng) -> P,
    ) -> Vec<Event<P>> {
        let mut rng = Rng::new(seed);
        let mut fresh = 0i64;
        random_updates(&mut rng, n, EPOCHS, |r| {
            fresh += 1;
            let t = fresh * 180 / n as i64 - r.below(60) as i64;
            (r.below(4) as u8, (t, payload(r)))
        })
    }

    /// The oracles' horizon after `epoch`: `retention` behind the largest event time of
    /// the epochs up to it (the horizon epoch `epoch + 1` filters with).
    fn horizon_after<P>(events: &[Event<P>], retention: Option<i64>, epoch: u64) -> Option<i64> {
        Some(watermark_after(events, epoch)? - retention?)
    }

    fn watermark_after<P>(events: &[Event<P>], epoch: u64) -> Option<i64> {
        events
            .iter()
            .filter(|u| u.1 <= epoch)
            .map(|u| u.0 .1 .0)
            .max()
    }

    /// Plain sequential: the state tallies hold after `epoch`. An update of epoch `e` is
    /// accepted when its bucket's last window is open at `e` (the horizon after `e - 1`),
    /// and held until that window is final (the horizon after `epoch`); the watermark.
    fn oracle_tally_state(
        events: &[Event<bool>],
        w: Windows,
        retention: Option<i64>,
        epoch: u64,
    ) -> BTreeMap<TallyState<u8>, isize> {
        let span = i64::from(w.buckets());
        let open = |b: i64, h: Option<i64>| h.is_none_or(|h| (b + span) * w.bucket_ms() > h);
        let held_after = horizon_after(events, retention, epoch);
        let mut state: BTreeMap<TallyState<u8>, isize> = BTreeMap::new();
        for ((k, (t, marked)), e, d) in events.iter().filter(|u| u.1 <= epoch) {
            let b = w.bucket_of(*t);
            let accepted = *e == 0 || open(b, horizon_after(events, retention, e - 1));
            if accepted && open(b, held_after) {
                *state
                    .entry(WindowState::Held((*k, (b, *marked))))
                    .or_default() += d;
            }
        }
        state.retain(|_, d| *d != 0);
        if retention.is_some() {
            if let Some(wm) = watermark_after(events, epoch) {
                state.insert(WindowState::Watermark(wm), 1);
            }
        }
        state
    }

    /// Plain sequential: the state distinct counts hold after `epoch`, per window (by its
    /// last bucket) and value, as for tallies.
    fn oracle_distinct_state(
        events: &[Event<u8>],
        w: Windows,
        retention: Option<i64>,
        epoch: u64,
    ) -> BTreeMap<DistinctState<u8, u8>, isize> {
        let open = |e: i64, h: Option<i64>| h.is_none_or(|h| (e + 1) * w.bucket_ms() > h);
        let held_after = horizon_after(events, retention, epoch);
        let mut state: BTreeMap<DistinctState<u8, u8>, isize> = BTreeMap::new();
        for ((k, (t, v)), at, d) in events.iter().filter(|u| u.1 <= epoch) {
            let b = w.bucket_of(*t);
            let before = at
                .checked_sub(1)
                .and_then(|p| horizon_after(events, retention, p));
            for e in b..b + i64::from(w.buckets()) {
                if open(e, before) && open(e, held_after) {
                    *state.entry(WindowState::Held(((*k, e), *v))).or_default() += d;
                }
            }
        }
        state.retain(|_, d| *d != 0);
        if retention.is_some() {
            if let Some(wm) = watermark_after(events, epoch) {
                state.insert(WindowState::Watermark(wm), 1);
            }
        }
        state
    }

    #[test]
    fn restored_tallies_continue_the_run_they_were_checkpointed_from() {
        let w = windows();
        for seed in 0..3u64 {
            let events = drifting(seed, 500, |r| r.below(5) == 0);
            for (min, retention) in [(1, None), (3, Some(25)), (1, Some(0))] {
                let what = format!("tallies seed {seed} min {min} retention {retention:?}");
                let late = check_restore(
                    &what,
                    &events,
                    move |c, restored, late| {
                        let retention = retention.map(|ms| Retention { ms });
                        windowed_tallies_stateful(c, w, min, retention, Some(late), restored)
                    },
                    |epoch| oracle_tally_state(&events, w, retention, epoch),
                    &RESTORES,
                );
                // With a retention, windows did become final, late updates were ignored
                // and buckets forgotten.
                assert_eq!(late > 0, retention.is_some(), "{what}");
                let accepted = oracle_tally_state(&events, w, None, EPOCHS).len();
                let held = oracle_tally_state(&events, w, retention, EPOCHS).len();
                assert_eq!(held < accepted, retention.is_some(), "{what}");
            }
        }
    }

    #[test]
    fn restored_distinct_counts_continue_the_run_they_were_checkpointed_from() {
        let w = windows();
        for seed in 0..3u64 {
            let events = drifting(seed, 500, |r| r.below(4) as u8);
            for retention in [None, Some(25), Some(0)] {
                let what = format!("distinct seed {seed} retention {retention:?}");
                let late = check_restore(
                    &what,
                    &events,
                    move |c, restored, late| {
                        let retention = retention.map(|ms| Retention { ms });
                        windowed_distinct_stateful(c, w, retention, Some(late), restored)
                    },
                    |epoch| oracle_distinct_state(&events, w, retention, epoch),
                    &RESTORES,
                );
                assert_eq!(late > 0, retention.is_some(), "{what}");
                let accepted = oracle_distinct_state(&events, w, None, EPOCHS).len();
                let held = oracle_distinct_state(&events, w, retention, EPOCHS).len();
                assert_eq!(held < accepted, retention.is_some(), "{what}");
            }
        }
    }
}
