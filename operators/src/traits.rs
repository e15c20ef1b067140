//! Per-key traits: the building blocks of customer profiles.
//!
//! Each operator maps a collection of per-event facts about a key (a user) to one row per
//! key, maintained incrementally under insertions *and* retractions. They differ in what
//! state they need, which is the point of having several:
//!
//! | operator | output per key | state |
//! |---|---|---|
//! | [`sum_by_key`] | the sum of additive values (a [`Semigroup`] difference) | O(keys) |
//! | [`min_max_by_key`] | least and greatest value | one entry per distinct `(key, value)` |
//! | [`count_distinct_by_key`] | number of distinct values | one entry per distinct `(key, value)` |
//! | [`top_k_by_count`] | the `k` most frequent values, ties by value ascending | one entry per distinct `(key, value)` |
//! | [`max_of`] | (no key) the greatest value of a whole collection | one entry per distinct value |
//! | [`combine_by_key`] | a function of the key's few current parts (e.g. the outputs above) | the parts, in a hash map |
//!
//! **Additive traits are algebra.** [`sum_by_key`] moves each fact into the *difference*
//! of its key (`explode`), so that differential accumulates it in place: the arrangement
//! holds one accumulated value per key, however many events arrive. A retraction is the
//! negated value. This is differential's `examples/monoid-bfs.rs` idea applied to counters.
//!
//! **Min/max, distinct and top-k are not.** A retraction of the current minimum needs the
//! next smallest value, so an exact minimum under retractions must keep every distinct value
//! (with its multiplicity); likewise for distinct counts and frequencies. These operators
//! are single `reduce`s over `(key, value)`: the reduce's input arrangement holds one
//! entry per distinct `(key, value)` pair, whose accumulated multiplicity *is* the value's
//! frequency, so no separate `distinct` or `count` is needed (which would arrange each pair
//! a second and third time). Duplicated facts cost nothing extra; state grows with the
//! distinct values a key has (a user's distinct products, sessions, categories, or event
//! times), never with the number of events beyond that.
//!
//! **Combining parts.** A profile row is a function of the outputs above, one *part* per
//! key from each. A `concat` + `reduce` would arrange every part a second time and the row a
//! third; [`combine_by_key`] keeps only each key's parts, in plain vectors in a hash map,
//! and recomputes the row from them (which it can do because epochs are totally ordered).
//!
//! Guarantees: after every epoch, each output equals the function applied to the
//! accumulated input (tests compare with sequential oracles on 1 and 3 workers, with
//! retractions). Keys whose input is empty (or, for [`sum_by_key`], whose sum is zero) are
//! absent. Non-guarantees: values with a negative accumulated multiplicity (which a correct
//! collection never has) are ignored rather than reported.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use foldhash::fast::FixedState;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::local::pre_aggregate;

/// Per key, the sum of the additive values `A` of its records (see the module docs).
///
/// `A` is a difference type: `plus_equals` adds, `is_zero` says the sum is empty, and
/// `multiply(&diff)` scales a value by a record's multiplicity (so a retraction subtracts).
/// Values are pre-aggregated per worker and epoch before they are exchanged. A key whose
/// sum is zero is absent. State: one accumulated `A` per key (plus one output row per key).
pub fn sum_by_key<'s, T, K, A>(
    values: VecCollection<'s, T, (K, A), isize>,
    name: &str,
) -> VecCollection<'s, T, (K, A), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    A: ExchangeData + Ord + Hash + Semigroup + Multiply<isize, Output = A>,
{
    // The same operator as `aggregate::sum_by_key`, for values already keyed.
    crate::aggregate::sum_by_key(values, name, |(k, a)| Some((k, a)))
}

/// Per key, the least and the greatest value present, `(key, (min, max))`.
///
/// Exact under retractions; state is one entry per distinct `(key, value)` (see the module
/// docs). For event times that is a user's distinct event times: at REES46's whole-second
/// resolution, close to the user's events, which is why a caller may prefer coarser values
/// when exact instants are not needed.
pub fn min_max_by_key<'s, T, K, V>(
    values: VecCollection<'s, T, (K, V), isize>,
) -> VecCollection<'s, T, (K, (V, V)), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    values.reduce_named("MinMaxByKey", |_key, input, output| {
        // `input` is sorted by value.
        let mut present = input.iter().filter(|(_, d)| *d > 0);
        if let Some((min, _)) = present.next() {
            let max = present.next_back().map(|(v, _)| *v).unwrap_or(*min);
            output.push((((*min).clone(), max.clone()), 1));
        }
    })
}

/// Per key, the number of distinct values present, `(key, n)` with `n >= 1`.
///
/// Duplicates do not change `n`; a value leaves the count when all its copies are
/// retracted. State: one entry per distinct `(key, value)` and one per key. Compared with
/// [`crate::distinct::distinct_count`] (a `distinct` then a `count`), it arranges each pair
/// once instead of twice, at the price of re-reading a key's values when the key changes.
pub fn count_distinct_by_key<'s, T, K, V>(
    values: VecCollection<'s, T, (K, V), isize>,
) -> VecCollection<'s, T, (K, u64), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    values.reduce_named("CountDistinctByKey", |_key, input, output| {
        let n = input.iter().filter(|(_, d)| *d > 0).count() as u64;
        if n > 0 {
            output.push((n, 1));
        }
    })
}

/// A value's place among its key's most frequent values.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Ranked<V> {
    /// 1-based rank: 1 is the most frequent.
    pub rank: u32,
    /// The value.
    pub value: V,
    /// How many records of the key carry the value.
    pub count: u64,
}

/// Per key, its `k` most frequent values: `(key, Ranked { rank, value, count })` for ranks
/// `1..=min(k, distinct values)`. Ties in frequency go to the smaller value (`Ord`), so the
/// ranking is a function of the accumulated input alone.
///
/// Frequency counts records: duplicates count twice. State: one entry per distinct
/// `(key, value)`, whose multiplicity is the frequency, and `k` output rows per key.
pub fn top_k_by_count<'s, T, K, V>(
    values: VecCollection<'s, T, (K, V), isize>,
    k: usize,
) -> VecCollection<'s, T, (K, Ranked<V>), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + Hash,
    V: ExchangeData,
{
    let mut scratch: Vec<(u64, usize)> = Vec::new();
    values.reduce_named("TopKByCount", move |_key, input, output| {
        scratch.clear();
        // (count, index into `input`, which is sorted by value ascending)
        scratch.extend(
            input
                .iter()
                .enumerate()
                .filter(|(_, (_, d))| *d > 0)
                .map(|(i, (_, d))| (*d as u64, i)),
        );
        // Most frequent first; equal counts keep value order (smaller value first).
        let by_rank = |a: &(u64, usize), b: &(u64, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if scratch.len() > k && k > 0 {
            scratch.select_nth_unstable_by(k - 1, by_rank);
            scratch.truncate(k);
        }
        scratch.sort_unstable_by(by_rank);
        for (rank, (count, i)) in scratch.iter().take(k).enumerate() {
            let value = (*input[*i].0).clone();
            output.push((
                Ranked {
                    rank: rank as u32 + 1,
                    value,
                    count: *count,
                },
                1,
            ));
        }
    })
}

/// The greatest value present in `values`, as a collection of at most one record.
///
/// Values are pre-aggregated per worker and epoch, then gathered on one worker, which keeps
/// one entry per distinct value (with its multiplicity) and re-reads them when any changes.
/// Feed it coarse values (days, not milliseconds) so that this stays small. Empty when the
/// input is empty. Exact under retractions.
pub fn max_of<'s, T, V>(values: VecCollection<'s, T, V, isize>) -> VecCollection<'s, T, V, isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    V: ExchangeData + Hash,
{
    pre_aggregate(values.map(|v| ((), v)), "MaxOf")
        .reduce_named("MaxOf", |_unit, input, output| {
            if let Some((v, _)) = input.iter().rev().find(|(_, d)| *d > 0) {
                output.push(((*v).clone(), 1));
            }
        })
        .map(|((), v)| v)
}

/// Per key, `logic(key, parts)` over the key's current parts: `(key, output)` whenever
/// `logic` returns `Some`.
///
/// `parts` holds a few records per key (typically one per upstream trait operator);
/// `logic` receives them consolidated, sorted by value, with their multiplicities (all
/// non-zero), and must be a function of them alone. At each completed time the operator
/// applies that time's updates, recomputes `logic` for the keys they touched, and emits the
/// difference between the old and the new output, so the result is at every epoch exactly
/// `logic` over the accumulated parts, like a `reduce`.
///
/// Unlike `reduce`, which arranges its input and its output (with times and offsets), the
/// state is one hash-map entry per key holding its parts in an exactly sized vector; the
/// previous output is recomputed from the previous parts rather than stored. This needs
/// totally ordered times (epochs), which is what makes "the previous parts" well defined.
/// Parts are routed by the key's hash, so all of a key's parts meet on one worker.
pub fn combine_by_key<'s, T, K, P, O, L>(
    parts: VecCollection<'s, T, (K, P), isize>,
    name: &str,
    mut logic: L,
) -> VecCollection<'s, T, (K, O), isize>
where
    T: Timestamp + TotalOrder,
    K: ExchangeData + Hash,
    P: ExchangeData,
    O: ExchangeData,
    L: FnMut(&K, &[(P, isize)]) -> Option<O> + 'static,
{
    type Pending<T, K, P> = BTreeMap<T, (Capability<T>, Vec<(K, P, isize)>)>;
    let mut pending: Pending<T, K, P> = BTreeMap::new();
    let mut state: HashMap<K, Vec<(P, isize)>, FixedState> =
        HashMap::with_hasher(FixedState::default());
    let mut old: HashMap<K, Option<O>, FixedState> = HashMap::with_hasher(FixedState::default());
    let pact = Exchange::new(|update: &((K, P), T, isize)| update.0 .0.hashed());
    parts
        .inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<((K, O), T, isize)>>, _, _, _>(
            pact,
            &format!("CombineByKey({name})"),
            move |_cap, _info| {
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for ((k, p), t, r) in data.drain(..) {
                            let entry = match pending.get_mut(&t) {
                                Some(e) => e,
                                None => {
                                    let Some(c) = cap.retain_least(0) else {
                                        continue;
                                    };
                                    let c = c.delayed(&t);
                                    pending.entry(t.clone()).or_insert((c, Vec::new()))
                                }
                            };
                            entry.1.push((k, p, r));
                        }
                    });
                    while let Some(t) = pending.keys().next().cloned() {
                        if frontier.less_equal(&t) {
                            break;
                        }
                        let Some((cap, updates)) = pending.remove(&t) else {
                            break;
                        };
                        old.clear();
                        for (k, p, r) in updates {
                            let parts = state.entry(k.clone()).or_default();
                            if !old.contains_key(&k) {
                                let before = if parts.is_empty() {
                                    None
                                } else {
                                    logic(&k, parts)
                                };
                                old.insert(k.clone(), before);
                            }
                            match parts.binary_search_by(|(q, _)| q.cmp(&p)) {
                                Ok(i) => {
                                    parts[i].1 += r;
                                    if parts[i].1 == 0 {
                                        parts.remove(i);
                                    }
                                }
                                Err(i) => parts.insert(i, (p, r)),
                            }
                        }
                        let mut session = output.session(&cap);
                        for (k, before) in old.drain() {
                            let after = match state.get_mut(&k) {
                                Some(parts) if !parts.is_empty() => {
                                    parts.shrink_to_fit();
                                    logic(&k, parts)
                                }
                                _ => {
                                    state.remove(&k);
                                    None
                                }
                            };
                            if before != after {
                                if let Some(o) = before {
                                    session.give(((k.clone(), o), t.clone(), -1));
                                }
                                if let Some(o) = after {
                                    session.give(((k, o), t.clone(), 1));
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use differential_dataflow::difference::{IsZero, Monoid};
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// A test counter pair: (records, sum of values).
    #[derive(
        Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
    )]
    struct Tally {
        n: i64,
        sum: i64,
    }
    impl IsZero for Tally {
        fn is_zero(&self) -> bool {
            self.n == 0 && self.sum == 0
        }
    }
    impl Semigroup for Tally {
        fn plus_equals(&mut self, rhs: &Self) {
            self.n += rhs.n;
            self.sum += rhs.sum;
        }
    }
    impl Monoid for Tally {
        fn zero() -> Self {
            Tally::default()
        }
    }
    impl Multiply<isize> for Tally {
        type Output = Tally;
        fn multiply(self, rhs: &isize) -> Tally {
            let r = *rhs as i64;
            Tally {
                n: self.n * r,
                sum: self.sum * r,
            }
        }
    }

    type Input = BTreeMap<(u8, u8), isize>;

    /// Per key, the multiset of values: `key -> value -> multiplicity > 0`.
    fn groups(input: &Input) -> BTreeMap<u8, BTreeMap<u8, isize>> {
        let mut g: BTreeMap<u8, BTreeMap<u8, isize>> = BTreeMap::new();
        for ((k, v), d) in input {
            if *d > 0 {
                g.entry(*k).or_default().insert(*v, *d);
            }
        }
        g
    }

    fn check<O: Ord + Clone + std::fmt::Debug + differential_dataflow::ExchangeData>(
        name: &str,
        build: impl for<'s> Fn(VecCollection<'s, u64, (u8, u8)>) -> VecCollection<'s, u64, O>
            + Send
            + Sync
            + Copy
            + 'static,
        oracle: impl Fn(&Input) -> BTreeMap<O, isize>,
    ) {
        for seed in 0..5u64 {
            let mut rng = Rng::new(seed);
            // Few keys and values, so that values repeat, duplicates pile up and extremes
            // are retracted.
            let updates =
                random_updates(&mut rng, 500, 7, |r| (r.below(7) as u8, r.below(9) as u8));
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), build);
                for epoch in 0..7u64 {
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        oracle(&accumulate_at(&updates, epoch)),
                        "{name}: seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn sum_by_key_matches_oracle_with_retractions_on_1_and_3_workers() {
        check(
            "sum_by_key",
            |c| {
                sum_by_key(
                    c.map(|(k, v)| {
                        (
                            k,
                            Tally {
                                n: 1,
                                sum: i64::from(v),
                            },
                        )
                    }),
                    "test",
                )
            },
            |input| {
                let mut sums: BTreeMap<u8, Tally> = BTreeMap::new();
                for ((k, v), d) in input {
                    let t = sums.entry(*k).or_default();
                    t.n += *d as i64;
                    t.sum += i64::from(*v) * *d as i64;
                }
                sums.into_iter()
                    .filter(|(_, t)| !t.is_zero())
                    .map(|kt| (kt, 1))
                    .collect()
            },
        );
    }

    #[test]
    fn sum_by_key_drops_keys_whose_sum_is_zero() {
        // One value 0 at key 1: the sum is (1, 0), not zero, so the key is present; a record
        // and its retraction leave nothing.
        let updates = vec![((1u8, 0u8), 0u64, 1isize), ((2, 5), 0, 1), ((2, 5), 1, -1)];
        let out = run_on_workers(2, updates, |c| {
            sum_by_key(
                c.map(|(k, v)| {
                    (
                        k,
                        Tally {
                            n: 1,
                            sum: i64::from(v),
                        },
                    )
                }),
                "test",
            )
        });
        let at1: Vec<_> = accumulate_at(&out, 1).into_keys().collect();
        assert_eq!(at1, vec![(1, Tally { n: 1, sum: 0 })]);
    }

    #[test]
    fn min_max_by_key_matches_oracle_with_retractions_on_1_and_3_workers() {
        check("min_max_by_key", min_max_by_key, |input| {
            groups(input)
                .into_iter()
                .filter_map(|(k, vs)| {
                    let min = *vs.keys().next()?;
                    let max = *vs.keys().next_back()?;
                    Some(((k, (min, max)), 1))
                })
                .collect()
        });
    }

    #[test]
    fn count_distinct_by_key_matches_oracle_with_retractions_on_1_and_3_workers() {
        check("count_distinct_by_key", count_distinct_by_key, |input| {
            groups(input)
                .into_iter()
                .map(|(k, vs)| ((k, vs.len() as u64), 1))
                .collect()
        });
    }

    #[test]
    fn top_k_by_count_matches_oracle_with_retractions_on_1_and_3_workers() {
        for k in [1usize, 3] {
            check(
                "top_k_by_count",
                move |c| top_k_by_count(c, k),
                |input| {
                    let mut out = BTreeMap::new();
                    for (key, vs) in groups(input) {
                        // Plain oracle: sort all (value, count) by count desc, value asc.
                        let mut all: Vec<(u8, u64)> =
                            vs.into_iter().map(|(v, d)| (v, d as u64)).collect();
                        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                        for (i, (value, count)) in all.into_iter().take(k).enumerate() {
                            let r = Ranked {
                                rank: i as u32 + 1,
                                value,
                                count,
                            };
                            out.insert((key, r), 1);
                        }
                    }
                    out
                },
            );
        }
    }

    #[test]
    fn top_k_ties_go_to_the_smaller_value() {
        let updates = vec![
            ((1u8, 9u8), 0u64, 1isize),
            ((1, 4), 0, 1),
            ((1, 7), 0, 1),
            ((1, 7), 0, 1),
            ((1, 4), 1, 1),
        ];
        let out = run_on_workers(1, updates, |c| top_k_by_count(c, 1));
        let top = |e| -> Vec<_> { accumulate_at(&out, e).into_keys().collect() };
        assert_eq!(
            top(0),
            vec![(
                1,
                Ranked {
                    rank: 1,
                    value: 7,
                    count: 2
                }
            )]
        );
        // 4 and 7 both have 2 now: the smaller wins.
        assert_eq!(
            top(1),
            vec![(
                1,
                Ranked {
                    rank: 1,
                    value: 4,
                    count: 2
                }
            )]
        );
    }

    #[test]
    fn max_of_matches_oracle_with_retractions_on_1_and_3_workers() {
        check(
            "max_of",
            |c| max_of(c.map(|(k, v)| u16::from(k) * 10 + u16::from(v))),
            |input| {
                let mut present: BTreeMap<u16, isize> = BTreeMap::new();
                for ((k, v), d) in input {
                    *present
                        .entry(u16::from(*k) * 10 + u16::from(*v))
                        .or_default() += *d;
                }
                present
                    .into_iter()
                    .filter(|(_, d)| *d > 0)
                    .map(|(v, _)| v)
                    .max()
                    .map(|m| (m, 1))
                    .into_iter()
                    .collect()
            },
        );
    }

    #[test]
    fn combine_by_key_matches_oracle_with_retractions_on_1_and_3_workers() {
        // logic: (number of distinct parts, sum of value * multiplicity), None when the sum
        // is 0 (so outputs also appear and disappear while parts remain).
        fn logic(_k: &u8, parts: &[(u8, isize)]) -> Option<(usize, i64)> {
            let sum: i64 = parts.iter().map(|(v, d)| i64::from(*v) * *d as i64).sum();
            (sum != 0).then_some((parts.len(), sum))
        }
        check(
            "combine_by_key",
            |c| combine_by_key(c, "test", logic),
            |input| {
                groups(input)
                    .into_iter()
                    .filter_map(|(k, vs)| {
                        let parts: Vec<(u8, isize)> = vs.into_iter().collect();
                        logic(&k, &parts).map(|o| ((k, o), 1))
                    })
                    .collect()
            },
        );
    }
}
