//! Anomaly detection over event-time windows: windowed counts, fixed thresholds, pure
//! bursts, rolling baselines, and merging alerting windows into runs.
//!
//! Everything here is a function of keys and event times (milliseconds), never of arrival
//! order or wall clock, so after every epoch each output equals the same rule applied in
//! batch to the accumulated input: a late event updates the windows it falls in, and an
//! alert that depends on them may appear, change or disappear (as a retraction and an
//! insertion).
//!
//! ```text
//!  (key, time) ──bucket──▶ (key, bucket) ──explode to W windows──▶ count ──▶ ((key, window), n)
//!                                                                                 │
//!      windowed_counts ────────┬────────── filter n >= threshold ────────────────┤ fixed rate
//!                              ├── pure_bursts(totals, impure counts, threshold) ┤ view-only bursts
//!      windowed_distinct ──────┴── baseline_surges(counts, rule) ────────────────┤ surges vs baseline
//!                                                                                 ▼
//!                                          merge_windows: runs of overlapping/touching windows
//! ```
//!
//! # Windows
//! [`Windows`] cuts event time into tumbling buckets of `bucket_ms` (bucket `b` is
//! `[b * bucket_ms, (b + 1) * bucket_ms)`) and combines `W` consecutive buckets into a
//! sliding [`Window`] that advances one bucket at a time; `W = 1` gives tumbling windows.
//! An event at time `t` is in the `W` windows whose buckets include `t`'s. Windows are named
//! by their bounds (`start` inclusive, `end` exclusive, in ms).
//!
//! # Operators
//! - [`windowed_counts`]: per `(key, window)`, the number of events (with multiplicity: a
//!   duplicated event counts twice). Windows with no events are absent.
//! - [`windowed_distinct`]: per `(key, window)`, the number of distinct values.
//! - [`pure_bursts`]: the windows whose count reaches a threshold and that hold no "impure"
//!   event (e.g. all events are views).
//! - [`baseline_surges`]: a window's count against the lower median of the non-empty
//!   windows among the `history` windows that end at or before its start; it surges when
//!   the count is at least `max(floor, ceil(multiplier x median))`. A window whose history
//!   has fewer than `min_history` non-empty windows has no baseline and never surges
//!   (warm-up at the start of the data, or after a gap in a key's activity).
//! - [`merge_windows`]: per key, overlapping or touching windows merged into maximal runs;
//!   each run keeps the strongest payload of its members.
//!
//! # Guarantees and non-guarantees
//! Outputs are exact and deterministic (integer arithmetic; multipliers have a resolution
//! of 0.001) and independent of the number of workers. Nothing here forgets: state grows
//! with the distinct `(key, bucket)` pairs seen (`windowed_counts` holds `W` counts per
//! pair, `windowed_distinct` `W` entries per distinct `(key, bucket, value)`,
//! `baseline_surges` `history + 1` entries per non-empty window). Bounding it needs a
//! retention horizon, which these operators do not have.

use std::cmp::Ordering;
use std::hash::Hash;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::distinct::distinct_count;
use crate::local::pre_aggregate;

/// An event-time window: `[start, end)` in UTC milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First millisecond of the window.
    pub start: i64,
    /// First millisecond after the window.
    pub end: i64,
}

impl Window {
    /// Whether the two windows share at least one millisecond.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Tumbling buckets combined into sliding windows (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    bucket_ms: i64,
    buckets: u32,
}

impl Windows {
    /// Windows of `buckets` buckets of `bucket_ms` each, sliding by one bucket. `None`
    /// when either is zero or `bucket_ms` is negative.
    pub fn new(bucket_ms: i64, buckets: u32) -> Option<Windows> {
        (bucket_ms > 0 && buckets > 0).then_some(Windows { bucket_ms, buckets })
    }

    /// Tumbling windows of `len_ms` (one bucket each).
    pub fn tumbling(len_ms: i64) -> Option<Windows> {
        Windows::new(len_ms, 1)
    }

    /// The bucket length in milliseconds.
    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    /// Buckets per window.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The bucket of an instant.
    #[inline]
    pub fn bucket_of(&self, t: i64) -> i64 {
        t.div_euclid(self.bucket_ms)
    }

    /// The window whose last bucket is `last`.
    #[inline]
    pub fn ending_at(&self, last: i64) -> Window {
        let first = last.saturating_sub(i64::from(self.buckets) - 1);
        Window {
            start: first.saturating_mul(self.bucket_ms),
            end: last.saturating_add(1).saturating_mul(self.bucket_ms),
        }
    }

    /// The last bucket of a window of these windows.
    #[inline]
    pub fn last_bucket(&self, w: &Window) -> i64 {
        w.end.div_euclid(self.bucket_ms) - 1
    }

    /// The windows containing instant `t`, earliest first.
    pub fn containing(&self, t: i64) -> impl Iterator<Item = Window> {
        let this = *self;
        let b = self.bucket_of(t);
        (0..i64::from(self.buckets)).map(move |i| this.ending_at(b + i))
    }
}

/// A multiplier with a resolution of 0.001, applied with integer arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Multiplier {
    milli: u64,
}

impl Multiplier {
    /// `m` rounded to thousandths; `None` unless `m` is finite and in `0.001..=1e6`.
    pub fn new(m: f64) -> Option<Multiplier> {
        if !m.is_finite() || !(0.001..=1e6).contains(&m) {
            return None;
        }
        Some(Multiplier {
            milli: (m * 1000.0).round() as u64,
        })
    }

    /// The multiplier in thousandths.
    pub fn milli(&self) -> u64 {
        self.milli
    }

    /// `ceil(x * multiplier)`, exact (saturating at `u64::MAX`).
    pub fn apply_ceil(&self, x: u64) -> u64 {
        let p = u128::from(x) * u128::from(self.milli);
        u64::try_from(p.div_ceil(1000)).unwrap_or(u64::MAX)
    }
}

/// How a window is compared with its recent past (see [`baseline_surges`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaselineRule {
    /// Number of previous windows looked at (the `history` windows ending at or before the
    /// window's start, one bucket apart).
    pub history: u32,
    /// Fewest non-empty windows among them for a baseline to exist.
    pub min_history: u32,
    /// Threshold = `max(floor, ceil(multiplier x baseline))`.
    pub multiplier: Multiplier,
    /// Least threshold, whatever the baseline (guards quiet periods; at least 1).
    pub floor: u64,
}

impl BaselineRule {
    /// The threshold a window with baseline `baseline` must reach.
    pub fn threshold(&self, baseline: u64) -> u64 {
        self.multiplier.apply_ceil(baseline).max(self.floor).max(1)
    }
}

/// A window's count against its baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Surge {
    /// The window's count.
    pub observed: u64,
    /// The lower median of the non-empty previous windows' counts.
    pub baseline: u64,
    /// The threshold it reached.
    pub threshold: u64,
}

/// The lower median (element `(n - 1) / 2` of the sorted values); `None` when empty.
pub fn lower_median(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[(values.len() - 1) / 2])
}

/// Per `(key, window)`, the number of events of `key` whose time falls in the window
/// (see the module docs). Windows with no events are absent.
pub fn windowed_counts<'s, T, K>(
    events: VecCollection<'s, T, (K, i64), isize>,
    windows: Windows,
) -> VecCollection<'s, T, ((K, Window), u64), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
{
    let w = windows;
    let buckets = pre_aggregate(
        events.map(move |(k, t)| (k, w.bucket_of(t))),
        "WindowedCounts",
    );
    // A bucket's events count once in each of the W windows that include the bucket: the
    // multiplicity (the bucket's count this epoch) rides along, so late events just add to
    // the windows they fall in.
    buckets
        .explode(move |(k, b)| {
            (0..i64::from(w.buckets)).map(move |i| ((k.clone(), w.ending_at(b + i)), 1isize))
        })
        .count()
        .map(|(kw, n)| (kw, n.max(0) as u64))
}

/// Per `(key, window)`, the number of distinct values among the key's events in the window.
/// Duplicates do not change it; windows with no events are absent.
pub fn windowed_distinct<'s, T, K, V>(
    events: VecCollection<'s, T, (K, (i64, V)), isize>,
    windows: Windows,
) -> VecCollection<'s, T, ((K, Window), u64), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
{
    let w = windows;
    let pairs = events.flat_map(move |(k, (t, v))| {
        w.containing(t)
            .map(move |win| ((k.clone(), win), v.clone()))
    });
    distinct_count(pre_aggregate(pairs, "WindowedDistinct"))
}

/// The windows of `totals` (from [`windowed_counts`]) whose count is at least `threshold`
/// and that have no record in `impure` (the [`windowed_counts`] of the events that break
/// the burst, e.g. everything but views). Output: the window's total count.
pub fn pure_bursts<'s, T, K>(
    totals: VecCollection<'s, T, ((K, Window), u64), isize>,
    impure: VecCollection<'s, T, ((K, Window), u64), isize>,
    threshold: u64,
) -> VecCollection<'s, T, ((K, Window), u64), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
{
    // `impure` has one record per window, so its keys are distinct and the antijoin is the
    // relational one.
    totals
        .filter(move |(_, n)| *n >= threshold)
        .antijoin(impure.map(|(kw, _)| kw))
}

/// A window's role in the baseline reduction of one target window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Role {
    /// The target window's own count.
    Current(u64),
    /// The count of a previous window (named by its last bucket, so equal counts of two
    /// windows stay two values).
    History(i64, u64),
}

/// The windows of `counts` that surge against their own key's recent past (see the module
/// docs and [`BaselineRule`]).
///
/// `counts` must hold at most one record per `(key, window)`, with multiplicity 1, for
/// windows of `windows` (what [`windowed_counts`] and [`windowed_distinct`] produce).
/// Output: per surging window, its count, baseline and threshold.
pub fn baseline_surges<'s, T, K>(
    counts: VecCollection<'s, T, ((K, Window), u64), isize>,
    windows: Windows,
    rule: BaselineRule,
) -> VecCollection<'s, T, ((K, Window), Surge), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
{
    let w = windows;
    let span = i64::from(w.buckets);
    let history = i64::from(rule.history);
    // The history of the window ending at bucket `b` is the windows ending at buckets
    // `b - span - history + 1 ..= b - span` (all end at or before its start). So a window
    // ending at `b'` is history for the targets ending at `b' + span ..= b' + span + history - 1`.
    let roles = counts.flat_map(move |((k, win), n)| {
        let b = w.last_bucket(&win);
        let history = (0..history).map({
            let k = k.clone();
            move |j| ((k.clone(), b + span + j), Role::History(b, n))
        });
        std::iter::once(((k, b), Role::Current(n))).chain(history)
    });
    let mut scratch: Vec<u64> = Vec::new();
    roles
        .reduce_named("BaselineSurges", move |_key, input, output| {
            scratch.clear();
            let mut current = None;
            for (role, diff) in input {
                if *diff <= 0 {
                    continue;
                }
                match role {
                    Role::Current(n) => current = Some(*n),
                    Role::History(_, n) => scratch.push(*n),
                }
            }
            let Some(observed) = current else {
                return;
            };
            if scratch.len() < rule.min_history as usize {
                return;
            }
            let Some(baseline) = lower_median(&mut scratch) else {
                return;
            };
            let threshold = rule.threshold(baseline);
            if observed >= threshold {
                output.push((
                    Surge {
                        observed,
                        baseline,
                        threshold,
                    },
                    1isize,
                ));
            }
        })
        .map(move |((k, b), s)| ((k, w.ending_at(b)), s))
}

/// Per key, merges overlapping or touching windows into maximal runs (see the module docs).
///
/// Each run is output once, as the window from its first start to its last end, with the
/// payload of its strongest member by `stronger` (`Greater` = stronger); ties go to the
/// member with the earliest `(start, end)`, then the least payload. Duplicates count once.
pub fn merge_windows<'s, T, K, P>(
    alerts: VecCollection<'s, T, (K, (Window, P)), isize>,
    stronger: fn(&P, &P) -> Ordering,
) -> VecCollection<'s, T, (K, (Window, P)), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
    P: ExchangeData,
{
    alerts.reduce_named("MergeWindows", move |_key, input, output| {
        // `input` is sorted by (window, payload): runs are found in one sweep.
        let mut run: Option<(Window, &P)> = None;
        for ((win, p), diff) in input {
            if *diff <= 0 {
                continue;
            }
            run = match run {
                Some((r, best)) if win.start <= r.end => {
                    let r = Window {
                        start: r.start,
                        end: r.end.max(win.end),
                    };
                    let best = if stronger(p, best) == Ordering::Greater {
                        p
                    } else {
                        best
                    };
                    Some((r, best))
                }
                Some((r, best)) => {
                    output.push(((r, best.clone()), 1));
                    Some((*win, p))
                }
                None => Some((*win, p)),
            };
        }
        if let Some((r, best)) = run {
            output.push(((r, best.clone()), 1));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::{BTreeMap, BTreeSet};

    const W: Windows = Windows {
        bucket_ms: 10,
        buckets: 3,
    };

    /// Plain sequential: every window containing each live event, counted.
    fn oracle_counts(
        input: &BTreeMap<(u8, i64), isize>,
        w: Windows,
    ) -> BTreeMap<(u8, Window), u64> {
        let mut out: BTreeMap<(u8, Window), u64> = BTreeMap::new();
        for ((k, t), d) in input {
            // Brute force over nearby windows: [start, end) containing t.
            for last in (t.div_euclid(w.bucket_ms) - 5)..=(t.div_euclid(w.bucket_ms) + 5) {
                let start = (last - i64::from(w.buckets) + 1) * w.bucket_ms;
                let end = (last + 1) * w.bucket_ms;
                if start <= *t && *t < end {
                    *out.entry((*k, Window { start, end })).or_default() += *d as u64;
                }
            }
        }
        out
    }

    fn as_set<D: Ord + Clone>(m: BTreeMap<D, u64>) -> BTreeMap<(D, u64), isize> {
        m.into_iter().map(|(k, n)| ((k, n), 1)).collect()
    }

    fn gen_event(r: &mut Rng) -> (u8, i64) {
        (r.below(4) as u8, r.below(120) as i64 - 20)
    }

    #[test]
    fn windows_cover_each_instant_w_times() {
        let w = Windows::new(60_000, 5).expect("valid");
        let t = 1_572_600_123_456;
        let ws: Vec<Window> = w.containing(t).collect();
        assert_eq!(ws.len(), 5);
        assert!(ws.iter().all(|x| x.start <= t && t < x.end));
        assert!(ws.iter().all(|x| x.end - x.start == 300_000));
        assert_eq!(w.last_bucket(&ws[0]), w.bucket_of(t));
        assert_eq!(w.bucket_of(-1), -1);
        assert!(Windows::new(0, 1).is_none() && Windows::new(5, 0).is_none());
    }

    #[test]
    fn multipliers_are_exact_thousandths() {
        let m = Multiplier::new(1.5).expect("valid");
        assert_eq!(m.apply_ceil(641), 962); // 961.5 rounds up
        assert_eq!(m.apply_ceil(0), 0);
        assert_eq!(Multiplier::new(1.2).map(|m| m.apply_ceil(10)), Some(12));
        assert!(Multiplier::new(f64::NAN).is_none() && Multiplier::new(0.0).is_none());
        let rule = BaselineRule {
            history: 4,
            min_history: 2,
            multiplier: m,
            floor: 100,
        };
        assert_eq!(rule.threshold(10), 100);
        assert_eq!(rule.threshold(1000), 1500);
        assert_eq!(lower_median(&mut [4, 1, 3, 2]), Some(2));
        assert_eq!(lower_median(&mut []), None);
    }

    #[test]
    fn counts_match_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 0..5u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 500, 6, gen_event);
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| windowed_counts(c, W));
                for epoch in 0..6u64 {
                    let expected = as_set(oracle_counts(&accumulate_at(&updates, epoch), W));
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn distinct_match_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 0..5u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 500, 6, |r| {
                let (k, t) = gen_event(r);
                (k, (t, r.below(5) as u8))
            });
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| windowed_distinct(c, W));
                for epoch in 0..6u64 {
                    let mut sets: BTreeMap<(u8, Window), BTreeSet<u8>> = BTreeMap::new();
                    for ((k, (t, v)), d) in accumulate_at(&updates, epoch) {
                        assert!(d > 0);
                        for win in W.containing(t) {
                            sets.entry((k, win)).or_default().insert(v);
                        }
                    }
                    let expected =
                        as_set(sets.into_iter().map(|(k, s)| (k, s.len() as u64)).collect());
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn pure_bursts_match_oracle_on_1_and_3_workers() {
        // (key, (time, pure)): a window bursts with >= 4 events, all pure.
        for seed in 0..5u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 400, 6, |r| {
                let (k, t) = gen_event(r);
                (k, (t, r.below(6) != 0))
            });
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| {
                    let totals = windowed_counts(c.clone().map(|(k, (t, _))| (k, t)), W);
                    let impure =
                        windowed_counts(c.filter(|(_, (_, p))| !*p).map(|(k, (t, _))| (k, t)), W);
                    pure_bursts(totals, impure, 4)
                });
                for epoch in 0..6u64 {
                    let acc = accumulate_at(&updates, epoch);
                    let all: BTreeMap<(u8, i64), isize> =
                        acc.iter().fold(BTreeMap::new(), |mut m, ((k, (t, _)), d)| {
                            *m.entry((*k, *t)).or_default() += d;
                            m
                        });
                    let impure: BTreeMap<(u8, i64), isize> = acc
                        .iter()
                        .filter(|((_, (_, p)), _)| !*p)
                        .fold(BTreeMap::new(), |mut m, ((k, (t, _)), d)| {
                            *m.entry((*k, *t)).or_default() += d;
                            m
                        });
                    let impure = oracle_counts(&impure, W);
                    let expected = as_set(
                        oracle_counts(&all, W)
                            .into_iter()
                            .filter(|(kw, n)| *n >= 4 && !impure.contains_key(kw))
                            .collect(),
                    );
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    /// Plain sequential baseline: for each window with events, look up the counts of the
    /// `history` windows ending at or before its start.
    fn oracle_surges(
        counts: &BTreeMap<(u8, Window), u64>,
        w: Windows,
        rule: BaselineRule,
    ) -> BTreeMap<((u8, Window), Surge), isize> {
        let mut out = BTreeMap::new();
        for ((k, win), n) in counts {
            let mut hist = Vec::new();
            for j in 1..=i64::from(rule.history) {
                let prev = Window {
                    start: win.start - (i64::from(w.buckets) - 1 + j) * w.bucket_ms,
                    end: win.start - (j - 1) * w.bucket_ms,
                };
                assert!(prev.end <= win.start);
                if let Some(c) = counts.get(&(*k, prev)) {
                    hist.push(*c);
                }
            }
            if hist.len() < rule.min_history as usize {
                continue;
            }
            hist.sort();
            let baseline = hist[(hist.len() - 1) / 2];
            let threshold = ((baseline as f64 * rule.multiplier.milli() as f64 / 1000.0).ceil()
                as u64)
                .max(rule.floor);
            if *n >= threshold {
                out.insert(
                    (
                        (*k, *win),
                        Surge {
                            observed: *n,
                            baseline,
                            threshold,
                        },
                    ),
                    1,
                );
            }
        }
        out
    }

    #[test]
    fn surges_match_oracle_with_retractions_on_1_and_3_workers() {
        for (seed, w) in [(0u64, W), (1, W), (2, Windows::new(7, 1).expect("valid"))] {
            for rule in [
                BaselineRule {
                    history: 4,
                    min_history: 2,
                    multiplier: Multiplier::new(1.5).expect("valid"),
                    floor: 2,
                },
                BaselineRule {
                    history: 1,
                    min_history: 1,
                    multiplier: Multiplier::new(1.0).expect("valid"),
                    floor: 1,
                },
            ] {
                let mut rng = Rng::new(seed);
                // Bursty times so that some windows surge.
                let updates = random_updates(&mut rng, 600, 6, |r| {
                    let t = if r.below(4) == 0 {
                        40 + r.below(8) as i64
                    } else {
                        r.below(150) as i64
                    };
                    (r.below(3) as u8, t)
                });
                for workers in [1, 3] {
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        baseline_surges(windowed_counts(c, w), w, rule)
                    });
                    let mut any = false;
                    for epoch in 0..6u64 {
                        let counts = oracle_counts(&accumulate_at(&updates, epoch), w);
                        let expected = oracle_surges(&counts, w, rule);
                        any |= !expected.is_empty();
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            expected,
                            "seed {seed} workers {workers} epoch {epoch} rule {rule:?}"
                        );
                    }
                    assert!(any, "the test data should surge somewhere");
                }
            }
        }
    }

    fn by_payload(a: &u8, b: &u8) -> Ordering {
        a.cmp(b)
    }

    #[test]
    fn merged_runs_match_oracle_on_1_and_3_workers() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 300, 6, |r| {
                let start = r.below(60) as i64;
                let len = 1 + r.below(6) as i64;
                (
                    r.below(3) as u8,
                    (
                        Window {
                            start,
                            end: start + len,
                        },
                        r.below(4) as u8,
                    ),
                )
            });
            for workers in [1, 3] {
                let out =
                    run_on_workers(workers, updates.clone(), |c| merge_windows(c, by_payload));
                for epoch in 0..6u64 {
                    // Oracle: paint each key's time line, cut it into runs, then pick the
                    // strongest member (earliest window among equals) of each run.
                    let live: BTreeSet<(u8, (Window, u8))> =
                        accumulate_at(&updates, epoch).into_keys().collect();
                    let mut expected = BTreeMap::new();
                    for key in 0..3u8 {
                        let mine: Vec<(Window, u8)> = live
                            .iter()
                            .filter(|(k, _)| *k == key)
                            .map(|(_, v)| *v)
                            .collect();
                        let mut covered = [false; 80];
                        for (w, _) in &mine {
                            for t in w.start..w.end {
                                covered[t as usize] = true;
                            }
                        }
                        let mut t = 0usize;
                        while t < 80 {
                            if !covered[t] {
                                t += 1;
                                continue;
                            }
                            // Touching windows paint a contiguous stretch, so they merge.
                            let s = t;
                            while t < 80 && covered[t] {
                                t += 1;
                            }
                            let run = Window {
                                start: s as i64,
                                end: t as i64,
                            };
                            let members: Vec<&(Window, u8)> = mine
                                .iter()
                                .filter(|(w, _)| run.start <= w.start && w.end <= run.end)
                                .collect();
                            let best = members
                                .iter()
                                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                                .map(|m| m.1)
                                .expect("a run has members");
                            expected.insert((key, (run, best)), 1isize);
                        }
                    }
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn touching_windows_merge_and_gaps_split() {
        let w = |start, end| Window { start, end };
        let updates = vec![
            ((0u8, (w(0, 10), 1u8)), 0u64, 1isize),
            ((0, (w(10, 20), 3)), 0, 1),
            ((0, (w(21, 30), 2)), 0, 1),
        ];
        let out = run_on_workers(1, updates, |c| merge_windows(c, by_payload));
        let got: Vec<_> = accumulate_at(&out, 0).into_keys().collect();
        assert_eq!(got, vec![(0, (w(0, 20), 3)), (0, (w(21, 30), 2))]);
    }
}
