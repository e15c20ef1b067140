//! Keyed additive aggregates: counters and sums per key, held as differential *differences*.
//!
//! [`sum_by_key`] maps each record to zero or more `(key, r)` contributions, where `r` is a
//! [`Semigroup`] such as a struct of counters, and outputs `(key, total)` for every key whose
//! accumulated total is not zero. The contributions are not records: they ride in the
//! difference slot of the collection (`explode`), so differential adds them up in place.
//!
//! ```text
//!  records ─explode─▶ (key) with diff r ─pre_aggregate─▶ per worker and epoch: one update per key
//!          ─exchange by key─▶ count: (key, Σ r) ─▶ (key, total) rows, diff +1 / -1
//! ```
//!
//! Semantics: the output at every time is `{ (k, Σ r over all contributions to k) }`, keys
//! whose total is zero (`IsZero`) omitted (no zero rows). A retracted record retracts its
//! contributions (`r` times -1), so totals follow insertions, duplicates and retractions
//! exactly. A total that changes produces a retraction of the old row and the new row.
//!
//! State: the arrangement holds, per key, one accumulated difference per distinct time not
//! yet compacted; after compaction, **one total per key**: O(keys), never O(events). The
//! worker-local [`pre_aggregate`] in front bounds the exchanged updates by keys per epoch.
//!
//! Non-guarantees: totals are plain sums; a semigroup whose addition is not commutative or
//! whose `is_zero` is not "the identity" gives unspecified results. Integer overflow of a
//! counter is not checked (counters are `i64`).
//!
//! [`counters!`](crate::counters) declares a struct of named `i64` counters with every
//! trait `sum_by_key` needs.

use std::hash::Hash;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::local::pre_aggregate;

/// Per key, the sum of the contributions `explode` makes (see the module docs).
pub fn sum_by_key<'s, T, D, K, R, I, F>(
    records: VecCollection<'s, T, D, isize>,
    name: &str,
    explode: F,
) -> VecCollection<'s, T, (K, R), isize>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    D: Clone + 'static,
    K: ExchangeData + Hash,
    R: ExchangeData + Semigroup + Multiply<isize, Output = R>,
    I: IntoIterator<Item = (K, R)>,
    F: FnMut(D) -> I + 'static,
{
    totals(contributions(records, name, explode))
}

/// The first half of [`sum_by_key`]: each record's contributions as the differences of its
/// keys, consolidated per worker and epoch. Its contents are the totals (one record per key,
/// the total in the difference), which makes it the collection to checkpoint.
pub fn contributions<'s, T, D, K, R, I, F>(
    records: VecCollection<'s, T, D, isize>,
    name: &str,
    explode: F,
) -> VecCollection<'s, T, K, R>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    D: Clone + 'static,
    K: ExchangeData + Hash,
    R: ExchangeData + Semigroup + Multiply<isize, Output = R>,
    I: IntoIterator<Item = (K, R)>,
    F: FnMut(D) -> I + 'static,
{
    pre_aggregate(records.explode(explode), name)
}

/// The second half of [`sum_by_key`]: `(key, total)` rows of [`contributions`].
pub fn totals<'s, T, K, R>(
    contributions: VecCollection<'s, T, K, R>,
) -> VecCollection<'s, T, (K, R), isize>
where
    T: Timestamp + Lattice + TotalOrder,
    K: ExchangeData + Hash,
    R: ExchangeData + Semigroup,
{
    contributions.count()
}

/// Declares a struct of named `i64` counters that is a differential difference type: it
/// adds field by field, is zero when every field is, negates, and multiplies by an `isize`
/// multiplicity, so it can be the `R` of [`sum_by_key`]. Also derives `Default` (all
/// zeros), ordering and hashing, and implements serde as an array of the fields in
/// declaration order (compact on the wire; at most 32 fields).
///
/// ```
/// cap_operators::counters! {
///     /// Activity of one product.
///     pub struct Activity {
///         /// Page views.
///         pub views,
///         /// Purchases.
///         pub purchases,
///     }
/// }
/// use differential_dataflow::difference::{IsZero, Semigroup};
/// let mut a = Activity { views: 2, purchases: 0 };
/// a.plus_equals(&Activity { views: -2, purchases: 0 });
/// assert!(a.is_zero());
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: i64, )*
        }

        impl $crate::aggregate::reexport::serde::Serialize for $name {
            fn serialize<S>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error>
            where
                S: $crate::aggregate::reexport::serde::Serializer,
            {
                $crate::aggregate::reexport::serde::Serialize::serialize(
                    &[$( self.$field ),*],
                    s,
                )
            }
        }

        impl<'de> $crate::aggregate::reexport::serde::Deserialize<'de> for $name {
            fn deserialize<D>(d: D) -> ::std::result::Result<$name, D::Error>
            where
                D: $crate::aggregate::reexport::serde::Deserializer<'de>,
            {
                const FIELDS: usize = [$( stringify!($field) ),*].len();
                let [$( $field ),*] =
                    <[i64; FIELDS] as $crate::aggregate::reexport::serde::Deserialize>::deserialize(d)?;
                Ok($name { $( $field ),* })
            }
        }

        impl $crate::aggregate::reexport::IsZero for $name {
            #[inline]
            fn is_zero(&self) -> bool {
                true $( && self.$field == 0 )*
            }
        }

        impl $crate::aggregate::reexport::Semigroup for $name {
            #[inline]
            fn plus_equals(&mut self, rhs: &Self) {
                $( self.$field += rhs.$field; )*
            }
        }

        impl $crate::aggregate::reexport::Monoid for $name {
            #[inline]
            fn zero() -> Self {
                Self::default()
            }
        }

        impl $crate::aggregate::reexport::Abelian for $name {
            #[inline]
            fn negate(&mut self) {
                $( self.$field = -self.$field; )*
            }
        }

        impl $crate::aggregate::reexport::Multiply<isize> for $name {
            type Output = $name;
            #[inline]
            fn multiply(self, rhs: &isize) -> $name {
                let m = *rhs as i64;
                $name { $( $field: self.$field * m, )* }
            }
        }
    };
}

/// Re-exports the [`counters!`](crate::counters) macro expands to, so callers need not
/// depend on differential-dataflow by name.
#[doc(hidden)]
pub mod reexport {
    pub use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
    pub use serde;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use differential_dataflow::difference::IsZero;
    use std::collections::BTreeMap;

    crate::counters! {
        /// Test counters.
        pub struct Tally {
            /// Records seen.
            pub n,
            /// Sum of values.
            pub sum,
            /// Records with an even value.
            pub even,
        }
    }

    fn tally(v: u8) -> Tally {
        Tally {
            n: 1,
            sum: i64::from(v) - 4, // negative values too: a sum may cancel to zero
            even: i64::from(v & 1 == 0),
        }
    }

    fn oracle(input: &BTreeMap<(u8, u8), isize>) -> BTreeMap<(u8, Tally), isize> {
        let mut totals: BTreeMap<u8, Tally> = BTreeMap::new();
        for ((k, v), m) in input {
            let t = totals.entry(*k).or_default();
            let c = tally(*v);
            t.n += c.n * *m as i64;
            t.sum += c.sum * *m as i64;
            t.even += c.even * *m as i64;
        }
        totals
            .into_iter()
            .filter(|(_, t)| !t.is_zero())
            .map(|(k, t)| ((k, t), 1))
            .collect()
    }

    #[test]
    fn sums_match_oracle_with_retractions_on_1_and_3_workers() {
        for seed in 0..6u64 {
            let mut rng = Rng::new(seed);
            let updates =
                random_updates(&mut rng, 700, 8, |r| (r.below(7) as u8, r.below(9) as u8));
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| {
                    sum_by_key(c, "test", |(k, v)| Some((k, tally(v))))
                });
                for epoch in 0..8u64 {
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        oracle(&accumulate_at(&updates, epoch)),
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_record_may_contribute_to_several_keys_or_none() {
        let updates = vec![((1u8, 3u8), 0u64, 1isize), ((2, 0), 0, 1), ((1, 3), 1, -1)];
        let out = run_on_workers(2, updates, |c| {
            // value 0 contributes nothing; others count under their key and under key 100
            sum_by_key(c, "fanout", |(k, v)| {
                (v > 0)
                    .then(|| [(k, tally(v)), (100, tally(v))])
                    .into_iter()
                    .flatten()
            })
        });
        let at0 = accumulate_at(&out, 0);
        assert_eq!(
            at0.keys().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![1, 100]
        );
        assert!(accumulate_at(&out, 1).is_empty());
    }

    #[test]
    fn counters_are_a_group() {
        use differential_dataflow::difference::{Abelian, Monoid};
        let a = Tally {
            n: 1,
            sum: 5,
            even: 0,
        };
        let mut b = a.multiply(&-1);
        assert_eq!(b.sum, -5);
        b.plus_equals(&a);
        assert!(b.is_zero());
        let mut c = a;
        c.negate();
        assert_eq!(c, a.multiply(&-1));
        assert!(Tally::zero().is_zero());
        assert!(!c.is_zero());
    }
}
