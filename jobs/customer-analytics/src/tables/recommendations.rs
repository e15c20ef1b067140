//! `similar_items` and `recommendations`: item-item cosine similarity and per-user
//! recommendations through it (see `docs/output-contract.md`).
//!
//! ```text
//!  events ─┬─ (user, product) ─ pre_aggregate ─ similar_items ──────────────┬──▶ similar_items
//!          ├─ (user, (product, interaction)) ─ pre_aggregate ─┐             │
//!  customer_traits ─ (user, top_category) ─────────────────┤  refresh_every(R)
//!          └─ purchases (category, product) ─ pre_aggregate ──┤             │
//!                                                             └─ recommend ◀┘ ──▶ recommendations
//! ```
//!
//! Choices the contract leaves open, made here:
//! - a product's "purchase count" in a category is the number of purchase events of that
//!   product whose category key is that category (no product -> category mapping is
//!   assumed: a product seen under two categories ranks in both); only products with at
//!   least one purchase there are fill candidates;
//! - the user's top category comes from `customer_traits` (the job passes its column in;
//!   [`top_category`] computes the same from events for callers without that table);
//! - scores: `similar_items.score` is `sqrt(co² / (n(a)·n(b)))` in `f64` rounded to 6
//!   decimals, ranked exactly on the integers; `recommendations.score` is the fixed-point sum
//!   `Σ w(q) · round(sim(q,p) · 2^40)` divided by `2^40`, rounded to 6 decimals (see
//!   `cap_operators::recommend`).
//!
//! Settings (`[job.recommendations]`): `max_user_items` (500), `refresh_epochs` (1),
//! `pair_budget_mib` (4096, the co-occurrence state's memory budget: watched, never cut).

use cap_connectors::clickstream::{Event, EventType};
use cap_engine::config::ConfigError;
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::metrics::Registry;
use cap_engine::sink::{TableRow, TableSchema};
use cap_operators::local::pre_aggregate;
use cap_operators::recommend::{
    recommend, refresh_every, score_value, Interaction, RecommendConfig,
};
use cap_operators::similarity::{similar_items, Cosine, PairStats, SimilarItem, SimilarityConfig};
use compact_str::CompactString;
use differential_dataflow::VecCollection;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

/// Similar items per product and recommendations per user (the contract's 10).
pub const TOP_K: usize = 10;

/// `[job.recommendations]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendationSettings {
    /// Users with more distinct products are left out of similarity and get no
    /// recommendations (default 500, the contract's).
    pub max_user_items: usize,
    /// Recommendations are recomputed every this many epochs, and exactly at the end of
    /// input (default 1: every epoch).
    pub refresh_epochs: u64,
    /// Memory budget of the co-occurrence state in MiB, over all workers (default 4096;
    /// 0: none). Crossing it logs a warning per worker (each holds a `1/workers` share);
    /// results stay exact, since dropping pairs would make them wrong.
    pub pair_budget_mib: u64,
}

impl Default for RecommendationSettings {
    fn default() -> Self {
        RecommendationSettings {
            max_user_items: 500,
            refresh_epochs: 1,
            pair_budget_mib: 4096,
        }
    }
}

impl RecommendationSettings {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            key: format!("job.recommendations.{key}"),
            reason,
        };
        if self.max_user_items == 0 {
            return Err(invalid("max_user_items", "must be >= 1, got 0".into()));
        }
        if self.refresh_epochs == 0 {
            return Err(invalid("refresh_epochs", "must be >= 1, got 0".into()));
        }
        Ok(())
    }
}

/// `similar_items`: one of a product's 10 most similar products.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimilarItemRow {
    /// The product.
    pub product_id: u64,
    /// 1..10.
    pub rank: u32,
    /// The similar product.
    pub similar_product_id: u64,
    /// The exact cosine: co-users and both products' distinct users.
    pub cosine: Cosine,
}

/// The wire form of [`SimilarItemRow`]: every integer.
#[derive(Serialize, Deserialize)]
struct SimilarItemWire {
    product_id: u64,
    rank: u32,
    similar_product_id: u64,
    co: u64,
    n_product: u64,
    n_similar: u64,
}

/// JSON: `product_id`, `rank`, `similar_product_id`, `score` (6 decimals), `co_users`;
/// bincode: the exact integers.
impl Serialize for SimilarItemRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return SimilarItemWire {
                product_id: self.product_id,
                rank: self.rank,
                similar_product_id: self.similar_product_id,
                co: self.cosine.co,
                n_product: self.cosine.n_item,
                n_similar: self.cosine.n_similar,
            }
            .serialize(s);
        }
        let mut st = s.serialize_struct("SimilarItemRow", 5)?;
        st.serialize_field("product_id", &self.product_id)?;
        st.serialize_field("rank", &self.rank)?;
        st.serialize_field("similar_product_id", &self.similar_product_id)?;
        st.serialize_field("score", &self.cosine.rounded())?;
        st.serialize_field("co_users", &self.cosine.co)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for SimilarItemRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SimilarItemRow, D::Error> {
        let w = SimilarItemWire::deserialize(d)?;
        Ok(SimilarItemRow {
            product_id: w.product_id,
            rank: w.rank,
            similar_product_id: w.similar_product_id,
            cosine: Cosine {
                co: w.co,
                n_item: w.n_product,
                n_similar: w.n_similar,
            },
        })
    }
}

/// Primary key of `similar_items`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ProductRankKey {
    /// The product.
    pub product_id: u64,
    /// The rank.
    pub rank: u32,
}

impl TableRow for SimilarItemRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["product_id", "rank"],
            &[
                ("product_id", UInt64),
                ("rank", UInt32),
                ("similar_product_id", UInt64),
                ("score", Float64),
                ("co_users", UInt64),
            ],
        ))
    }
    type Key = ProductRankKey;
    fn key(&self) -> ProductRankKey {
        ProductRankKey {
            product_id: self.product_id,
            rank: self.rank,
        }
    }
}

/// `recommendations`: one of a user's (up to) 10 recommended products.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecommendationRow {
    /// The user.
    pub user_id: u64,
    /// 1..10.
    pub rank: u32,
    /// The recommended product.
    pub product_id: u64,
    /// Fixed-point score (`2^40` = 1.0); 0 for fill rows.
    pub score: i64,
}

#[derive(Serialize, Deserialize)]
struct RecommendationWire {
    user_id: u64,
    rank: u32,
    product_id: u64,
    score: i64,
}

/// JSON: `user_id`, `rank`, `product_id`, `score` (a number, 6 decimals); bincode: the
/// fixed-point integer.
impl Serialize for RecommendationRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return RecommendationWire {
                user_id: self.user_id,
                rank: self.rank,
                product_id: self.product_id,
                score: self.score,
            }
            .serialize(s);
        }
        let mut st = s.serialize_struct("RecommendationRow", 4)?;
        st.serialize_field("user_id", &self.user_id)?;
        st.serialize_field("rank", &self.rank)?;
        st.serialize_field("product_id", &self.product_id)?;
        st.serialize_field("score", &((score_value(self.score) * 1e6).round() / 1e6))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for RecommendationRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RecommendationRow, D::Error> {
        let w = RecommendationWire::deserialize(d)?;
        Ok(RecommendationRow {
            user_id: w.user_id,
            rank: w.rank,
            product_id: w.product_id,
            score: w.score,
        })
    }
}

/// Primary key of `recommendations`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UserRankKey {
    /// The user.
    pub user_id: u64,
    /// The rank.
    pub rank: u32,
}

impl TableRow for RecommendationRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["user_id", "rank"],
            &[
                ("user_id", UInt64),
                ("rank", UInt32),
                ("product_id", UInt64),
                ("score", Float64),
            ],
        ))
    }
    type Key = UserRankKey;
    fn key(&self) -> UserRankKey {
        UserRankKey {
            user_id: self.user_id,
            rank: self.rank,
        }
    }
}

/// The contract's category key: `category_code`, or the decimal `category_id`.
fn category_key(e: &Event) -> CompactString {
    match &e.category_code {
        Some(code) => code.clone(),
        None => compact_str::format_compact!("{}", e.category_id),
    }
}

fn interaction(kind: EventType) -> Interaction {
    match kind {
        EventType::View => Interaction::View,
        EventType::Cart => Interaction::Cart,
        EventType::RemoveFromCart => Interaction::RemoveFromCart,
        EventType::Purchase => Interaction::Purchase,
    }
}

/// Per user, the category key with most events of any type, ties by key ascending: the
/// `customer_traits.top_category` column, for callers (benchmarks, other jobs) that
/// build the recommendations without the `customer_traits` table.
/// Checkpointed state: the count of each user's categories.
pub fn top_category<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, (u64, CompactString)>, BuildError> {
    let user_categories = ck.checkpointed(
        "rec_user_category",
        pre_aggregate(
            events.clone().map(|e| (e.user_id, category_key(&e))),
            "user_category",
        ),
    )?;
    Ok(
        user_categories.reduce_named("TopCategory", |_user, input, output| {
            // Input is sorted by key: the first key with the most events wins ties.
            let mut best: Option<(&CompactString, isize)> = None;
            for (key, n) in input {
                if *n > 0 && best.map(|(_, m)| *n > m).unwrap_or(true) {
                    best = Some((*key, *n));
                }
            }
            if let Some((key, _)) = best {
                output.push((key.clone(), 1isize));
            }
        }),
    )
}

/// Metrics of the co-occurrence state on one worker, as monotone counters (the registry has
/// no gauges): `cap_similarity_pairs_{added,removed}_total`,
/// `cap_similarity_candidates_{added,removed}_total` and
/// `cap_similarity_pair_bytes_{added,removed}_total`. Held = added - removed, summed over
/// workers ([`PairStats`]). When the worker's bytes cross `budget_bytes` (its share of the
/// budget; 0: none), a warning says so, once per crossing.
pub fn pair_metrics(
    registry: &Registry,
    worker: usize,
    budget_bytes: u64,
) -> impl FnMut(PairStats) + 'static {
    let labels = || vec![("worker", worker.to_string())];
    let pair = |added: &'static str, removed: &'static str, help: &'static str| {
        (
            registry.counter(added, help, labels()),
            registry.counter(removed, help, labels()),
        )
    };
    let pairs = pair(
        "cap_similarity_pairs_added_total",
        "cap_similarity_pairs_removed_total",
        "Co-occurring product pairs (held = added - removed)",
    );
    let candidates = pair(
        "cap_similarity_candidates_added_total",
        "cap_similarity_candidates_removed_total",
        "Product pairs with co >= 2, the ranked candidates (held = added - removed)",
    );
    let bytes = pair(
        "cap_similarity_pair_bytes_added_total",
        "cap_similarity_pair_bytes_removed_total",
        "Bytes of the similarity pair state (held = added - removed)",
    );
    let mut held = 0i64;
    let mut over = false;
    move |delta: PairStats| {
        for ((added, removed), d) in [
            (&pairs, delta.pairs),
            (&candidates, delta.candidates),
            (&bytes, delta.bytes),
        ] {
            if d >= 0 {
                added.add(d as u64);
            } else {
                removed.add(d.unsigned_abs());
            }
        }
        held += delta.bytes;
        let now_over = budget_bytes > 0 && held > budget_bytes as i64;
        if now_over && !over {
            tracing::warn!(
                worker,
                held_mib = held >> 20,
                budget_share_mib = budget_bytes >> 20,
                "similarity pair state is over its memory budget; results stay exact. \
                 Lower job.recommendations.max_user_items, raise pair_budget_mib, or run \
                 more workers"
            );
        }
        over = now_over;
    }
}

/// Each product's similar-items list over `events` (the operator's output; see
/// [`similar_item_rows`] for the table's rows). `stats` receives the changes of the
/// co-occurrence state (see [`PairStats`]). Checkpointed state: the count of each
/// `(user, product)`.
pub fn similar_products<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
    settings: &RecommendationSettings,
    stats: impl FnMut(PairStats) + 'static,
) -> Result<VecCollection<'s, u64, (u64, SimilarItem<u64>)>, BuildError> {
    let sim_config = SimilarityConfig {
        max_user_items: settings.max_user_items,
        top_k: TOP_K,
    };
    let touches = ck.checkpointed(
        "rec_touches",
        pre_aggregate(
            events.clone().map(|e| (e.user_id, e.product_id)),
            "user_product",
        ),
    )?;
    Ok(similar_items(touches, &sim_config, stats))
}

/// The `similar_items` rows of [`similar_products`]' lists.
pub fn similar_item_rows<'s>(
    similar: VecCollection<'s, u64, (u64, SimilarItem<u64>)>,
) -> VecCollection<'s, u64, SimilarItemRow> {
    similar.map(|(product_id, s)| SimilarItemRow {
        product_id,
        rank: s.rank,
        similar_product_id: s.item,
        cosine: s.cosine,
    })
}

/// The `recommendations` rows: from `events`, the lists of [`similar_products`] and each
/// user's top category, refreshed every `settings.refresh_epochs` epochs. Checkpointed
/// state: the count of each `(user, (product, interaction))` and `(category, product)`
/// purchase; checkpoints fall on refresh epochs only (a restore then feeds the refresh
/// that follows exactly what it would have seen).
pub fn recommendation_rows<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
    similar: VecCollection<'s, u64, (u64, SimilarItem<u64>)>,
    top_categories: VecCollection<'s, u64, (u64, CompactString)>,
    settings: &RecommendationSettings,
) -> Result<VecCollection<'s, u64, RecommendationRow>, BuildError> {
    let r = settings.refresh_epochs;
    ck.align_epochs(r);
    let interactions = ck.checkpointed(
        "rec_interactions",
        pre_aggregate(
            events
                .clone()
                .map(|e| (e.user_id, (e.product_id, interaction(e.event_type)))),
            "user_product_interaction",
        ),
    )?;
    let purchases = ck.checkpointed(
        "rec_purchases",
        pre_aggregate(
            events
                .clone()
                .filter(|e| e.event_type == EventType::Purchase)
                .map(|e| (category_key(&e), e.product_id)),
            "category_purchases",
        ),
    )?;
    let rec_config = RecommendConfig {
        max_user_items: settings.max_user_items,
        top_k: TOP_K,
    };
    Ok(recommend(
        refresh_every(interactions, r),
        refresh_every(similar, r),
        refresh_every(top_categories, r),
        refresh_every(purchases, r),
        &rec_config,
    )
    .map(|(user_id, rec)| RecommendationRow {
        user_id,
        rank: rec.rank,
        product_id: rec.item,
        score: rec.score,
    }))
}

/// The `similar_items` and `recommendations` rows.
pub type SimilarityTables<'s> = (
    VecCollection<'s, u64, SimilarItemRow>,
    VecCollection<'s, u64, RecommendationRow>,
);

/// Both tables: the `similar_items` and `recommendations` rows of `events`.
pub fn similarity_tables<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
    top_categories: VecCollection<'s, u64, (u64, CompactString)>,
    settings: &RecommendationSettings,
    stats: impl FnMut(PairStats) + 'static,
) -> Result<SimilarityTables<'s>, BuildError> {
    let similar = similar_products(ck, events, settings, stats)?;
    let recs = recommendation_rows(ck, events, similar.clone(), top_categories, settings)?;
    Ok((similar_item_rows(similar), recs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows cross processes with bincode: the exact integers must survive, while JSON gets
    /// the contract's columns.
    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let s = SimilarItemRow {
            product_id: 5,
            rank: 2,
            similar_product_id: 9,
            cosine: Cosine {
                co: 3,
                n_item: 4,
                n_similar: 9,
            },
        };
        assert_eq!(
            bincode::deserialize::<SimilarItemRow>(&bincode::serialize(&s)?)?,
            s
        );
        assert_eq!(
            serde_json::to_value(&s)?,
            serde_json::json!({"product_id": 5, "rank": 2, "similar_product_id": 9, "score": 0.5, "co_users": 3})
        );
        let r = RecommendationRow {
            user_id: 7,
            rank: 1,
            product_id: 11,
            score: 3 << 39, // 1.5
        };
        assert_eq!(
            bincode::deserialize::<RecommendationRow>(&bincode::serialize(&r)?)?,
            r
        );
        assert_eq!(
            serde_json::to_value(&r)?,
            serde_json::json!({"user_id": 7, "rank": 1, "product_id": 11, "score": 1.5})
        );
        Ok(())
    }

    #[test]
    fn settings_default_to_the_contract_and_reject_zero() {
        let s = RecommendationSettings::default();
        assert_eq!(
            (s.max_user_items, s.refresh_epochs, s.pair_budget_mib),
            (500, 1, 4096)
        );
        assert!(s.validate().is_ok());
        let bad = RecommendationSettings {
            refresh_epochs: 0,
            ..s
        };
        match bad.validate() {
            Err(e) => assert!(
                e.to_string().contains("job.recommendations.refresh_epochs"),
                "{e}"
            ),
            Ok(()) => panic!("refresh_epochs = 0 must be rejected"),
        }
    }
}
