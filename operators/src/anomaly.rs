//! Anomaly detection over event-time windows: windowed tallies and distinct counts,
//! rolling baselines, and merging alerting windows into runs.
//!
//! Everything here is a function of keys, event times (milliseconds) and the epochs the
//! input is cut into, never of arrival order within an epoch or of wall clock: after every
//! epoch each output equals the same rule applied in batch to the accumulated input (with
//! a retention, to the input each window accepted while it was open). A late event updates
//! the windows it falls in, and an alert that depends on them may appear, change or
//! disappear (as a retraction and an insertion).
//!
//! ```text
//!  (key, (time, marked)) ──▶ windowed_tallies ──▶ ((key, window), {events, marked}) ─┬─ thresholds, bursts
//!  (key, (time, value))  ──▶ windowed_distinct ─▶ ((key, window), distinct values) ──┤
//!                                 windowed counts ──▶ baseline_surges(rule) ─────────┤ surges vs baseline
//!                                                                                    ▼
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
//! - [`windowed_tallies`]: per `(key, window)` with at least `min_events` events, a
//!   [`Tally`]: the number of events (with multiplicity: a duplicated event counts twice)
//!   and how many of them are marked (e.g. are not views, so `marked == 0` is a view-only
//!   burst). Windows below `min_events` are absent, so thresholds cost no output.
//! - [`windowed_distinct`]: per `(key, window)`, the number of distinct values.
//! - [`baseline_surges`]: a window's count against the lower median of the non-empty
//!   windows among the `history` windows that end at or before its start; it surges when
//!   the count is at least `max(floor, ceil(multiplier x median))`. A window whose history
//!   has fewer than `min_history` non-empty windows has no baseline and never surges
//!   (warm-up at the start of the data, or after a gap in a key's activity).
//! - [`merge_windows`]: per key, overlapping or touching windows merged into maximal runs;
//!   each run keeps the strongest payload of its members.
//!
//! # Retention
//! Without a [`Retention`], the windowed operators never forget: state grows with the
//! distinct `(key, bucket)` pairs seen, and every output is exactly the batch result.
//! With `Retention { ms }`, epoch `e`'s horizon is `ms` behind the watermark of the epochs
//! before `e` (the largest event time in them, over all workers). A window whose end is at
//! or before the horizon is final: its output stays as it is and an update of epoch `e`
//! changes only the windows that are still open (an event whose windows are all final is
//! ignored and reported through the `late` callback). State is dropped as windows become
//! final, so it is bounded by the keys active within `ms` of the watermark. The result
//! depends on how the input is cut into epochs only for events later than `ms` behind the
//! watermark; an event far in the future moves the watermark and closes every window
//! behind it.
//!
//! # Checkpoints
//! The windowed operators' state is not a function of their input collection (late updates
//! are ignored, final windows forgotten), so [`windowed_tallies_stateful`] and
//! [`windowed_distinct_stateful`] expose it as a collection of [`WindowState`] records,
//! for the engine to checkpoint, and restore from it:
//!
//! ```text
//!  run A:   epochs 0 ..= C ..= t            output_A(t)
//!  run B1:  epochs 0 ..= C  ──▶ state accumulated at C ──┐ checkpoint
//!  run B2:  restored (all at C) ◀───────────────────────┘ + epochs C+1 ..= t
//!           output_A(C) + changes of B2's output in (C, t] == output_A(t)
//!           restored + changes of B2's state up to t     == state_A(t)
//! ```
//!
//! - **State.** `state`, accumulated up to a completed time `t`, is the operators'
//!   state after `t` over all workers: each held update `Held(u)` with its count (for
//!   tallies `(key, (bucket, marked))`, for distinct counts `((key, last bucket of the
//!   window), value)`: the updates accepted while their windows were open, minus what was
//!   forgotten once they were all final) and, with a retention, one `Watermark(w)` with
//!   count 1 once there is a watermark. The changes are emitted at the time they happen:
//!   the accepted updates themselves, the retraction of what is forgotten and the
//!   watermark's moves (by worker 0 alone: all workers hold the same watermark), so they
//!   cost about as much as the input, never a pass over the whole state. The plain
//!   [`windowed_tallies`] and [`windowed_distinct`] emit no state.
//! - **Restore.** `restored` holds the records of an earlier run's accumulated `state`,
//!   all at one time `C` (the restored epoch), possibly written by another number of
//!   workers: held records go to the worker owning their key, the watermark to every
//!   worker. They are installed silently when `C` completes: no output (the caller restores
//!   the output separately, e.g. as a checkpointed collection), nothing counted as late,
//!   no horizon applied. `events` must then hold only updates after `C`.
//! - **The caller adds `restored` to `state`.** The operator does not emit the restored
//!   records again: `state` carries only the changes since, and the state to checkpoint is
//!   `restored.concat(state)` (what a job hands the engine to checkpoint).
//! - **Non-guarantees.** A restore must use the windows, `min_events` and retention of the
//!   run that wrote the state; a different one is not detected and gives outputs that
//!   match no uninterrupted run. Changes of `state` at a time need not be consolidated.
//!
//! # Guarantees and non-guarantees
//! Outputs are exact and deterministic (integer arithmetic; multipliers have a resolution
//! of 0.001) and independent of the number of workers. `windowed_tallies` holds, per key,
//! its non-empty buckets; `windowed_distinct` a count per value per `(key, window)`;
//! `baseline_surges` and `merge_windows` are differential reductions that keep
//! `history + 1` entries per window counted and one per alerting window, forever: feed them
//! thresholded or global windows, not one per user. The windowed operators are
//! hand-written timely operators over hash maps (decision D15): their state lives outside
//! differential's arrangements.

use std::cmp::Ordering;
use std::hash::Hash;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

mod windowed;

pub use windowed::{
    windowed_distinct, windowed_distinct_stateful, windowed_tallies, windowed_tallies_stateful,
    DistinctState, LateCallback, Retention, Stateful, Tally, TallyState, WindowState,
};

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
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
    use std::sync::Arc;

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

    /// An update of `(key, payload)` at an epoch, as the runner takes them.
    type Update<P> = ((u8, P), u64, isize);

    /// The horizon of `epoch` in the sequential oracles: `retention` behind the largest
    /// time of any update of an earlier epoch.
    fn oracle_horizon<D>(
        updates: &[(D, u64, isize)],
        time: impl Fn(&D) -> i64,
        retention: Option<i64>,
        epoch: u64,
    ) -> Option<i64> {
        let watermark = updates
            .iter()
            .filter(|u| u.1 < epoch)
            .map(|u| time(&u.0))
            .max();
        Some(watermark? - retention?)
    }

    /// Plain sequential, epoch by epoch: each update of `(key, (time, marked))` counts in
    /// the windows containing its time that are still open at its epoch; the windows with
    /// at least `min` events at `epoch`.
    fn oracle_tallies(
        updates: &[Update<(i64, bool)>],
        w: Windows,
        min: u64,
        retention: Option<i64>,
        epoch: u64,
    ) -> BTreeMap<((u8, Window), Tally), isize> {
        let mut sums: BTreeMap<(u8, Window), (isize, isize)> = BTreeMap::new();
        for ((k, (t, marked)), e, d) in updates.iter().filter(|u| u.1 <= epoch) {
            let horizon = oracle_horizon(updates, |x| x.1 .0, retention, *e);
            for win in w.containing(*t) {
                if horizon.is_some_and(|h| win.end <= h) {
                    continue;
                }
                let sum = sums.entry((*k, win)).or_default();
                sum.0 += d;
                if *marked {
                    sum.1 += d;
                }
            }
        }
        sums.into_iter()
            .filter(|(_, (n, _))| *n >= min as isize)
            .map(|(kw, (n, m))| {
                let tally = Tally {
                    events: n as u64,
                    marked: m as u64,
                };
                ((kw, tally), 1)
            })
            .collect()
    }

    /// Random `(key, (time, marked))` whose times drift forward as the stream goes on
    /// (about 30 per epoch of 6) with up to 60 of lateness, so a retention of 25 closes
    /// windows while late events still arrive for them.
    fn drifting_updates(seed: u64, n: usize) -> Vec<Update<(i64, bool)>> {
        let mut rng = Rng::new(seed);
        let mut fresh = 0i64;
        random_updates(&mut rng, n, 6, |r| {
            fresh += 1;
            let t = fresh * 180 / n as i64 - r.below(60) as i64;
            (r.below(4) as u8, (t, r.below(5) == 0))
        })
    }

    #[test]
    fn tallies_match_oracle_with_retractions_and_retention_on_1_and_3_workers() {
        for seed in 0..4u64 {
            let updates = drifting_updates(seed, 500);
            for (min, retention) in [(1, None), (4, None), (1, Some(25)), (3, Some(0))] {
                for workers in [1, 3] {
                    let late = Arc::new(AtomicU64::new(0));
                    let seen = Arc::clone(&late);
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        let seen = Arc::clone(&seen);
                        let report: LateCallback = Box::new(move |n| {
                            seen.fetch_add(n, AtomicOrdering::Relaxed);
                        });
                        windowed_tallies(
                            c,
                            W,
                            min,
                            retention.map(|ms| Retention { ms }),
                            Some(report),
                        )
                    });
                    for epoch in 0..6u64 {
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            oracle_tallies(&updates, W, min, retention, epoch),
                            "seed {seed} workers {workers} min {min} retention {retention:?} epoch {epoch}"
                        );
                    }
                    // Some updates did fall only in final windows, and were reported.
                    let expect_late = retention.is_some();
                    assert_eq!(late.load(AtomicOrdering::Relaxed) > 0, expect_late);
                }
            }
        }
    }

    #[test]
    fn tally_marks_find_unmarked_bursts() {
        // A view-only burst is a window with enough events and none marked: the oracle's
        // tallies give them, and the operator's must agree window for window.
        let updates = drifting_updates(9, 400);
        let out = run_on_workers(3, updates.clone(), |c| {
            windowed_tallies(c, W, 4, None, None).filter(|(_, t)| t.marked == 0)
        });
        let expected: BTreeMap<_, _> = oracle_tallies(&updates, W, 4, None, 5)
            .into_iter()
            .filter(|((_, t), _)| t.marked == 0)
            .collect();
        assert!(!expected.is_empty(), "the test data should burst somewhere");
        assert_eq!(accumulate_at(&out, 5), expected);
    }

    #[test]
    fn distinct_match_oracle_with_retractions_and_retention_on_1_and_3_workers() {
        for seed in 0..4u64 {
            let updates: Vec<Update<(i64, u8)>> = drifting_updates(seed, 500)
                .into_iter()
                .map(|((k, (t, m)), e, d)| ((k, (t, u8::from(m) + (t.rem_euclid(3) as u8))), e, d))
                .collect();
            for retention in [None, Some(25)] {
                for workers in [1, 3] {
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        windowed_distinct(c, W, retention.map(|ms| Retention { ms }), None)
                    });
                    for epoch in 0..6u64 {
                        // Per window, each value's multiplicity over the updates it accepted.
                        let mut sets: BTreeMap<(u8, Window), BTreeMap<u8, isize>> = BTreeMap::new();
                        for ((k, (t, v)), e, d) in updates.iter().filter(|u| u.1 <= epoch) {
                            let horizon = oracle_horizon(&updates, |x| x.1 .0, retention, *e);
                            for win in W.containing(*t) {
                                if horizon.is_some_and(|h| win.end <= h) {
                                    continue;
                                }
                                *sets.entry((*k, win)).or_default().entry(*v).or_default() += d;
                            }
                        }
                        let expected: BTreeMap<((u8, Window), u64), isize> = sets
                            .into_iter()
                            .map(|(kw, s)| (kw, s.values().filter(|n| **n > 0).count() as u64))
                            .filter(|(_, n)| *n > 0)
                            .map(|x| (x, 1))
                            .collect();
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            expected,
                            "seed {seed} workers {workers} retention {retention:?} epoch {epoch}"
                        );
                    }
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
                        let counts =
                            windowed_tallies(c.map(|(k, t)| (k, (t, false))), w, 1, None, None);
                        baseline_surges(counts.map(|(kw, t)| (kw, t.events)), w, rule)
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
