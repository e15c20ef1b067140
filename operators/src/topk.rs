//! Top-k per group under a caller-given total order, with ranks.
//!
//! [`top_k`] maps a collection of `(group, value)` to `(group, (rank, value))` holding, for
//! each group, its `k` first values in ascending `(order(value), value)` with ranks
//! `1..=k`. Callers put "more is better" first with [`std::cmp::Reverse`] and the table's
//! own tie-breaks after it, e.g. `|c| (Reverse(c.views), Reverse(c.purchases), c.name.clone())`.
//! Values whose order keys are equal fall back to the value's own `Ord`, so the ranking is a
//! total order and the output is deterministic: it depends only on the accumulated input,
//! never on arrival order, batching or the number of workers.
//!
//! Multiplicities: a value present `m > 0` times is `m` rows and takes `m` consecutive
//! ranks (SQL `ROW_NUMBER()` over a bag). Values with a non-positive accumulated count are
//! absent. A group with fewer than `k` rows yields fewer ranks; a group with none, none.
//!
//! ```text
//!  (group, value) ─arrange by group─▶ reduce per group: select the k least by (order, value),
//!                                     sort them, number them 1..=k ─▶ (group, (rank, value))
//! ```
//!
//! State and work: the reduce arranges its whole input, one entry per distinct
//! `(group, value)`, and its output, `k` rows per group. A change to a group re-ranks that
//! group: O(n + k log k) for a group of n distinct values (a linear-time selection, then a
//! sort of the k selected), once per group and changed time, not per input update. This suits
//! the job's groups (hundreds of categories per hour or weekday).
//!
//! For groups too large to rescan on every change, [`top_k_hierarchical`] first takes the
//! top k within `fanout` hash buckets of each group, then the top k of those `fanout * k`
//! survivors: a change rescans one bucket (about n / fanout values) and the `fanout * k`
//! survivors, at the price of a second arrangement. Both give identical results (the k first
//! rows of a group are among the k first rows of their buckets).
//!
//! Non-guarantees: ranks are positions, not dense ranks of equal keys (equal order keys
//! get consecutive ranks, decided by the value's `Ord`); when one value moves, every rank
//! below it may change, so the output can churn by up to k rows per changed group.

use std::hash::{BuildHasher, Hash};

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use timely::progress::Timestamp;

/// Per group, its `k` first values by ascending `(order(value), value)`, numbered from 1
/// (see the module docs).
pub fn top_k<'s, T, G, V, O, F>(
    ranked: VecCollection<'s, T, (G, V), isize>,
    k: usize,
    order: F,
) -> VecCollection<'s, T, (G, (u32, V)), isize>
where
    T: Timestamp + Lattice,
    G: ExchangeData + Hash,
    V: ExchangeData,
    O: Ord + 'static,
    F: Fn(&V) -> O + 'static,
{
    top_k_named(ranked, "TopK", k, order)
}

/// [`top_k`] with a name for the operator (shown in logs and dataflow graphs).
pub fn top_k_named<'s, T, G, V, O, F>(
    ranked: VecCollection<'s, T, (G, V), isize>,
    name: &str,
    k: usize,
    order: F,
) -> VecCollection<'s, T, (G, (u32, V)), isize>
where
    T: Timestamp + Lattice,
    G: ExchangeData + Hash,
    V: ExchangeData,
    O: Ord + 'static,
    F: Fn(&V) -> O + 'static,
{
    let mut scratch: Vec<(O, usize)> = Vec::new();
    ranked.reduce_named(name, move |_group, input, output| {
        select_first(input, k, &order, &mut scratch);
        let mut rank = 0u32;
        'rows: for (_, i) in &scratch {
            let (value, copies) = input[*i];
            for _ in 0..copies {
                if rank as usize >= k {
                    break 'rows;
                }
                rank += 1;
                output.push(((rank, value.clone()), 1));
            }
        }
    })
}

/// [`top_k`] in two levels: the top `k` of each of `fanout` hash buckets per group, then
/// the top `k` of the survivors (see the module docs). `fanout <= 1` is plain [`top_k`].
pub fn top_k_hierarchical<'s, T, G, V, O, F>(
    ranked: VecCollection<'s, T, (G, V), isize>,
    k: usize,
    order: F,
    fanout: u64,
) -> VecCollection<'s, T, (G, (u32, V)), isize>
where
    T: Timestamp + Lattice,
    G: ExchangeData + Hash,
    V: ExchangeData + Hash,
    O: Ord + 'static,
    F: Fn(&V) -> O + Clone + 'static,
{
    if fanout <= 1 {
        return top_k_named(ranked, "TopK", k, order);
    }
    // A fixed-seed hash: every worker and process must put a value in the same bucket, so
    // that a retraction meets its insertion.
    let hasher = foldhash::fast::FixedState::default();
    let bucket_order = order.clone();
    let mut scratch: Vec<(O, usize)> = Vec::new();
    let survivors = ranked
        .map(move |(g, v)| ((g, hasher.hash_one(&v) % fanout), v))
        .reduce_named("TopKBuckets", move |_bucket, input, output| {
            select_first(input, k, &bucket_order, &mut scratch);
            let mut left = k as isize;
            for (_, i) in &scratch {
                if left <= 0 {
                    break;
                }
                let (value, copies) = input[*i];
                let kept = copies.min(left);
                left -= kept;
                output.push((value.clone(), kept));
            }
        })
        .map(|((g, _bucket), v)| (g, v));
    top_k_named(survivors, "TopK", k, order)
}

/// Fills `scratch` with `(order(value), index into input)` of the (at most) `k` first
/// distinct values present in `input`, sorted. `input` is sorted by value (differential's
/// reduce contract), so ordering by index breaks order-key ties by the value's `Ord`.
fn select_first<V, O: Ord>(
    input: &[(&V, isize)],
    k: usize,
    order: &impl Fn(&V) -> O,
    scratch: &mut Vec<(O, usize)>,
) {
    scratch.clear();
    if k == 0 {
        return;
    }
    scratch.extend(
        input
            .iter()
            .enumerate()
            .filter(|(_, (_, copies))| *copies > 0)
            .map(|(i, (v, _))| (order(v), i)),
    );
    // Every present value is at least one row, so the k first rows are among the k first
    // distinct values: select them in linear time, then sort only those.
    if scratch.len() > k {
        scratch.select_nth_unstable(k - 1);
        scratch.truncate(k);
    }
    scratch.sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::cmp::Reverse;
    use std::collections::BTreeMap;

    /// A value: (score, name). Scores repeat often so ties are common.
    type Val = (u8, u8);

    fn by_score_desc(v: &Val) -> Reverse<u8> {
        Reverse(v.0)
    }

    /// Plain sequential: expand the bag, sort each group fully, number the first k.
    fn oracle(input: &BTreeMap<(u8, Val), isize>, k: usize) -> BTreeMap<(u8, (u32, Val)), isize> {
        let mut groups: BTreeMap<u8, Vec<Val>> = BTreeMap::new();
        for ((g, v), m) in input {
            for _ in 0..(*m).max(0) {
                groups.entry(*g).or_default().push(*v);
            }
        }
        let mut out = BTreeMap::new();
        for (g, mut rows) in groups {
            rows.sort_by_key(|v| (by_score_desc(v), *v));
            for (i, v) in rows.into_iter().take(k).enumerate() {
                out.insert((g, (i as u32 + 1, v)), 1);
            }
        }
        out
    }

    fn gen(r: &mut Rng) -> (u8, Val) {
        (r.below(5) as u8, (r.below(4) as u8, r.below(12) as u8))
    }

    #[test]
    fn matches_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 600, 8, gen);
            for k in [0usize, 1, 3, 50] {
                for workers in [1, 3] {
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        top_k(c, k, by_score_desc)
                    });
                    for epoch in 0..8u64 {
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            oracle(&accumulate_at(&updates, epoch), k),
                            "seed {seed} k {k} workers {workers} epoch {epoch}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn hierarchical_matches_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 20..26u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 600, 8, gen);
            for (k, fanout) in [(1usize, 4u64), (3, 3), (3, 1), (7, 16)] {
                for workers in [1, 3] {
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        top_k_hierarchical(c, k, by_score_desc, fanout)
                    });
                    for epoch in 0..8u64 {
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            oracle(&accumulate_at(&updates, epoch), k),
                            "seed {seed} k {k} fanout {fanout} workers {workers} epoch {epoch}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn duplicates_take_consecutive_ranks_and_ties_fall_back_to_the_value() {
        // group 0: (5, 1) twice, (5, 0) once, (9, 2) once; by score descending.
        let updates = vec![
            ((0u8, (5u8, 1u8)), 0u64, 1isize),
            ((0, (5, 1)), 0, 1),
            ((0, (5, 0)), 0, 1),
            ((0, (9, 2)), 0, 1),
        ];
        let out = run_on_workers(1, updates, |c| top_k(c, 3, by_score_desc));
        let ranks: Vec<(u32, Val)> = accumulate_at(&out, 0)
            .into_keys()
            .map(|(_, rv)| rv)
            .collect();
        assert_eq!(ranks, vec![(1, (9, 2)), (2, (5, 0)), (3, (5, 1))]);
    }
}
