//! Distinct counts per key.
//!
//! `distinct_count(pairs)` maps a collection of `(key, value)` to `(key, n)` where `n` is
//! the number of distinct `value`s whose accumulated multiplicity for `key` is positive.
//! Duplicates do not change `n`; a value leaves the count only when all its copies are
//! retracted. Keys with no values are absent (no zero rows).
//!
//! State: one arranged `(key, value)` per distinct pair (the `distinct`), plus one count per
//! key; it grows with distinct pairs, never with events.

use differential_dataflow::{ExchangeData, VecCollection};
use timely::progress::Timestamp;

use differential_dataflow::lattice::Lattice;

/// Per key, the number of distinct values present (see the module docs).
pub fn distinct_count<'s, T, K, V>(
    pairs: VecCollection<'s, T, (K, V), isize>,
) -> VecCollection<'s, T, (K, u64), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + std::hash::Hash,
    V: ExchangeData + std::hash::Hash,
{
    pairs
        .distinct()
        .map(|(k, _v)| k)
        .count()
        .map(|(k, n)| (k, n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::{BTreeMap, BTreeSet};

    fn oracle(input: &BTreeMap<(u8, u8), isize>) -> BTreeMap<(u8, u64), isize> {
        let mut sets: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        for ((k, v), d) in input {
            if *d > 0 {
                sets.entry(*k).or_default().insert(*v);
            }
        }
        sets.into_iter()
            .map(|(k, s)| ((k, s.len() as u64), 1))
            .collect()
    }

    #[test]
    fn matches_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let updates =
                random_updates(&mut rng, 600, 8, |r| (r.below(6) as u8, r.below(12) as u8));
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), distinct_count);
                for epoch in 0..=8u64 {
                    let expected = oracle(&accumulate_at(&updates, epoch));
                    let actual = accumulate_at(&out, epoch);
                    assert_eq!(
                        actual, expected,
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }
}
