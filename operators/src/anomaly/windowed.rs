//! [`windowed_tallies`] and [`windowed_distinct`]: per-window counts as hand-written timely
//! operators over hash maps, with an optional retention horizon (see the parent module's
//! docs for the semantics).
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

use std::collections::BTreeMap;
use std::hash::Hash;

use differential_dataflow::hashable::Hashable;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
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

/// A change of a key's events in a bucket: `((key, (bucket, marked)), diff)`.
type BucketUpdate<K> = ((K, (i64, bool)), isize);

/// A change of a value's multiplicity in a window: `(((key, last bucket), value), diff)`.
type ValueUpdate<K, V> = (((K, i64), V), isize);

/// The watermark and the horizon it gives, as every worker sees them.
struct Horizon {
    retention: Option<Retention>,
    watermark: Option<i64>,
}

impl Horizon {
    fn new(retention: Option<Retention>) -> Self {
        Horizon {
            retention,
            watermark: None,
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

    /// Takes in the largest event times of an epoch.
    fn advance(&mut self, maxima: &[i64]) {
        if let Some(m) = maxima.iter().copied().max() {
            self.watermark = Some(self.watermark.map_or(m, |w| w.max(m)));
        }
    }
}

/// The event times of a time's maxima (their differences are always 1).
fn event_times(maxima: Vec<(i64, isize)>) -> Vec<i64> {
    maxima.into_iter().map(|(m, _)| m).collect()
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
    let w = windows;
    let maxima = epoch_maxima(&events, |(_, (t, _))| *t);
    let buckets = pre_aggregate(
        events.map(move |(k, (t, marked))| (k, (w.bucket_of(t), marked))),
        "WindowedTallies",
    );
    let mut state = Tallies {
        windows,
        min_events: min_events.max(1),
        horizon: Horizon::new(retention),
        keys: fast_map(),
        created: BTreeMap::new(),
        late,
    };
    by_time(
        buckets,
        maxima,
        |(k, _): &(K, (i64, bool))| k.hashed(),
        "WindowedTallies",
        move |updates, maxima, emit| state.complete_time(updates, &event_times(maxima), emit),
    )
}

/// Event and marked counts of one bucket of one key.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    events: i64,
    marked: i64,
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
}

impl<K: ExchangeData + Hash> Tallies<K> {
    fn complete_time(
        &mut self,
        mut updates: Vec<BucketUpdate<K>>,
        maxima: &[i64],
        emit: &mut dyn FnMut(((K, Window), Tally), isize),
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
                let d = *d as i64;
                match buckets.binary_search_by_key(b, |(x, _)| *x) {
                    Ok(p) => {
                        let c = &mut buckets[p].1;
                        c.events += d;
                        if *marked {
                            c.marked += d;
                        }
                        if c.events == 0 && c.marked == 0 {
                            buckets.remove(p);
                        }
                    }
                    Err(p) => {
                        let c = Counts {
                            events: d,
                            marked: if *marked { d } else { 0 },
                        };
                        buckets.insert(p, (*b, c));
                        if self.horizon.retention.is_some() {
                            self.created.entry(*b).or_default().push(key.clone());
                        }
                    }
                }
            }
            for (e, old) in ends.iter().zip(&before) {
                let new = window_tally(buckets, *e, span);
                if new == *old {
                    continue;
                }
                let win = w.ending_at(*e);
                if old.events >= self.min_events {
                    emit(((key.clone(), win), *old), -1);
                }
                if new.events >= self.min_events {
                    emit(((key.clone(), win), new), 1);
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
        self.horizon.advance(maxima);
        self.forget(span, bucket_ms);
    }

    /// Drops the buckets whose windows are all final.
    fn forget(&mut self, span: i64, bucket_ms: i64) {
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
    let w = windows;
    let span = i64::from(w.buckets());
    let maxima = epoch_maxima(&events, |(_, (t, _))| *t);
    let pairs = pre_aggregate(
        events.flat_map(move |(k, (t, v))| {
            let b = w.bucket_of(t);
            (b..b.saturating_add(span)).map(move |e| ((k.clone(), e), v.clone()))
        }),
        "WindowedDistinct",
    );
    let mut state = Distinct {
        windows,
        horizon: Horizon::new(retention),
        sets: fast_map(),
        created: BTreeMap::new(),
        late,
    };
    by_time(
        pairs,
        maxima,
        |(ke, _): &((K, i64), V)| ke.hashed(),
        "WindowedDistinct",
        move |updates, maxima, emit| state.complete_time(updates, &event_times(maxima), emit),
    )
}

struct Distinct<K, V> {
    windows: Windows,
    horizon: Horizon,
    /// Per `(key, last bucket of the window)`, the multiplicity of each value.
    sets: FastMap<(K, i64), FastMap<V, i64>>,
    /// With a retention: the keys that gained a window, by its last bucket.
    created: BTreeMap<i64, Vec<K>>,
    late: Option<LateCallback>,
}

impl<K: ExchangeData + Hash, V: ExchangeData + Hash> Distinct<K, V> {
    fn complete_time(
        &mut self,
        updates: Vec<ValueUpdate<K, V>>,
        maxima: &[i64],
        emit: &mut dyn FnMut(((K, Window), u64), isize),
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
                emit((kw.clone(), old), -1);
            }
            if new > 0 {
                emit((kw, new), 1);
            }
        }
        if ignored > 0 {
            if let Some(late) = self.late.as_mut() {
                late(ignored);
            }
        }
        self.horizon.advance(maxima);
        let Some(h) = self.horizon.limit() else {
            return;
        };
        // (e + 1) * bucket_ms <= h  <=>  e <= floor(h / bucket_ms) - 1
        let last = h.div_euclid(bucket_ms).saturating_sub(1);
        while let Some(entry) = self.created.first_entry() {
            if *entry.key() > last {
                break;
            }
            let e = *entry.key();
            for key in entry.remove() {
                self.sets.remove(&(key, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Windows {
        Windows::new(10, 3).expect("valid")
    }

    #[test]
    fn tallies_forget_buckets_whose_windows_are_final() {
        let mut state = Tallies::<u64> {
            windows: windows(),
            min_events: 1,
            horizon: Horizon::new(Some(Retention { ms: 50 })),
            keys: fast_map(),
            created: BTreeMap::new(),
            late: None,
        };
        let mut rows = 0;
        // Epoch e: 100 keys each with an event at 100 * e; the watermark moves 100 a time.
        for e in 0..20i64 {
            let b = windows().bucket_of(100 * e);
            let updates = (0..100u64).map(|k| ((k, (b, false)), 1)).collect();
            state.complete_time(updates, &[100 * e], &mut |_, d| rows += d);
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
            horizon: Horizon::new(Some(Retention { ms: 0 })),
            sets: fast_map(),
            created: BTreeMap::new(),
            late: None,
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
}
