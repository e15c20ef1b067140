//! Item-item cosine similarity from user-item touches.
//!
//! Input: `(user, item)` touches, one update per event (duplicates and retractions allowed;
//! only whether a user touched an item matters). [`similar_items`] maintains, per item `a`,
//! its `top_k` most similar items:
//!
//! - users with more than `max_user_items` distinct items are left out entirely (bots);
//! - `n(x)` = distinct (kept) users who touched `x`;
//! - `co(a, b)` = distinct (kept) users who touched both `a` and `b`, for `a != b`;
//! - `score(a, b) = co / sqrt(n(a) n(b))`, only for pairs with `co >= 2`;
//! - per `a`, the `top_k` pairs by score descending, ties by `b` ascending, ranked `1..`.
//!
//! Scores are irrational, so they are never compared as floats: each output row carries the
//! exact integers ([`Cosine`]: `co`, `n(a)`, `n(b)`) and ranking compares
//! `co1² · n(b2)` with `co2² · n(b1)` in `u128` (the common `n(a)` cancels), so ties are
//! exact and the ranking is the same on any number of workers. [`Cosine::value`] is the
//! float for display (`sqrt(co² / (n(a) n(b)))` in IEEE `f64`: equal exact scores give equal
//! floats) and [`Cosine::fixed`] the fixed-point form recommendations add up.
//!
//! ```text
//!  touches (user, item)
//!    └─ reduce per user: distinct items, none when > max_user_items ──▶ kept (user, item)
//!         ├─ count per item ───────────────────────────────────────────▶ n(item) (arranged)
//!         └─ [items with n >= min_item_users] ─ arrange by user ─ self-join (a < b)
//!              ─ pre_aggregate ─ reduce per pair: co, kept when co >= 2 ──▶ co(a, b)
//!                   ─ both directions ─ join n(b) ─ reduce per a: top_k ─ join n(a) ──▶ output
//! ```
//!
//! Work and state. Pair generation costs `O(d(u)²)` for a user with `d(u)` items when they
//! first arrive, and `O(d(u))` per item a user adds later; the cap bounds it at
//! `max_user_items²/2` pairs per user (125 000 for 500). State, in entries after compaction:
//! the touches once per distinct `(user, item)` (three arrangements: per user, per item and
//! the pair join's), `n` once per item, every co-occurring pair `a < b` once in a key-only
//! arrangement (the dominant term: at most `Σ_u d(u)²/2`, far less when users share items),
//! and the pairs with `co >= 2` five times more (their `co`, then both directions before and
//! after joining `n(b)`). [`PairStats`] reports the pairs kept and an estimate of their
//! bytes as the collection changes. Measured on the generator's defaults: 2M events leave
//! 17.4M pairs, 2.9M of them with `co >= 2`.
//!
//! Memory budget: `min_item_users`. Items touched by fewer distinct users do not take part
//! in pair generation. The default, 2, is exact (a pair with `co >= 2` needs `n >= 2` on both
//! sides) and already drops every pair with a one-user item. Raising it shrinks the pair
//! state further but **breaks exactness**: pairs of an item with fewer users are missing
//! even when their `co >= 2`. Off (2) by default; 1 disables the pruning (no extra
//! arrangement, more pairs).
//!
//! Guarantees: after every epoch the output equals the definition above applied to the
//! accumulated input (checked against a brute-force oracle on 1 and 3 workers with
//! retractions). Non-guarantees: counts must stay below 2³² for the `u128` comparison to be
//! exact (they are counts of distinct users).

use std::cell::RefCell;
use std::cmp::Ordering;
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use crate::local::pre_aggregate;

/// Fixed-point scale of [`Cosine::fixed`]: `2^40`.
pub const FIXED_SCALE: f64 = (1u64 << 40) as f64;

/// How similar items are computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimilarityConfig {
    /// Users with more distinct items than this are left out (default 500).
    pub max_user_items: usize,
    /// Similar items kept per item (default 10).
    pub top_k: usize,
    /// Memory budget: items with fewer distinct users take no part in pair generation.
    /// 2 (default) is exact; more is not (see the module docs); 1 disables the pruning.
    pub min_item_users: u64,
}

impl Default for SimilarityConfig {
    fn default() -> Self {
        SimilarityConfig {
            max_user_items: 500,
            top_k: 10,
            min_item_users: 2,
        }
    }
}

/// The exact cosine of two items: `co / sqrt(n_item · n_similar)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cosine {
    /// Distinct users who touched both items.
    pub co: u64,
    /// Distinct users who touched the item.
    pub n_item: u64,
    /// Distinct users who touched the similar item.
    pub n_similar: u64,
}

impl Cosine {
    /// `sqrt(co² / (n_item · n_similar))` in `f64`. Both the numerator and the denominator
    /// are exact integers in `f64` (below 2⁵³), and IEEE division and square root are
    /// correctly rounded, so two cosines with equal exact values give equal floats.
    pub fn value(&self) -> f64 {
        let num = (self.co as f64) * (self.co as f64);
        let den = (self.n_item as f64) * (self.n_similar as f64);
        if den == 0.0 {
            0.0
        } else {
            (num / den).sqrt()
        }
    }

    /// [`Cosine::value`] rounded to 6 decimals (half away from zero), as printed.
    pub fn rounded(&self) -> f64 {
        (self.value() * 1e6).round() / 1e6
    }

    /// `round(value · 2^40)`: the fixed-point similarity that recommendation scores sum
    /// exactly (integers add associatively, so sums do not depend on order or workers).
    pub fn fixed(&self) -> i64 {
        (self.value() * FIXED_SCALE).round() as i64
    }

    /// Compares the exact values: `co1² · n1' · n2'` against `co2² · n1 · n2` in `u128`.
    pub fn cmp_exact(&self, other: &Cosine) -> Ordering {
        let lhs =
            sq(self.co).saturating_mul(u128::from(other.n_item) * u128::from(other.n_similar));
        let rhs = sq(other.co).saturating_mul(u128::from(self.n_item) * u128::from(self.n_similar));
        lhs.cmp(&rhs)
    }
}

fn sq(x: u64) -> u128 {
    u128::from(x) * u128::from(x)
}

/// One entry of an item's similar-items list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SimilarItem<I> {
    /// 1-based rank in the item's list.
    pub rank: u32,
    /// The similar item.
    pub item: I,
    /// The exact cosine.
    pub cosine: Cosine,
}

/// Net changes to the co-occurrence state, reported per worker as batches pass. Each field
/// is a delta; summed over all workers and batches they give the current totals.
///
/// `pairs()` (distinct co-occurring pairs `a < b`, the dominant state) is not observed
/// directly, which would need a second arrangement of every pair: it is derived exactly as
/// `candidates + occurrences - candidate_co`, since pairs with `co = 1` contribute 1 to the
/// occurrences and the others are the candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    /// `Σ co` over all pairs: the user-pair occurrences generated.
    pub occurrences: i64,
    /// Pairs with `co >= 2`.
    pub candidates: i64,
    /// `Σ co` over the pairs with `co >= 2`.
    pub candidate_co: i64,
}

impl PairStats {
    /// Adds a delta.
    pub fn add(&mut self, d: PairStats) {
        self.occurrences += d.occurrences;
        self.candidates += d.candidates;
        self.candidate_co += d.candidate_co;
    }

    /// Distinct co-occurring pairs `a < b` held in the co-occurrence arrangement.
    pub fn pairs(&self) -> i64 {
        self.candidates + self.occurrences - self.candidate_co
    }

    /// An estimate of the bytes the pair state holds after compaction, for items of
    /// `item_bytes` (`i`) bytes and 8-byte times and differences. Per pair, its entry in the
    /// key-only co-occurrence arrangement: key, offset and update, `2i + 24`. Per candidate
    /// pair (`co >= 2`) on top: its `co` output (`2i + 40`), its two directed entries waiting
    /// for `n(b)` (`2 · (2i + 32)`) and its two ranked entries with `n(b)` (`2 · (2i + 40)`),
    /// `10i + 184` in all. Not counted: the touches, allocator slack and batches not yet
    /// merged (the benchmark prints the process's measured growth beside it).
    pub fn estimated_bytes(&self, item_bytes: usize) -> i64 {
        let i = item_bytes as i64;
        self.pairs() * (2 * i + 24) + self.candidates * (10 * i + 184)
    }
}

/// Per user, their distinct items, none at all for users with more than `max_user_items`.
pub fn capped_user_items<'s, T, U, I>(
    touches: VecCollection<'s, T, (U, I)>,
    max_user_items: usize,
) -> VecCollection<'s, T, (U, I)>
where
    T: Timestamp + Lattice,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
{
    touches.reduce_named("CappedUserItems", move |_user, input, output| {
        let present = input.iter().filter(|(_, d)| *d > 0).count();
        if present <= max_user_items {
            for (item, d) in input {
                if *d > 0 {
                    output.push(((*item).clone(), 1isize));
                }
            }
        }
    })
}

/// Co-occurrence counts: `((a, b), co)` for `a < b` with `co >= min_co`, where `co` is the
/// number of users in `user_items` (distinct `(user, item)`) with both. `stats` receives
/// the changes to the pair state (see [`PairStats`]).
pub fn item_cooccurrence<'s, T, U, I>(
    user_items: VecCollection<'s, T, (U, I)>,
    min_co: u64,
    stats: impl FnMut(PairStats) + 'static,
) -> VecCollection<'s, T, ((I, I), u64)>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
{
    let stats = Rc::new(RefCell::new(stats));
    let occurrences = Rc::clone(&stats);
    let by_user = user_items.arrange_by_key_named("UserItemsByUser");
    let pairs = by_user.clone().join_core(by_user, |_user, a: &I, b: &I| {
        (a < b).then(|| (a.clone(), b.clone()))
    });
    // Users sharing a pair on one worker in one epoch send it once, with their count.
    let pairs = pre_aggregate(pairs, "item_pairs").inspect_batch(move |_t, batch| {
        let n: isize = batch.iter().map(|(_, _, d)| *d).sum();
        (occurrences.borrow_mut())(PairStats {
            occurrences: n as i64,
            ..PairStats::default()
        });
    });
    // As differential's `count`, over a key-only arrangement (no value layer per pair), but
    // emitting only the pairs with co >= min_co: the output holds the candidates, not all.
    pairs
        .arrange_by_self_named("ItemPairs")
        .reduce_abelian::<_, ValBuilder<(I, I), u64, T, isize>, ValSpine<(I, I), u64, T, isize>, _, _>(
            "Cooccurrence",
            move |_pair, input, output| {
                let co = input.first().map(|(_, d)| *d).unwrap_or(0);
                if co > 0 && co as u64 >= min_co {
                    output.push((co as u64, 1isize));
                }
            },
            |vec, key, upds| {
                vec.clear();
                vec.extend(upds.drain(..).map(|(v, t, r)| ((key.clone(), v), t, r)));
            },
        )
        .as_collection(|pair: &(I, I), co: &u64| (pair.clone(), *co))
        .inspect_batch(move |_t, batch| {
            let mut delta = PairStats::default();
            for ((_, co), _, d) in batch {
                delta.candidates += *d as i64;
                delta.candidate_co += *d as i64 * *co as i64;
            }
            (stats.borrow_mut())(delta);
        })
}

/// Per item, its `top_k` most similar items by exact cosine (see the module docs).
/// `stats` receives the changes to the pair state as they happen.
pub fn similar_items<'s, T, U, I>(
    touches: VecCollection<'s, T, (U, I)>,
    config: &SimilarityConfig,
    stats: impl FnMut(PairStats) + 'static,
) -> VecCollection<'s, T, (I, SimilarItem<I>)>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
{
    let top_k = config.top_k;
    let kept = capped_user_items(touches, config.max_user_items);
    let n = kept.clone().map(|(_user, item)| item).count();
    let n_by_item = n
        .clone()
        .map(|(item, n)| (item, n as u64))
        .arrange_by_key_named("ItemUsers");
    let pairing = if config.min_item_users > 1 {
        let min = config.min_item_users as isize;
        let shared = n.filter(move |(_, n)| *n >= min).map(|(item, _)| item);
        kept.map(|(user, item)| (item, user))
            .semijoin(shared)
            .map(|(item, user)| (user, item))
    } else {
        kept
    };
    let co = item_cooccurrence(pairing, 2, stats);
    co.flat_map(|((a, b), co)| [(b.clone(), (a.clone(), co)), (a, (b, co))])
        .join_core(
            n_by_item.clone(),
            |similar, (item, co): &(I, u64), n_similar: &u64| {
                Some((item.clone(), (similar.clone(), *co, *n_similar)))
            },
        )
        .reduce_named("TopSimilar", move |_item, input, output| {
            let mut cands: Vec<&(I, u64, u64)> = input
                .iter()
                .filter(|(_, d)| *d > 0)
                .map(|(c, _)| *c)
                .collect();
            // n(item) is common to every candidate: co² / n(b) orders them.
            cands.sort_by(|x, y| {
                let lhs = sq(y.1).saturating_mul(u128::from(x.2));
                let rhs = sq(x.1).saturating_mul(u128::from(y.2));
                lhs.cmp(&rhs).then_with(|| x.0.cmp(&y.0))
            });
            for (rank, (similar, co, n_similar)) in cands.into_iter().take(top_k).enumerate() {
                output.push(((rank as u32 + 1, similar.clone(), *co, *n_similar), 1isize));
            }
        })
        .join_core(
            n_by_item,
            |item, (rank, similar, co, n_similar): &(u32, I, u64, u64), n_item: &u64| {
                Some((
                    item.clone(),
                    SimilarItem {
                        rank: *rank,
                        item: similar.clone(),
                        cosine: Cosine {
                            co: *co,
                            n_item: *n_item,
                            n_similar: *n_similar,
                        },
                    },
                ))
            },
        )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    /// Brute force, straight from the definition.
    pub(crate) fn oracle(
        input: &BTreeMap<(u8, u8), isize>,
        max_user_items: usize,
        top_k: usize,
    ) -> BTreeMap<(u8, SimilarItem<u8>), isize> {
        let mut items_of: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        for ((u, i), d) in input {
            if *d > 0 {
                items_of.entry(*u).or_default().insert(*i);
            }
        }
        items_of.retain(|_, s| s.len() <= max_user_items);
        let users_of = |x: u8| -> BTreeSet<u8> {
            items_of
                .iter()
                .filter(|(_, s)| s.contains(&x))
                .map(|(u, _)| *u)
                .collect()
        };
        let items: BTreeSet<u8> = items_of.values().flatten().copied().collect();
        let mut out = BTreeMap::new();
        for &a in &items {
            let ua = users_of(a);
            let mut list: Vec<(u8, Cosine)> = Vec::new();
            for &b in &items {
                let ub = users_of(b);
                let co = ua.intersection(&ub).count() as u64;
                if a != b && co >= 2 {
                    list.push((
                        b,
                        Cosine {
                            co,
                            n_item: ua.len() as u64,
                            n_similar: ub.len() as u64,
                        },
                    ));
                }
            }
            list.sort_by(|x, y| y.1.cmp_exact(&x.1).then(x.0.cmp(&y.0)));
            for (r, (b, cosine)) in list.into_iter().take(top_k).enumerate() {
                out.insert(
                    (
                        a,
                        SimilarItem {
                            rank: r as u32 + 1,
                            item: b,
                            cosine,
                        },
                    ),
                    1,
                );
            }
        }
        out
    }

    #[test]
    fn matches_oracle_with_retractions_on_1_and_3_workers() {
        let mut rows = 0;
        for seed in 0..8u64 {
            let mut rng = Rng::new(seed);
            // Few users and items so that pairs share users, ties happen and the cap bites.
            let updates =
                random_updates(&mut rng, 500, 6, |r| (r.below(14) as u8, r.below(12) as u8));
            for min_item_users in [1, 2] {
                let config = SimilarityConfig {
                    max_user_items: 7,
                    top_k: 3,
                    min_item_users,
                };
                for workers in [1, 3] {
                    let cfg = config.clone();
                    let out = run_on_workers(workers, updates.clone(), move |c| {
                        similar_items(c, &cfg, |_| {})
                    });
                    for epoch in 0..6u64 {
                        let expected = oracle(&accumulate_at(&updates, epoch), 7, 3);
                        rows += expected.len();
                        assert_eq!(
                            accumulate_at(&out, epoch),
                            expected,
                            "seed {seed} workers {workers} min_item_users {min_item_users} epoch {epoch}"
                        );
                    }
                }
            }
        }
        assert!(
            rows > 1000,
            "the random data should give similar items: {rows}"
        );
    }

    #[test]
    fn pair_stats_count_the_distinct_pairs_exactly() {
        for seed in 20..24u64 {
            let mut rng = Rng::new(seed);
            let updates =
                random_updates(&mut rng, 400, 4, |r| (r.below(10) as u8, r.below(15) as u8));
            // Distinct pairs a < b with any shared (kept) user, by brute force.
            let acc = accumulate_at(&updates, 3);
            let mut items_of: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
            for ((u, i), d) in &acc {
                if *d > 0 {
                    items_of.entry(*u).or_default().insert(*i);
                }
            }
            items_of.retain(|_, s| s.len() <= 9);
            let mut pairs = BTreeSet::new();
            for s in items_of.values() {
                for a in s {
                    for b in s {
                        if a < b {
                            pairs.insert((*a, *b));
                        }
                    }
                }
            }
            for workers in [1, 3] {
                let total = Arc::new(Mutex::new(PairStats::default()));
                let sink = Arc::clone(&total);
                run_on_workers(workers, updates.clone(), move |c| {
                    let sink = Arc::clone(&sink);
                    let config = SimilarityConfig {
                        max_user_items: 9,
                        top_k: 3,
                        min_item_users: 1,
                    };
                    similar_items(c, &config, move |d| {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).add(d);
                    })
                });
                let stats = *total.lock().unwrap_or_else(|p| p.into_inner());
                assert_eq!(
                    stats.pairs(),
                    pairs.len() as i64,
                    "seed {seed} workers {workers}"
                );
                assert!(stats.estimated_bytes(1) > 0 || pairs.is_empty());
            }
        }
    }

    #[test]
    fn exact_ties_rank_by_item_and_equal_values_give_equal_floats() {
        // 2/sqrt(4·n) and 3/sqrt(9·n): equal exactly.
        let a = Cosine {
            co: 2,
            n_item: 7,
            n_similar: 4,
        };
        let b = Cosine {
            co: 3,
            n_item: 7,
            n_similar: 9,
        };
        assert_eq!(a.cmp_exact(&b), Ordering::Equal);
        assert_eq!(a.value().to_bits(), b.value().to_bits());
        assert_eq!(a.fixed(), b.fixed());
        let c = Cosine {
            co: 3,
            n_item: 7,
            n_similar: 10,
        };
        assert_eq!(b.cmp_exact(&c), Ordering::Greater);
    }
}
