//! Ordered conversion funnels per unit (session or user).
//!
//! Input: `(unit, (step, time))` for every event of a unit, where `step` is the 0-based
//! funnel step the event matches or [`NO_STEP`] when it matches none (it still counts as
//! an event of the unit, e.g. for the unit's first time), and `time` is event time in
//! milliseconds.
//!
//! [`ordered_funnel`] outputs, per unit with at least one event, a [`FunnelProgress`]:
//! - `first_time`: the least time of any event of the unit;
//! - `reached`: the largest `k` such that there are events of steps `0..k` at
//!   non-decreasing times `t0 <= t1 <= ... <= t(k-1)` (equal times allowed). Computed
//!   greedily (the earliest matching event of each step after the previous one), which is
//!   optimal: any later choice can only shrink the set of candidates for the next step.
//!
//! This is PostHog's "ordered" (non-strict) funnel with no conversion window, exclusions or
//! breakdowns; those options arrive with the full funnel operator.
//!
//! [`funnel_step_counts`] turns per-unit progress into `((bucket, step), units)`: for each
//! step `s` (1-based), the number of units in the bucket that reached at least `s`.
//! Units that reached no step are absent.
//!
//! State: the arranged input holds one entry per distinct `(unit, step, time)`; it is
//! bounded by each unit's events, and units are sessions, so it grows with sessions.

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

/// The step of an event that matches no funnel step.
pub const NO_STEP: u8 = u8::MAX;

/// How far a unit got in the funnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunnelProgress {
    /// Least event time of any event of the unit (ms).
    pub first_time: i64,
    /// Number of funnel steps reached in order (0 when the first step never happened).
    pub reached: u8,
}

/// The greedy ordered-funnel evaluation over one unit's events, sorted by `(step, time)`.
/// Exposed for oracles and batch checks.
pub fn evaluate_sorted(events: &[(u8, i64)], steps: u8) -> Option<FunnelProgress> {
    let first_time = events.iter().map(|(_, t)| *t).min()?;
    let mut reached = 0u8;
    let mut prev = i64::MIN;
    let mut i = 0usize;
    for step in 0..steps {
        while i < events.len() && events[i].0 < step {
            i += 1;
        }
        // events[i..] with step == `step` are sorted by time: take the first at or after prev.
        let mut found = None;
        while i < events.len() && events[i].0 == step {
            if events[i].1 >= prev {
                found = Some(events[i].1);
                break;
            }
            i += 1;
        }
        match found {
            Some(t) => {
                prev = t;
                reached += 1;
            }
            None => break,
        }
    }
    Some(FunnelProgress {
        first_time,
        reached,
    })
}

/// Per unit, the ordered funnel progress over `steps` steps (see the module docs).
pub fn ordered_funnel<'s, T, K>(
    events: VecCollection<'s, T, (K, (u8, i64)), isize>,
    steps: u8,
) -> VecCollection<'s, T, (K, FunnelProgress), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + std::hash::Hash,
{
    let mut scratch: Vec<(u8, i64)> = Vec::new();
    events.reduce_named("OrderedFunnel", move |_unit, input, output| {
        scratch.clear();
        scratch.extend(input.iter().filter(|(_, d)| *d > 0).map(|(v, _)| **v));
        if let Some(p) = evaluate_sorted(&scratch, steps) {
            output.push((p, 1));
        }
    })
}

/// Per `(bucket(first_time), step)`, the number of units that reached at least `step`
/// (1-based). Units that reached no step are absent.
pub fn funnel_step_counts<'s, T, K, B>(
    progress: VecCollection<'s, T, (K, FunnelProgress), isize>,
    bucket: fn(i64) -> B,
) -> VecCollection<'s, T, ((B, u8), u64), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData,
    B: ExchangeData + std::hash::Hash,
{
    progress
        .flat_map(move |(_unit, p)| {
            let b = bucket(p.first_time);
            (1..=p.reached).map(move |s| (b.clone(), s))
        })
        .count()
        .map(|(k, n)| (k, n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::BTreeMap;

    fn oracle_progress(
        input: &BTreeMap<(u16, (u8, i64)), isize>,
        steps: u8,
    ) -> BTreeMap<(u16, FunnelProgress), isize> {
        // Plain sequential: per unit, every ordered choice checked by brute force.
        let mut units: BTreeMap<u16, Vec<(u8, i64)>> = BTreeMap::new();
        for ((u, e), d) in input {
            if *d > 0 {
                units.entry(*u).or_default().push(*e);
            }
        }
        let mut out = BTreeMap::new();
        for (u, evs) in units {
            let first_time = evs.iter().map(|e| e.1).min().unwrap_or(0);
            // brute force: the largest k with a chain t0 <= .. <= t(k-1) over steps 0..k
            let mut reached = 0u8;
            for k in 1..=steps {
                if chain_exists(&evs, k) {
                    reached = k;
                } else {
                    break;
                }
            }
            out.insert(
                (
                    u,
                    FunnelProgress {
                        first_time,
                        reached,
                    },
                ),
                1,
            );
        }
        out
    }

    fn chain_exists(evs: &[(u8, i64)], k: u8) -> bool {
        fn go(evs: &[(u8, i64)], step: u8, k: u8, prev: i64) -> bool {
            if step == k {
                return true;
            }
            evs.iter()
                .any(|(s, t)| *s == step && *t >= prev && go(evs, step + 1, k, *t))
        }
        go(evs, 0, k, i64::MIN)
    }

    fn gen_event(r: &mut Rng) -> (u16, (u8, i64)) {
        let unit = r.below(25) as u16;
        let step = match r.below(5) {
            4 => NO_STEP,
            s => s as u8,
        };
        (unit, (step, r.below(20) as i64 - 5))
    }

    #[test]
    fn progress_matches_brute_force_oracle_on_1_and_3_workers() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 500, 6, gen_event);
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| ordered_funnel(c, 3));
                for epoch in 0..6u64 {
                    let expected = oracle_progress(&accumulate_at(&updates, epoch), 3);
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
    fn step_counts_match_oracle_on_1_and_3_workers() {
        fn bucket(t: i64) -> i64 {
            t.div_euclid(7)
        }
        for seed in 10..14u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 500, 6, gen_event);
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| {
                    funnel_step_counts(ordered_funnel(c, 3), bucket)
                });
                for epoch in 0..6u64 {
                    let mut expected: BTreeMap<((i64, u8), u64), isize> = BTreeMap::new();
                    let mut counts: BTreeMap<(i64, u8), u64> = BTreeMap::new();
                    for ((_, p), _) in oracle_progress(&accumulate_at(&updates, epoch), 3) {
                        for s in 1..=p.reached {
                            *counts.entry((bucket(p.first_time), s)).or_default() += 1;
                        }
                    }
                    for (k, n) in counts {
                        expected.insert((k, n), 1);
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
    fn equal_times_count_as_ordered() {
        let evs = [(0u8, 5i64), (1, 5), (2, 5)];
        assert_eq!(
            evaluate_sorted(&evs, 3),
            Some(FunnelProgress {
                first_time: 5,
                reached: 3
            })
        );
        // cart before the only view does not count
        let evs = [(0u8, 5i64), (1, 4), (2, 9)];
        assert_eq!(evaluate_sorted(&evs, 3).map(|p| p.reached), Some(1));
        // a NO_STEP event sets first_time
        let evs = [(0u8, 5i64), (NO_STEP, 1)];
        assert_eq!(
            evaluate_sorted(&evs, 3),
            Some(FunnelProgress {
                first_time: 1,
                reached: 1
            })
        );
    }
}
