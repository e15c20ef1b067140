//! `similar_items` and `recommendations` as batch queries over all events, written from the
//! output contract with plain maps (no engine, operator or connector code).
//!
//! The contract's documented numeric recipes are reproduced, not shared:
//! `similar_items.score = round6(sqrt(co² / (n(a)·n(b))))` in `f64`;
//! `recommendations.score = round6(Σ w(q) · round(sim(q,p) · 2^40) / 2^40)`, with
//! `sim = sqrt(co² / (n(q)·n(p)))` in `f64`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::BatchEvent;

/// Users with more distinct products are left out (the contract's 500).
pub const MAX_USER_ITEMS: usize = 500;
/// Rows per product and per user.
pub const TOP_K: usize = 10;

/// One `similar_items` row: `(similar_product_id, score, co_users)`.
pub type SimilarRow = (u64, f64, u64);
/// One `recommendations` row: `(product_id, score)`.
pub type RecommendationRow = (u64, f64);

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// `sqrt(co² / (n1·n2))` as the contract computes it.
fn cosine(co: u64, n1: u64, n2: u64) -> f64 {
    ((co as f64 * co as f64) / (n1 as f64 * n2 as f64)).sqrt()
}

/// The exact co-occurrence of two products and their user counts.
#[derive(Clone, Copy, Debug)]
struct Pair {
    co: u64,
    n_a: u64,
    n_b: u64,
}

/// Exact order of `co / sqrt(n_a n_b)`: compare the squares as fractions.
fn cmp_pairs(x: &Pair, y: &Pair) -> Ordering {
    let lhs = u128::from(x.co * x.co) * u128::from(y.n_a) * u128::from(y.n_b);
    let rhs = u128::from(y.co * y.co) * u128::from(x.n_a) * u128::from(x.n_b);
    lhs.cmp(&rhs)
}

/// Each product's similar list, best first: `(similar, exact pair)`.
fn similar_lists(events: &[BatchEvent]) -> BTreeMap<u64, Vec<(u64, Pair)>> {
    let mut items_of: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    for e in events {
        items_of.entry(e.user_id).or_default().insert(e.product_id);
    }
    items_of.retain(|_, items| items.len() <= MAX_USER_ITEMS);
    let mut n: HashMap<u64, u64> = HashMap::new();
    let mut co: HashMap<(u64, u64), u64> = HashMap::new();
    for items in items_of.values() {
        let items: Vec<u64> = items.iter().copied().collect();
        for (i, a) in items.iter().enumerate() {
            *n.entry(*a).or_default() += 1;
            for b in &items[i + 1..] {
                *co.entry((*a, *b)).or_default() += 1;
            }
        }
    }
    let mut lists: BTreeMap<u64, Vec<(u64, Pair)>> = BTreeMap::new();
    for ((a, b), c) in co {
        if c < 2 {
            continue;
        }
        let (na, nb) = (n[&a], n[&b]);
        lists.entry(a).or_default().push((
            b,
            Pair {
                co: c,
                n_a: na,
                n_b: nb,
            },
        ));
        lists.entry(b).or_default().push((
            a,
            Pair {
                co: c,
                n_a: nb,
                n_b: na,
            },
        ));
    }
    for list in lists.values_mut() {
        list.sort_by(|x, y| cmp_pairs(&y.1, &x.1).then(x.0.cmp(&y.0)));
        list.truncate(TOP_K);
    }
    lists
}

/// `similar_items`: `(product_id, rank) -> (similar_product_id, score, co_users)`.
pub fn batch_similar_items(events: &[BatchEvent]) -> BTreeMap<(u64, u64), SimilarRow> {
    let mut out = BTreeMap::new();
    for (a, list) in similar_lists(events) {
        for (rank, (b, p)) in list.into_iter().enumerate() {
            out.insert(
                (a, rank as u64 + 1),
                (b, round6(cosine(p.co, p.n_a, p.n_b)), p.co),
            );
        }
    }
    out
}

fn weight(event_type: &str) -> i64 {
    match event_type {
        "purchase" => 5,
        "cart" => 3,
        _ => 1, // view, remove_from_cart
    }
}

/// `recommendations`: `(user_id, rank) -> (product_id, score)`.
pub fn batch_recommendations(events: &[BatchEvent]) -> BTreeMap<(u64, u64), RecommendationRow> {
    let scale = (1u64 << 40) as f64;
    let sims: BTreeMap<u64, Vec<(u64, i64)>> = similar_lists(events)
        .into_iter()
        .map(|(q, list)| {
            let fixed = list
                .into_iter()
                .map(|(p, x)| (p, (cosine(x.co, x.n_a, x.n_b) * scale).round() as i64))
                .collect();
            (q, fixed)
        })
        .collect();
    // Per user: highest weight per product, purchases, events per category.
    let mut weights: HashMap<u64, BTreeMap<u64, i64>> = HashMap::new();
    let mut bought: HashMap<u64, BTreeSet<u64>> = HashMap::new();
    let mut categories: HashMap<u64, BTreeMap<String, u64>> = HashMap::new();
    let mut sales: HashMap<String, BTreeMap<u64, u64>> = HashMap::new();
    for e in events {
        let w = weights
            .entry(e.user_id)
            .or_default()
            .entry(e.product_id)
            .or_default();
        *w = (*w).max(weight(&e.event_type));
        *categories
            .entry(e.user_id)
            .or_default()
            .entry(e.category_key())
            .or_default() += 1;
        if e.event_type == "purchase" {
            bought.entry(e.user_id).or_default().insert(e.product_id);
            *sales
                .entry(e.category_key())
                .or_default()
                .entry(e.product_id)
                .or_default() += 1;
        }
    }
    let none = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (user, ws) in &weights {
        if ws.len() > MAX_USER_ITEMS {
            continue;
        }
        let bought = bought.get(user).unwrap_or(&none);
        let mut scores: BTreeMap<u64, i64> = BTreeMap::new();
        for (q, w) in ws {
            for (p, fixed) in sims.get(q).map(Vec::as_slice).unwrap_or(&[]) {
                *scores.entry(*p).or_default() += w * fixed;
            }
        }
        let mut list: Vec<(u64, i64)> = scores
            .into_iter()
            .filter(|(p, _)| !bought.contains(p))
            .collect();
        list.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        list.truncate(TOP_K);
        // Most events, ties by the smaller key (String order is byte order).
        let top = categories[user]
            .iter()
            .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
            .map(|(c, _)| c.clone());
        if let Some(ranking) = top.and_then(|c| sales.get(&c)) {
            let mut ranking: Vec<(u64, u64)> = ranking.iter().map(|(p, n)| (*p, *n)).collect();
            ranking.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
            for (p, _) in ranking {
                if list.len() >= TOP_K {
                    break;
                }
                if !bought.contains(&p) && !list.iter().any(|(x, _)| *x == p) {
                    list.push((p, 0));
                }
            }
        }
        for (rank, (p, score)) in list.into_iter().enumerate() {
            out.insert((*user, rank as u64 + 1), (p, round6(score as f64 / scale)));
        }
    }
    out
}
