//! Per-user recommendations through item-item similarity, filled from a category's best
//! sellers.
//!
//! Inputs (all collections; duplicates count, retractions allowed):
//! - `touches`: `(user, (item, interaction))`, one per event;
//! - `similar`: `(item, SimilarItem)`, each item's similar-items list
//!   ([`crate::similarity::similar_items`]);
//! - `top_category`: `(user, category)`, at most one per user;
//! - `category_purchases`: `(category, item)`, one per purchase event of `item` in
//!   `category` (so its multiplicity is the item's purchase count there).
//!
//! [`recommend`] outputs, per user, up to `top_k` [`Recommendation`]s ranked `1..`:
//! - users with more than `max_user_items` distinct items get none;
//! - `w(q)` = the highest [`Interaction::weight`] among the user's touches of `q`
//!   (view 1, remove_from_cart 1, cart 3, purchase 5);
//! - `score(p) = Σ_q w(q) · sim(q, p)` over the items `q` the user touched, where
//!   `sim(q, p)` is `p`'s cosine in `q`'s similar list, 0 when `p` is not in it;
//! - items the user purchased are excluded; the rest with score > 0 are ranked by score
//!   descending, ties by item ascending;
//! - when fewer than `top_k` have a score, the list is filled with the items of the user's
//!   top category by purchase count descending (ties by item ascending), skipping items
//!   already listed or purchased, with score 0. Only items with a purchase in the category
//!   are candidates, so a list can be shorter than `top_k`.
//!
//! Scores are fixed point: `sim` is [`Cosine::fixed`](crate::similarity::Cosine::fixed)
//! (`round(cosine · 2^40)`) and a score is the exact integer sum `Σ w(q) · fixed(q, p)`,
//! so it does not depend on summation order or worker count, and equal sums tie exactly.
//! [`score_value`] turns it back into a number (the difference from real arithmetic is below
//! `w · 2^-41` per term, far under the 6 printed decimals).
//!
//! ```text
//!  touches ─ reduce per user: w(q), purchased, #purchased (none over the cap) ─▶ facts
//!  facts (q, (u, w)) ⋈ similar (q, (p, fixed)) ─ explode: (u, p) with difference w·fixed
//!  category_purchases ─ reduce per category: ranking (top_k + max_user_items) ─┐
//!  top_category ⋈ facts #purchased ─▶ (category, (u, depth)) ─────────────────┴─▶ (u, prefix)
//!  scored + purchased + prefix ─ reduce per user (a scored item's accumulated
//!                                difference is its score) ─▶ ranked rows
//! ```
//!
//! The fill needs at most `top_k + #purchased(u)` items of the ranking (every skipped item
//! is listed or purchased), and `#purchased(u) <= max_user_items`, so each user's copy is cut
//! to that depth and the ranking to `top_k + max_user_items`: exact, and small.
//!
//! State: one entry per distinct `(user, item, interaction)`; per user, one candidate per
//! item reachable through a similar list (at most `top_k` per touched item) plus a fill
//! prefix; per category, its ranking. Work: a change to an item's similar list re-scores
//! the users who touched it, and a change to a category's ranking re-fills the users whose
//! top category it is: this is why [`refresh_every`] exists.
//!
//! Refresh: [`refresh_every`] delays a collection's updates to the last epoch of their
//! block of `R` epochs, so the recommendations computed from delayed inputs change only
//! every `R` epochs (all the work happens then) and are exact at those epochs; when the
//! input ends, the frontier closes and the last, partial block is flushed, so the final
//! output is exact.

use std::hash::Hash;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

use crate::similarity::{SimilarItem, FIXED_SCALE};

/// What a user did with an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Interaction {
    /// Viewed it (weight 1).
    View,
    /// Removed it from the cart (weight 1).
    RemoveFromCart,
    /// Put it in the cart (weight 3).
    Cart,
    /// Bought it (weight 5; bought items are never recommended).
    Purchase,
}

impl Interaction {
    /// The weight of the interaction in a score: view 1, remove_from_cart 1, cart 3,
    /// purchase 5.
    pub fn weight(self) -> i64 {
        match self {
            Interaction::View | Interaction::RemoveFromCart => 1,
            Interaction::Cart => 3,
            Interaction::Purchase => 5,
        }
    }
}

/// How recommendations are computed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecommendConfig {
    /// Users with more distinct items get no recommendations (default 500).
    pub max_user_items: usize,
    /// Recommendations per user (default 10).
    pub top_k: usize,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            max_user_items: 500,
            top_k: 10,
        }
    }
}

/// One recommended item of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Recommendation<I> {
    /// 1-based rank.
    pub rank: u32,
    /// The item.
    pub item: I,
    /// Fixed-point score (`2^40` = 1.0); 0 for fill items. See [`score_value`].
    pub score: i64,
}

/// A fixed-point score as a number.
pub fn score_value(score: i64) -> f64 {
    score as f64 / FIXED_SCALE
}

/// What the per-user reduce needs to know of one user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum UserFact<I> {
    /// The user touched `item`, with this highest weight; `purchased` if any touch was one.
    Item {
        item: I,
        weight: i64,
        purchased: bool,
    },
    /// The user is kept (not over the cap) and purchased this many distinct items.
    Purchases(usize),
}

/// Candidates of a user in the final reduce. A `Scored` item's *difference* is its score:
/// the arrangement sums the terms `w(q) · fixed(q, p)` as it consolidates, so no separate
/// count (and no second copy of every candidate) is kept.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Candidate<I> {
    Purchased(I),
    Scored(I),
    Fill(Vec<I>),
}

/// Delays every update to the last epoch of its block of `epochs` epochs
/// (`t -> ⌊t / R⌋ · R + R - 1`), so downstream work and output changes happen once per
/// block. `epochs <= 1` returns the collection unchanged. The delay is monotone and never
/// moves a time backwards, as differential's `delay` requires.
pub fn refresh_every<'s, D, R>(
    collection: VecCollection<'s, u64, D, R>,
    epochs: u64,
) -> VecCollection<'s, u64, D, R>
where
    D: Clone + 'static,
    R: Clone + 'static,
{
    if epochs <= 1 {
        return collection;
    }
    collection.delay(move |t| {
        (t / epochs)
            .saturating_mul(epochs)
            .saturating_add(epochs - 1)
    })
}

/// Per user, the ranked recommendations (see the module docs).
pub fn recommend<'s, T, U, I, C>(
    touches: VecCollection<'s, T, (U, (I, Interaction))>,
    similar: VecCollection<'s, T, (I, SimilarItem<I>)>,
    top_category: VecCollection<'s, T, (U, C)>,
    category_purchases: VecCollection<'s, T, (C, I)>,
    config: &RecommendConfig,
) -> VecCollection<'s, T, (U, Recommendation<I>)>
where
    T: Timestamp + Lattice,
    U: ExchangeData + Hash,
    I: ExchangeData + Hash,
    C: ExchangeData + Hash,
{
    let (max_user_items, top_k) = (config.max_user_items, config.top_k);
    let facts = touches.reduce_named("UserItemWeights", move |_user, input, output| {
        // Input is sorted by (item, interaction): one run per item.
        let mut items: Vec<(&I, i64, bool)> = Vec::new();
        for ((item, interaction), d) in input {
            if *d <= 0 {
                continue;
            }
            match items.last_mut() {
                Some(last) if last.0 == item => {
                    last.1 = last.1.max(interaction.weight());
                    last.2 |= *interaction == Interaction::Purchase;
                }
                _ => items.push((
                    item,
                    interaction.weight(),
                    *interaction == Interaction::Purchase,
                )),
            }
        }
        if items.len() > max_user_items {
            return;
        }
        let purchases = items.iter().filter(|x| x.2).count();
        output.push((UserFact::Purchases(purchases), 1isize));
        for (item, weight, purchased) in items {
            output.push((
                UserFact::Item {
                    item: item.clone(),
                    weight,
                    purchased,
                },
                1isize,
            ));
        }
    });

    // Scores: Σ_q w(q) · fixed(q, p), summed exactly as a difference.
    let weights = facts.clone().flat_map(|(user, fact)| match fact {
        UserFact::Item { item, weight, .. } => Some((item, (user, weight))),
        UserFact::Purchases(_) => None,
    });
    let sims = similar.map(|(q, s)| (q, (s.item, s.cosine.fixed())));
    let scored = weights
        .join_map(sims, |_q, (user, weight), (p, fixed)| {
            (user.clone(), p.clone(), weight * fixed)
        })
        .explode(|(user, item, term)| Some(((user, Candidate::Scored(item)), term as isize)));

    let purchased = facts.clone().flat_map(|(user, fact)| match fact {
        UserFact::Item {
            item,
            purchased: true,
            ..
        } => Some((user, Candidate::Purchased(item))),
        _ => None,
    });

    // Fill: each kept user gets the prefix of their top category's ranking they may need.
    let depth_cap = top_k + max_user_items;
    let ranking = category_purchases.reduce_named("CategoryRanking", move |_c, input, output| {
        let mut items: Vec<(&I, isize)> = input
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|(i, d)| (*i, *d))
            .collect();
        items.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
        let list: Vec<I> = items
            .into_iter()
            .take(depth_cap)
            .map(|(i, _)| i.clone())
            .collect();
        output.push((list, 1isize));
    });
    let depths = facts.flat_map(move |(user, fact)| match fact {
        UserFact::Purchases(n) => Some((user, top_k + n)),
        UserFact::Item { .. } => None,
    });
    let fill = top_category
        .join_map(depths, |user, category, depth| {
            (category.clone(), (user.clone(), *depth))
        })
        .join_map(ranking, |_c, (user, depth), list: &Vec<I>| {
            let prefix = list[..(*depth).min(list.len())].to_vec();
            (user.clone(), Candidate::Fill(prefix))
        });

    scored.concat(purchased).concat(fill).reduce_named(
        "UserRecommendations",
        move |_user, input, output| {
            let mut purchased: Vec<&I> = Vec::new();
            let mut listed: Vec<(&I, i64)> = Vec::new();
            let mut fills: Vec<&Vec<I>> = Vec::new();
            for (candidate, d) in input {
                if *d <= 0 {
                    continue;
                }
                match candidate {
                    // Sorted by item, and all before the scored items.
                    Candidate::Purchased(item) => purchased.push(item),
                    Candidate::Scored(item) => {
                        if purchased.binary_search(&item).is_err() {
                            listed.push((item, *d as i64));
                        }
                    }
                    Candidate::Fill(prefix) => fills.push(prefix),
                }
            }
            listed.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
            listed.truncate(top_k);
            for item in fills.into_iter().flatten() {
                if listed.len() >= top_k {
                    break;
                }
                if purchased.binary_search(&item).is_err()
                    && !listed.iter().any(|(x, _)| *x == item)
                {
                    listed.push((item, 0));
                }
            }
            for (rank, (item, score)) in listed.into_iter().enumerate() {
                output.push((
                    Recommendation {
                        rank: rank as u32 + 1,
                        item: item.clone(),
                        score,
                    },
                    1isize,
                ));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::similarity::{similar_items, SimilarityConfig};
    use crate::testing::{accumulate_at, random_updates, run_on_workers, Rng};
    use std::collections::{BTreeMap, BTreeSet};

    const MAX_ITEMS: usize = 7;
    const TOP_K: usize = 4;
    type Touch = (u8, u8, Interaction);

    fn category(item: u8) -> u8 {
        item % 3
    }

    fn gen_touch(r: &mut Rng) -> Touch {
        let kind = match r.below(10) {
            0..=5 => Interaction::View,
            6 => Interaction::RemoveFromCart,
            7 | 8 => Interaction::Cart,
            _ => Interaction::Purchase,
        };
        (r.below(30) as u8, r.below(14) as u8, kind)
    }

    /// The job's composition in miniature: similar items and a top category (most touches,
    /// ties by smaller category) computed from the same touches.
    fn build<'s>(
        c: VecCollection<'s, u64, Touch>,
        refresh: u64,
    ) -> VecCollection<'s, u64, (u8, Recommendation<u8>)> {
        let sim_config = SimilarityConfig {
            max_user_items: MAX_ITEMS,
            top_k: 3,
        };
        let similar = similar_items(c.clone().map(|(u, i, _)| (u, i)), &sim_config, |_| {});
        let top_category =
            c.clone()
                .map(|(u, i, _)| (u, category(i)))
                .reduce(|_u, input, output| {
                    let best = input.iter().max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(x.0)));
                    if let Some((c, _)) = best {
                        output.push((**c, 1isize));
                    }
                });
        let purchases = c
            .clone()
            .filter(|(_, _, k)| *k == Interaction::Purchase)
            .map(|(_, i, _)| (category(i), i));
        let touches = c.map(|(u, i, k)| (u, (i, k)));
        let config = RecommendConfig {
            max_user_items: MAX_ITEMS,
            top_k: TOP_K,
        };
        recommend(
            refresh_every(touches, refresh),
            refresh_every(similar, refresh),
            refresh_every(top_category, refresh),
            refresh_every(purchases, refresh),
            &config,
        )
    }

    /// Brute force, from the module docs' definition.
    fn oracle(input: &BTreeMap<Touch, isize>) -> BTreeMap<(u8, Recommendation<u8>), isize> {
        let pairs: BTreeMap<(u8, u8), isize> = input
            .iter()
            .filter(|(_, d)| **d > 0)
            .map(|((u, i, _), _)| ((*u, *i), 1))
            .collect();
        let mut lists: BTreeMap<u8, Vec<(u8, i64)>> = BTreeMap::new();
        for ((q, s), _) in crate::similarity::tests::oracle(&pairs, MAX_ITEMS, 3) {
            lists.entry(q).or_default().push((s.item, s.cosine.fixed()));
        }
        let mut events_per_cat: BTreeMap<u8, BTreeMap<u8, isize>> = BTreeMap::new();
        let mut purchases_per_cat: BTreeMap<u8, BTreeMap<u8, isize>> = BTreeMap::new();
        let mut weight: BTreeMap<u8, BTreeMap<u8, i64>> = BTreeMap::new();
        let mut bought: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
        for ((u, i, k), d) in input {
            if *d <= 0 {
                continue;
            }
            *events_per_cat
                .entry(*u)
                .or_default()
                .entry(category(*i))
                .or_default() += d;
            let w = weight.entry(*u).or_default().entry(*i).or_default();
            *w = (*w).max(k.weight());
            if *k == Interaction::Purchase {
                bought.entry(*u).or_default().insert(*i);
                *purchases_per_cat
                    .entry(category(*i))
                    .or_default()
                    .entry(*i)
                    .or_default() += d;
            }
        }
        let mut out = BTreeMap::new();
        for (u, ws) in &weight {
            if ws.len() > MAX_ITEMS {
                continue;
            }
            let no = BTreeSet::new();
            let bought = bought.get(u).unwrap_or(&no);
            let mut score: BTreeMap<u8, i64> = BTreeMap::new();
            for (q, w) in ws {
                for (p, fixed) in lists.get(q).into_iter().flatten() {
                    *score.entry(*p).or_default() += w * fixed;
                }
            }
            let mut ranked: Vec<(u8, i64)> = score
                .into_iter()
                .filter(|(p, _)| !bought.contains(p))
                .collect();
            ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            ranked.truncate(TOP_K);
            let cats = &events_per_cat[u];
            let top = cats
                .iter()
                .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
                .map(|(c, _)| *c);
            if let Some(fill) = top.and_then(|c| purchases_per_cat.get(&c)) {
                let mut fill: Vec<(u8, isize)> = fill.iter().map(|(i, n)| (*i, *n)).collect();
                fill.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
                for (i, _) in fill {
                    if ranked.len() < TOP_K
                        && !bought.contains(&i)
                        && !ranked.iter().any(|(x, _)| *x == i)
                    {
                        ranked.push((i, 0));
                    }
                }
            }
            for (r, (item, score)) in ranked.into_iter().enumerate() {
                out.insert(
                    (
                        *u,
                        Recommendation {
                            rank: r as u32 + 1,
                            item,
                            score,
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
        let mut scored_rows = 0;
        let mut fill_rows = 0;
        for seed in 0..8u64 {
            let mut rng = Rng::new(seed);
            let updates = random_updates(&mut rng, 500, 6, gen_touch);
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| build(c, 1));
                for epoch in 0..6u64 {
                    let expected = oracle(&accumulate_at(&updates, epoch));
                    for (_, r) in expected.keys() {
                        if r.score > 0 {
                            scored_rows += 1;
                        } else {
                            fill_rows += 1;
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
        // The random data exercise both kinds of rows.
        assert!(
            scored_rows > 100 && fill_rows > 100,
            "{scored_rows} {fill_rows}"
        );
    }

    #[test]
    fn refresh_every_3_epochs_changes_only_at_block_ends_and_is_exact_at_the_end() {
        for seed in 30..34u64 {
            let mut rng = Rng::new(seed);
            // 7 epochs: blocks 0-2, 3-5 and a partial 6 flushed when the input ends.
            let updates = random_updates(&mut rng, 500, 7, gen_touch);
            for workers in [1, 3] {
                let out = run_on_workers(workers, updates.clone(), |c| build(c, 3));
                assert!(
                    out.iter().all(|(_, t, _)| t % 3 == 2),
                    "changes only at block ends"
                );
                for epoch in [2u64, 5] {
                    assert_eq!(
                        accumulate_at(&out, epoch),
                        oracle(&accumulate_at(&updates, epoch)),
                        "seed {seed} workers {workers} epoch {epoch}"
                    );
                }
                assert_eq!(
                    accumulate_at(&out, u64::MAX),
                    oracle(&accumulate_at(&updates, 6)),
                    "seed {seed} workers {workers}: exact at the end of input"
                );
            }
        }
    }
}
