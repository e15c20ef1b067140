//! `customer-analytics`: the flagship CAP job, computing every table of the output
//! contract (`docs/output-contract.md`) incrementally over a clickstream.
//!
//! The job only wires operators of `cap_operators` and reads their settings from
//! `[job.*]`; each table's dataflow is drawn in its module under [`tables`]:
//!
//! ```text
//!  clickstream ─decode─┬─ dead letters ───────────────────────────────────────────▶ dead_letters
//!                      └─ events
//!                          ├─ clicks ─┬─ distinct_count (day,user) (day,session), count ─▶ daily_visitors
//!                          │          └─ funnel_units (session, ordered 3 steps)
//!                          │               └─ funnel_step_counts (day of first event) ─▶ session_funnel_daily
//!                          ├─ sum_by_key per session ─ per day ────────────────────────▶ cart_abandonment_daily
//!                          ├─ sum_by_key (hour|weekday, category) ─ top_k(10) ─────────▶ category_hourly, category_weekday
//!                          ├─ sum_by_key (day, brand) ─────────────────────────────────▶ brand_daily
//!                          ├─ windowed_tallies / distinct / baseline_surges ─ merge ───▶ alerts
//!                          ├─ traits (sums, min/max, distinct, top-1) ─ combine ──┬────▶ customer_traits
//!                          │                                                      ├─ segments(rules, watermark) ─▶ segments
//!                          │                                                      ├─ kmeans_segments ─▶ customer_clusters,
//!                          │                                                      │                     cluster_centroids
//!                          │                                   (user, top_category)┤
//!                          └─ (user, product) ─ similar_items(cosine, top 10) ─────┴─ recommend ─▶ similar_items,
//!                                                                                                 recommendations
//! ```
//!
//! Every table is, after each epoch, exactly the batch query over all events read so far
//! (the end-to-end tests check each against an independent batch computation), except
//! the k-means tables, which are exact after the input ends (see `tables::clusters`), and
//! `recommendations` when `refresh_epochs` > 1 (exact at refresh epochs and at the end).

use std::sync::Arc;

use cap_connectors::clickstream::{Event, EventType, SessionId};
use cap_engine::job::{BuildError, Dataflow, Job};
use cap_operators::funnel::NO_STEP;
use serde::{Deserialize, Serialize, Serializer};

pub mod rows;
pub mod tables;

/// The job-author guide (`docs/job-author-guide.md`); its code is compiled as a doctest.
#[doc = include_str!("../../../docs/job-author-guide.md")]
pub mod guide {}

pub use rows::{DailyVisitorsRow, DeadLetterRow, FunnelRow};

/// The job's own settings (`[job]`); unknown keys are rejected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[job.alerts]`: detection windows and thresholds of the `alerts` table.
    #[serde(default)]
    pub alerts: tables::alerts::AlertSettings,
    /// `[job.clusters]`: the k-means segmentation.
    #[serde(default)]
    pub clusters: tables::clusters::ClusterSettings,
    /// `[job.segments]`: segment name -> rule (docs/segments.md). The embedded defaults
    /// define eight; a layer may add rules, change them, or disable one with `""`.
    #[serde(default)]
    pub segments: std::collections::BTreeMap<String, String>,
    /// `[job.recommendations]`: similar_items and recommendations.
    #[serde(default)]
    pub recommendations: tables::recommendations::RecommendationSettings,
}

/// The customer-analytics job.
#[derive(Debug, Clone, Copy, Default)]
pub struct CustomerAnalytics;

/// The embedded default configuration: generator in, JSON-lines files out.
pub const DEFAULT_CONFIG: &str = include_str!("../customer-analytics.toml");

/// Output tables, in a stable order.
pub const TABLES: [&str; 14] = [
    "daily_visitors",
    "session_funnel_daily",
    "cart_abandonment_daily",
    "category_hourly",
    "category_weekday",
    "brand_daily",
    "customer_traits",
    "segments",
    "similar_items",
    "recommendations",
    "alerts",
    "customer_clusters",
    "cluster_centroids",
    "dead_letters",
];

/// The per-event projection the tables need: small, so fanning it out is cheap.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Click {
    /// Event time (ms).
    pub time: i64,
    /// User.
    pub user: u64,
    /// Session, when present.
    pub session: Option<SessionId>,
    /// Event kind.
    pub kind: EventType,
}

impl From<&Event> for Click {
    fn from(e: &Event) -> Click {
        Click {
            time: e.event_time,
            user: e.user_id,
            session: e.user_session.clone(),
            kind: e.event_type,
        }
    }
}

/// The funnel step of an event kind: view 0, cart 1, purchase 2, others none.
pub fn funnel_step(kind: EventType) -> u8 {
    match kind {
        EventType::View => 0,
        EventType::Cart => 1,
        EventType::Purchase => 2,
        EventType::RemoveFromCart => NO_STEP,
    }
}

impl Job for CustomerAnalytics {
    fn name(&self) -> &'static str {
        "customer-analytics"
    }

    fn about(&self) -> &'static str {
        "Real-time customer analytics over a clickstream: visitors, funnels and more, per the output contract"
    }

    fn default_config(&self) -> &'static str {
        DEFAULT_CONFIG
    }

    fn tables(&self) -> Vec<&'static str> {
        TABLES.to_vec()
    }

    fn build<'s>(&self, df: &mut Dataflow<'s>) -> Result<(), BuildError> {
        let settings: Settings = df.settings()?;
        let alert_rules = settings.alerts.rules()?;
        settings.clusters.validate()?;
        let segment_rules = tables::customers::segment_rules(&settings.segments)?;
        settings.recommendations.validate()?;
        let input = df.source("clickstream", &cap_connectors::open_clickstream)?;
        let events = input.records;
        let clicks = events.clone().map(|e| Click::from(&e));
        let any = |df: &Dataflow<'s>, tables: &[&str]| tables.iter().any(|t| df.wants(t));

        // `engine.tables` may ask for a subset: build only what the wanted tables need.
        // Every table builds on collections it checkpoints through `df` (see each
        // function's docs): after a restore, they start from the checkpoint.
        if df.wants("daily_visitors") {
            let rows = tables::visitors::daily_visitors(df, &clicks)?;
            df.sink("daily_visitors", rows)?;
        }
        if df.wants("session_funnel_daily") {
            let rows = tables::funnels::session_funnel_daily(df, &clicks)?;
            df.sink("session_funnel_daily", rows)?;
        }
        if df.wants("cart_abandonment_daily") {
            let rows = tables::abandonment::cart_abandonment_daily(df, &events)?;
            df.sink("cart_abandonment_daily", rows)?;
        }
        if df.wants("category_hourly") {
            let rows = tables::categories::category_hourly(df, &events)?;
            df.sink("category_hourly", rows)?;
        }
        if df.wants("category_weekday") {
            let rows = tables::categories::category_weekday(df, &events)?;
            df.sink("category_weekday", rows)?;
        }
        if df.wants("brand_daily") {
            let rows = tables::brands::brand_daily(df, &events)?;
            df.sink("brand_daily", rows)?;
        }
        if df.wants("alerts") {
            let late = df.registry().counter(
                "cap_alerts_late_updates_total",
                "event updates that fell only in alert windows already final (later than job.alerts.retention_ms behind the watermark)",
                vec![("worker", df.worker_index().to_string())],
            );
            let rows = tables::alerts::alerts(df, &events, &alert_rules, move |n| late.add(n))?;
            df.sink("alerts", rows)?;
        }

        let traits = if any(
            df,
            &[
                "customer_traits",
                "segments",
                "customer_clusters",
                "cluster_centroids",
                "recommendations",
            ],
        ) {
            Some(tables::customers::customer_traits(df, &events)?)
        } else {
            None
        };
        if let Some(traits) = &traits {
            if any(df, &["customer_clusters", "cluster_centroids"]) {
                let clusters = tables::clusters::customer_clusters(df, traits, &settings.clusters)?;
                df.sink("customer_clusters", clusters.customers)?;
                df.sink("cluster_centroids", clusters.centroids)?;
            }
            if df.wants("segments") {
                let rows = tables::customers::segments(df, traits, &events, &segment_rules)?;
                df.sink("segments", rows)?;
            }
            df.sink("customer_traits", traits.clone())?;
        }

        if any(df, &["similar_items", "recommendations"]) {
            let budget = settings.recommendations.pair_budget_mib << 20;
            let pair_stats = tables::recommendations::pair_metrics(
                df.registry(),
                df.worker_index(),
                budget / df.workers().max(1) as u64,
            );
            let similar = tables::recommendations::similar_products(
                df,
                &events,
                &settings.recommendations,
                pair_stats,
            )?;
            if df.wants("recommendations") {
                let top_categories = match &traits {
                    Some(traits) => traits.clone().map(|r| (r.user_id, r.top_category)),
                    None => tables::recommendations::top_category(df, &events)?,
                };
                let rows = tables::recommendations::recommendation_rows(
                    df,
                    &events,
                    similar.clone(),
                    top_categories,
                    &settings.recommendations,
                )?;
                df.sink("recommendations", rows)?;
            }
            df.sink(
                "similar_items",
                tables::recommendations::similar_item_rows(similar),
            )?;
        }

        // dead_letters
        df.sink(
            "dead_letters",
            input.dead_letters.map(|d| DeadLetterRow::from(&d)),
        )?;
        Ok(())
    }
}

/// Serializes a ratio `num / den` as a JSON number (0 when `den` is 0), rounded to 6 decimals.
pub fn ratio<S: Serializer>(num: u64, den: u64, s: S) -> Result<S::Ok, S::Error> {
    let r = if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    };
    s.serialize_f64((r * 1e6).round() / 1e6)
}

/// Runs the job's CLI with the standard connectors: the whole `main` of the binary.
pub fn main() -> std::process::ExitCode {
    cap_engine::cli::main(CustomerAnalytics, Arc::new(cap_connectors::Connectors))
}
