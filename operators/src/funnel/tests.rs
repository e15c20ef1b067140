//! Funnel tests: the per-unit search against brute-force enumeration of every path, the
//! dataflow operators against sequential oracles on 1 and 3 workers with retractions, and
//! worked examples of each rule in the module docs.

use super::*;
use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
use std::collections::BTreeMap;

type B = Option<u8>;
type Ev = FunnelEvent<B>;

fn ev(time: i64, steps: u32, exclusions: u32, breakdown: B) -> Ev {
    FunnelEvent {
        time,
        steps,
        exclusions,
        breakdown,
    }
}

/// A plain event on step `step` (1-based) with no breakdown.
fn step(time: i64, step: u8) -> Ev {
    ev(time, step_bit(step - 1), 0, None)
}

/// An event that matches no step, only the exclusions in `mask`.
fn excluded(time: i64, mask: u32) -> Ev {
    ev(time, 0, mask, None)
}

fn reached(spec: &FunnelSpec, events: &[Ev]) -> (u8, Vec<i64>) {
    evaluate_unit(spec, events)
        .map(|u| (u.reached, u.step_times))
        .unwrap_or((0, Vec::new()))
}

// ---------------------------------------------------------------------------------------
// Brute force: every path enumerated, the module docs' rules applied literally.

fn brute_force(spec: &FunnelSpec, events: &[Ev]) -> Option<UnitFunnel<B>> {
    let mut evs = events.to_vec();
    evs.sort();
    evs.dedup();
    let first_time = evs.first()?.time;
    let n = usize::from(spec.steps());
    let within = |times: &[i64]| {
        let (lo, hi) = (times.iter().min(), times.iter().max());
        match (lo, hi, spec.window_ms()) {
            (Some(lo), Some(hi), Some(w)) => hi - lo <= w,
            _ => true,
        }
    };
    // Every path, as its sorted time vector.
    let mut paths: Vec<Vec<i64>> = Vec::new();
    match spec.order() {
        FunnelOrder::Ordered | FunnelOrder::Strict => {
            fn sequences(evs: &[Ev], n: usize, path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
                if !path.is_empty() {
                    out.push(path.clone());
                }
                if path.len() == n {
                    return;
                }
                for i in 0..evs.len() {
                    let ok = !path.contains(&i)
                        && evs[i].steps & (1u32 << path.len()) != 0
                        && path.last().is_none_or(|&p| evs[p].time <= evs[i].time);
                    if ok {
                        path.push(i);
                        sequences(evs, n, path, out);
                        path.pop();
                    }
                }
            }
            let mut seqs = Vec::new();
            sequences(&evs, n, &mut Vec::new(), &mut seqs);
            for p in seqs {
                let times: Vec<i64> = p.iter().map(|&i| evs[i].time).collect();
                if !within(&times) {
                    continue;
                }
                if spec.order() == FunnelOrder::Strict {
                    let (t1, tk) = (times[0], times[times.len() - 1]);
                    let broken = (0..evs.len())
                        .any(|i| !p.contains(&i) && t1 < evs[i].time && evs[i].time < tk);
                    if broken {
                        continue;
                    }
                }
                paths.push(times);
            }
        }
        FunnelOrder::Unordered => {
            // Every subset of events that can take distinct steps.
            fn assignable(evs: &[&Ev], used: u32, n: usize) -> bool {
                let Some((first, rest)) = evs.split_first() else {
                    return true;
                };
                (0..n).any(|st| {
                    used & (1 << st) == 0
                        && first.steps & (1u32 << st) != 0
                        && assignable(rest, used | (1 << st), n)
                })
            }
            for subset in 1u32..(1 << evs.len()) {
                let chosen: Vec<&Ev> = (0..evs.len())
                    .filter(|i| subset & (1 << i) != 0)
                    .map(|i| &evs[i])
                    .collect();
                if chosen.len() > n {
                    continue;
                }
                let mut times: Vec<i64> = chosen.iter().map(|e| e.time).collect();
                times.sort();
                if within(&times) && assignable(&chosen, 0, n) {
                    paths.push(times);
                }
            }
        }
    }
    let longest = paths.iter().map(Vec::len).max()?;
    let best = paths.into_iter().filter(|p| p.len() == longest).min()?;
    let t1 = best[0];
    for (i, ex) in spec.exclusions().iter().enumerate() {
        let (a, b) = (usize::from(ex.from_step), usize::from(ex.to_step));
        if best.len() < a {
            continue;
        }
        let hit = evs.iter().any(|e| {
            e.exclusions & (1 << i) != 0
                && e.time > best[a - 1]
                && if best.len() >= b {
                    e.time < best[b - 1]
                } else {
                    spec.window_ms().is_none_or(|w| e.time <= t1 + w)
                }
        });
        if hit {
            return None;
        }
    }
    let breakdown = evs
        .iter()
        .filter(|e| {
            e.time == t1
                && match spec.order() {
                    FunnelOrder::Unordered => e.steps & spec.step_mask() != 0,
                    _ => e.steps & 1 != 0,
                }
        })
        .map(|e| e.breakdown)
        .min()?;
    Some(UnitFunnel {
        first_time,
        reached: longest as u8,
        step_times: best,
        breakdown,
    })
}

fn random_spec(r: &mut Rng) -> FunnelSpec {
    let steps = 1 + r.below(4) as u8;
    let order = match r.below(3) {
        0 => FunnelOrder::Ordered,
        1 => FunnelOrder::Strict,
        _ => FunnelOrder::Unordered,
    };
    let mut spec = FunnelSpec::new(steps).expect("steps").with_order(order);
    if r.below(2) == 0 {
        spec = spec.with_window_ms(r.below(5) as i64).expect("window");
    }
    if steps >= 2 {
        for _ in 0..r.below(3) {
            let from = 1 + r.below(u64::from(steps) - 1) as u8;
            let to = from + 1 + r.below(u64::from(steps - from)) as u8;
            spec = spec.with_exclusion(from, to).expect("exclusion");
        }
    }
    spec
}

fn random_event(r: &mut Rng, steps: u8) -> Ev {
    let all = (1u32 << steps) - 1;
    let mask = match r.below(20) {
        0..=2 => 0,
        3..=5 => (r.next_u64() as u32) & all,
        _ => step_bit(r.below(u64::from(steps)) as u8),
    };
    let exclusions = if r.below(4) == 0 {
        r.next_u64() as u32 & 3
    } else {
        0
    };
    let breakdown = match r.below(3) {
        0 => None,
        b => Some(b as u8),
    };
    ev(r.below(7) as i64, mask, exclusions, breakdown)
}

#[test]
fn evaluation_matches_brute_force_on_random_units() {
    let mut rng = Rng::new(7);
    let mut by_reach = [0usize; 5];
    for case in 0..30_000 {
        let spec = random_spec(&mut rng);
        let len = 1 + rng.below(7) as usize;
        let events: Vec<Ev> = (0..len)
            .map(|_| random_event(&mut rng, spec.steps()))
            .collect();
        let expected = brute_force(&spec, &events);
        let actual = evaluate_unit(&spec, &events);
        assert_eq!(actual, expected, "case {case}: {spec:?} over {events:?}");
        by_reach[expected.map(|u| usize::from(u.reached)).unwrap_or(0)] += 1;
    }
    // The generator exercises every outcome, not just the easy ones.
    assert!(by_reach.iter().all(|&n| n > 200), "{by_reach:?}");
}

/// The strict rule in the docs ("no other event strictly between t1 and tk") is the same as
/// "consecutive in some ordering by time, equal times in any order".
#[test]
fn strict_rule_equals_consecutive_in_some_time_ordering() {
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
    let mut rng = Rng::new(3);
    for _ in 0..400 {
        let n = 2 + rng.below(4) as usize;
        let times: Vec<i64> = (0..n).map(|_| rng.below(4) as i64).collect();
        // A random non-empty path: a subset in an order with non-decreasing times.
        let mut path: Vec<usize> = (0..n).filter(|_| rng.below(2) == 0).collect();
        if path.is_empty() {
            path.push(0);
        }
        path.sort_by_key(|&i| (times[i], rng.next_u64()));
        let (t1, tk) = (times[path[0]], times[path[path.len() - 1]]);
        let rule = (0..n).all(|i| path.contains(&i) || !(t1 < times[i] && times[i] < tk));
        let orderings = permutations(n)
            .into_iter()
            .filter(|p| p.windows(2).all(|w| times[w[0]] <= times[w[1]]));
        let consecutive = orderings
            .into_iter()
            .any(|p| p.windows(path.len()).any(|w| w == path.as_slice()));
        assert_eq!(rule, consecutive, "times {times:?} path {path:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Dataflow operators against oracles, with retractions, on 1 and 3 workers.

fn oracle_units(
    spec: &FunnelSpec,
    input: &BTreeMap<(u8, Ev), isize>,
) -> BTreeMap<(u8, UnitFunnel<B>), isize> {
    let mut units: BTreeMap<u8, Vec<Ev>> = BTreeMap::new();
    for ((u, e), d) in input {
        if *d > 0 {
            units.entry(*u).or_default().push(e.clone());
        }
    }
    units
        .into_iter()
        .filter_map(|(u, evs)| Some(((u, brute_force(spec, &evs)?), 1)))
        .collect()
}

fn specs() -> Vec<FunnelSpec> {
    let s = |n| FunnelSpec::new(n).expect("steps");
    vec![
        s(3),
        s(3).with_window_ms(4)
            .and_then(|f| f.with_exclusion(1, 2))
            .and_then(|f| f.with_exclusion(2, 3))
            .expect("spec"),
        s(3).with_order(FunnelOrder::Strict)
            .with_window_ms(5)
            .expect("spec"),
        s(3).with_order(FunnelOrder::Unordered)
            .with_window_ms(3)
            .expect("spec"),
    ]
}

#[test]
fn units_match_brute_force_oracle_on_1_and_3_workers() {
    for (n, spec) in specs().into_iter().enumerate() {
        for seed in 0..3u64 {
            let mut rng = Rng::new(100 * n as u64 + seed);
            let updates = random_updates(&mut rng, 400, 6, |r| {
                (r.below(40) as u8, random_event(r, 3))
            });
            for workers in [1, 3] {
                let s = spec.clone();
                let out = run_on_workers(workers, updates.clone(), move |c| funnel_units(c, &s));
                for epoch in 0..6u64 {
                    let expected = oracle_units(&spec, &accumulate_at(&updates, epoch));
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        expected,
                        "spec {n} seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }
}

fn bucket(u: &UnitFunnel<B>) -> i64 {
    u.first_time.div_euclid(3)
}

type StatsKey = (i64, B, u8);

fn oracle_stats(
    units: &BTreeMap<(u8, UnitFunnel<B>), isize>,
) -> BTreeMap<(StatsKey, FunnelStepStats), isize> {
    let mut reached: BTreeMap<StatsKey, u64> = BTreeMap::new();
    let mut durations: BTreeMap<StatsKey, Vec<i64>> = BTreeMap::new();
    for (_, u) in units.keys() {
        for s in 1..=u.reached {
            let key = (bucket(u), u.breakdown, s);
            *reached.entry(key).or_default() += 1;
            if s >= 2 {
                let i = usize::from(s);
                durations
                    .entry(key)
                    .or_default()
                    .push(u.step_times[i - 1] - u.step_times[i - 2]);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (&(b, v, s), &n) in &reached {
        let first_units = reached.get(&(b, v, 1)).copied().unwrap_or(0);
        let previous_units = if s == 1 {
            first_units
        } else {
            reached.get(&(b, v, s - 1)).copied().unwrap_or(0)
        };
        let median_ms = durations.get(&(b, v, s)).map(|d| {
            let mut d = d.clone();
            d.sort();
            d[d.len().div_ceil(2) - 1]
        });
        let counts = StepCounts {
            units: n,
            first_units,
            previous_units,
        };
        out.insert(((b, v, s), FunnelStepStats { counts, median_ms }), 1);
    }
    out
}

#[test]
fn step_stats_match_oracle_on_1_and_3_workers() {
    for (n, spec) in specs().into_iter().enumerate() {
        let mut rng = Rng::new(900 + n as u64);
        // Longer spans of time so buckets and durations vary.
        let updates = random_updates(&mut rng, 500, 6, |r| {
            let mut e = random_event(r, 3);
            e.time = r.below(12) as i64;
            (r.below(50) as u8, e)
        });
        for workers in [1, 3] {
            let s = spec.clone();
            let out = run_on_workers(workers, updates.clone(), move |c| {
                funnel_step_stats(funnel_units(c, &s), bucket)
            });
            for epoch in 0..6u64 {
                let units = oracle_units(&spec, &accumulate_at(&updates, epoch));
                assert_eq!(
                    accumulate_at(&out, epoch),
                    oracle_stats(&units),
                    "spec {n} workers {workers} epoch {epoch}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Worked examples of each rule.

#[test]
fn ordered_allows_equal_times_and_other_events_between() {
    let spec = FunnelSpec::new(3).expect("spec");
    let plain = ev(1, 0, 0, None);
    assert_eq!(
        reached(&spec, &[step(5, 1), step(5, 2), step(5, 3)]),
        (3, vec![5, 5, 5])
    );
    assert_eq!(
        reached(&spec, &[step(0, 1), plain, step(4, 2), step(9, 3)]),
        (3, vec![0, 4, 9])
    );
    // a cart before the only view does not count
    assert_eq!(
        reached(&spec, &[step(5, 1), step(4, 2), step(9, 3)]),
        (1, vec![5])
    );
    // first_time counts events that match no step
    let u = evaluate_unit(&spec, &[step(5, 1), ev(1, 0, 0, None)]).expect("unit");
    assert_eq!((u.first_time, u.reached), (1, 1));
    // a unit with no step-1 event is absent
    assert_eq!(evaluate_unit(&spec, &[step(1, 2), step(2, 3)]), None);
}

#[test]
fn duplicates_change_nothing() {
    let spec = FunnelSpec::new(2)
        .expect("spec")
        .with_order(FunnelOrder::Strict);
    let once = [step(0, 1), step(1, 2)];
    let twice = [step(0, 1), step(1, 2), step(1, 2), step(0, 1)];
    assert_eq!(evaluate_unit(&spec, &once), evaluate_unit(&spec, &twice));
}

#[test]
fn the_counted_path_is_the_earliest_of_the_longest() {
    let spec = FunnelSpec::new(2).expect("spec");
    // Re-entering does not re-anchor: time to convert is from the first view.
    let u = evaluate_unit(&spec, &[step(0, 1), step(5, 1), step(6, 2)]).expect("unit");
    assert_eq!(u.step_times, vec![0, 6]);
    assert_eq!(u.time_to_convert(2), Some(6));
    assert_eq!(u.time_to_convert(1), None);
}

#[test]
fn the_window_is_measured_from_the_path_entry_inclusive() {
    let spec = FunnelSpec::new(2)
        .expect("spec")
        .with_window_ms(10)
        .expect("window");
    assert_eq!(reached(&spec, &[step(0, 1), step(10, 2)]), (2, vec![0, 10]));
    assert_eq!(reached(&spec, &[step(0, 1), step(11, 2)]), (1, vec![0]));
    // A later entry converts within the window.
    assert_eq!(
        reached(&spec, &[step(0, 1), step(5, 1), step(12, 2)]),
        (2, vec![5, 12])
    );
}

#[test]
fn strict_breaks_on_any_other_event_between_steps() {
    let spec = FunnelSpec::new(2)
        .expect("spec")
        .with_order(FunnelOrder::Strict);
    let plain = |t| ev(t, 0, 0, None);
    assert_eq!(reached(&spec, &[step(0, 1), plain(1), step(2, 2)]).0, 1);
    // Other events at the entry or final time can be ordered outside the path.
    assert_eq!(
        reached(&spec, &[plain(0), step(0, 1), step(2, 2), plain(2)]).0,
        2
    );
    // A second view between: only the later view is adjacent to the cart.
    assert_eq!(
        reached(&spec, &[step(0, 1), step(1, 1), step(2, 2)]),
        (2, vec![1, 2])
    );
}

#[test]
fn strict_search_is_not_greedy_in_the_entry_group() {
    // Steps A B C D. At time 0: a (A), b (B); at 1: b' (B), c (C); at 2: d (D).
    // Greedy takes A and B at 0, then time 1 cannot be passed through (b' is left over);
    // taking only A at 0 lets time 1 give B and C, and D follows.
    let spec = FunnelSpec::new(4)
        .expect("spec")
        .with_order(FunnelOrder::Strict);
    let events = [
        step(0, 1),
        step(0, 2),
        ev(1, step_bit(1), 0, Some(1)),
        step(1, 3),
        step(2, 4),
    ];
    assert_eq!(reached(&spec, &events), (4, vec![0, 1, 1, 2]));
}

#[test]
fn events_matching_several_steps_serve_one_step_each() {
    let spec = FunnelSpec::new(2).expect("spec");
    let both = step_bit(0) | step_bit(1);
    // Same time: e (steps 1 and 2) and f (step 1). f takes step 1, e step 2.
    let events = [ev(3, both, 0, Some(1)), ev(3, step_bit(0), 0, Some(2))];
    assert_eq!(reached(&spec, &events), (2, vec![3, 3]));
    // One event alone cannot be both steps.
    assert_eq!(reached(&spec, &[ev(3, both, 0, None)]).0, 1);
}

#[test]
fn unordered_counts_distinct_steps_in_any_order() {
    let spec = FunnelSpec::new(3)
        .expect("spec")
        .with_order(FunnelOrder::Unordered);
    assert_eq!(
        reached(&spec, &[step(0, 3), step(1, 1), step(7, 2)]),
        (3, vec![0, 1, 7])
    );
    // Two events of the same step count once.
    assert_eq!(reached(&spec, &[step(0, 2), step(1, 2)]).0, 1);
    let windowed = spec.with_window_ms(3).expect("window");
    assert_eq!(
        reached(&windowed, &[step(0, 3), step(5, 1), step(7, 2)]),
        (2, vec![5, 7])
    );
}

#[test]
fn an_excluded_event_between_the_steps_removes_the_unit() {
    // view -> cart -> purchase, excluding remove_from_cart (bit 0) between cart and purchase.
    let spec = FunnelSpec::new(3)
        .expect("spec")
        .with_exclusion(2, 3)
        .expect("exclusion");
    let removal = |t| excluded(t, 1);
    assert_eq!(
        evaluate_unit(&spec, &[step(0, 1), step(1, 2), removal(2), step(3, 3)]),
        None
    );
    // Before the `from` step, or after the `to` step, it does not count.
    assert_eq!(
        reached(&spec, &[step(0, 1), removal(1), step(2, 2), step(3, 3)]).0,
        3
    );
    assert_eq!(
        reached(&spec, &[step(0, 1), step(1, 2), step(3, 3), removal(4)]).0,
        3
    );
    // At exactly a step's time it does not count (ties go to the unit).
    assert_eq!(
        reached(
            &spec,
            &[step(0, 1), step(1, 2), removal(1), step(3, 3), removal(3)]
        )
        .0,
        3
    );
    // A unit that stopped at the cart and then removed it is removed too...
    assert_eq!(
        evaluate_unit(&spec, &[step(0, 1), step(1, 2), removal(5)]),
        None
    );
    // ...unless the removal falls outside the window opened by the view.
    let windowed = spec.with_window_ms(4).expect("window");
    assert_eq!(
        reached(&windowed, &[step(0, 1), step(1, 2), removal(5)]).0,
        2
    );
    assert_eq!(
        evaluate_unit(&windowed, &[step(0, 1), step(1, 2), removal(4)]),
        None
    );
}

#[test]
fn exclusions_judge_the_counted_path_not_a_later_clean_one() {
    // search -> watch, excluding another search between them: searching twice before
    // watching removes the unit, even though the second search alone leads cleanly to watch.
    let spec = FunnelSpec::new(2)
        .expect("spec")
        .with_exclusion(1, 2)
        .expect("exclusion");
    let search = |t| ev(t, step_bit(0), 1, None);
    assert_eq!(
        evaluate_unit(&spec, &[search(0), search(1), step(2, 2)]),
        None
    );
    assert_eq!(reached(&spec, &[search(0), step(2, 2)]).0, 2);
}

#[test]
fn breakdown_is_the_first_touch_of_the_counted_path() {
    let spec = FunnelSpec::new(2)
        .expect("spec")
        .with_window_ms(10)
        .expect("window");
    // The view at 0 opens no converting path within 10 ms; the one at 20 does.
    let events = [
        ev(0, step_bit(0), 0, Some(1)),
        ev(20, step_bit(0), 0, Some(2)),
        ev(25, step_bit(1), 0, Some(3)),
    ];
    assert_eq!(
        evaluate_unit(&spec, &events).map(|u| u.breakdown),
        Some(Some(2))
    );
    // Ties at the entry time: the least value; None is a value of its own and least.
    let tie = [
        ev(0, step_bit(0), 0, Some(2)),
        ev(0, step_bit(0), 0, Some(1)),
    ];
    assert_eq!(
        evaluate_unit(&spec, &tie).map(|u| u.breakdown),
        Some(Some(1))
    );
    let null = [ev(0, step_bit(0), 0, Some(2)), ev(0, step_bit(0), 0, None)];
    assert_eq!(evaluate_unit(&spec, &null).map(|u| u.breakdown), Some(None));
}

#[test]
fn invalid_specs_are_rejected_with_the_reason() {
    assert_eq!(FunnelSpec::new(0), Err(FunnelSpecError::Steps(0)));
    assert_eq!(FunnelSpec::new(33), Err(FunnelSpecError::Steps(33)));
    assert!(FunnelSpec::new(32).is_ok());
    let three = FunnelSpec::new(3).expect("spec");
    assert_eq!(
        three.clone().with_window_ms(-1),
        Err(FunnelSpecError::Window(-1))
    );
    for (from, to) in [(0, 2), (2, 2), (3, 2), (1, 4)] {
        let err = three.clone().with_exclusion(from, to).expect_err("invalid");
        assert!(err.to_string().contains(&format!("{from}..{to}")), "{err}");
    }
}

#[test]
fn a_32_step_funnel_uses_every_bit() {
    let spec = FunnelSpec::new(32).expect("spec");
    let events: Vec<Ev> = (1..=32).map(|s| step(i64::from(s), s)).collect();
    assert_eq!(reached(&spec, &events).0, 32);
    // Bits above the step count are ignored.
    let spec = FunnelSpec::new(2).expect("spec");
    assert_eq!(reached(&spec, &[step(0, 1), step(1, 3)]).0, 1);
}
