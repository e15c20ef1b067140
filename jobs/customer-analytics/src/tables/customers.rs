//! `customer_traits` (one row per user) and `segments` (user, segment) memberships.
//!
//! ```text
//!  events ─ facts (user, time, kind, product, price, session, category) ─┬─ sum_by_key(Activity) ────────┐
//!                                                                       ├─ min_max_by_key(time) ────────┤
//!                                                                       ├─ count_distinct_by_key(session)├─ combine_by_key ─▶ customer_traits
//!                                                                       ├─ count_distinct_by_key(product)│
//!                                                                       └─ top_k_by_count(category, 1) ─┘
//!  events ─ day ─ max_of ─▶ watermark day ─┐
//!  customer_traits ─ numbers ──────────────┴─ segments(rules from [job.segments]) ─▶ segments
//! ```
//!
//! State per user (see `cap_operators::traits`): one accumulated [`Activity`] (counters as
//! a monoid difference: O(users)); one entry per distinct (user, event time), (user,
//! session), (user, product) and (user, category); the outputs of those operators, and
//! their copy in `combine_by_key` (a hash map of each user's five parts); and, for segments,
//! the user's numbers in the joins that evaluate rules reading the watermark or a quantile
//! (keys that fail a rule's trait-only guard are not held there). Never per event.
//!
//! Semantics (docs/output-contract.md): purchases count purchase events of any price;
//! revenue sums purchase prices > 0; avg_order_value = revenue / purchases rounded half
//! away from zero to the cent (0 when no purchases); sessions = distinct non-null
//! user_session; distinct_products over all event types; top_category = category key with
//! most events of any type, ties by key ascending (UTF-8 bytes); first_seen / last_seen are
//! the exact least / greatest event_time, printed in RFC 3339 UTC.

use std::collections::BTreeMap;

use cap_connectors::clickstream::{Event, EventType, SessionId};
use cap_engine::config::ConfigError;
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::{day_of, UtcTime};
use cap_engine::values::Money;
use cap_operators::aggregate::{contributions, totals};
use cap_operators::local::pre_aggregate;
use cap_operators::predicate::{Schema, TraitKind, TraitValues};
use cap_operators::segments::RuleSet;
use cap_operators::traits::{
    combine_by_key, count_distinct_by_key, max_of, min_max_by_key, top_k_by_count,
};
use compact_str::CompactString;
use differential_dataflow::difference::{IsZero, Monoid, Multiply, Semigroup};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// `customer_traits`: one row per user with any event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CustomerTraitsRow {
    /// The user.
    pub user_id: u64,
    /// Least event_time of the user's events.
    pub first_seen: UtcTime,
    /// Greatest event_time of the user's events.
    pub last_seen: UtcTime,
    /// Distinct non-null user_session.
    pub sessions: u64,
    /// View events.
    pub views: u64,
    /// Cart events.
    pub carts: u64,
    /// Purchase events (any price).
    pub purchases: u64,
    /// Sum of purchase prices > 0.
    pub revenue: Money,
    /// revenue / purchases, rounded half away from zero to the cent; 0 when no purchases.
    pub avg_order_value: Money,
    /// Distinct product_id over all event types.
    pub distinct_products: u64,
    /// The category key with most events, ties by key ascending.
    pub top_category: CompactString,
}

/// Primary key of `customer_traits`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UserKey {
    /// The user.
    pub user_id: u64,
}

impl TableRow for CustomerTraitsRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["user_id"],
            &[
                ("user_id", UInt64),
                ("first_seen", Timestamp),
                ("last_seen", Timestamp),
                ("sessions", UInt64),
                ("views", UInt64),
                ("carts", UInt64),
                ("purchases", UInt64),
                ("revenue", Money),
                ("avg_order_value", Money),
                ("distinct_products", UInt64),
                ("top_category", Text),
            ],
        ))
    }
    type Key = UserKey;
    fn key(&self) -> UserKey {
        UserKey {
            user_id: self.user_id,
        }
    }
}

/// `segments`: a user is in a segment (a row per membership; the key is the whole row).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentRow {
    /// The user.
    pub user_id: u64,
    /// The segment's name (a key of `[job.segments]`).
    pub segment: String,
}

impl TableRow for SegmentRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["user_id", "segment"],
            &[("user_id", UInt64), ("segment", Text)],
        ))
    }
    type Key = SegmentRow;
    fn key(&self) -> SegmentRow {
        self.clone()
    }
}

/// A user's additive activity, accumulated as a differential *difference* (a commutative
/// monoid with negation), so the traits state holds one `Activity` per user whatever the
/// number of events. `events` counts every event, so a user with only removals is present.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Activity {
    /// Events of any type.
    pub events: i64,
    /// View events.
    pub views: i64,
    /// Cart events.
    pub carts: i64,
    /// Purchase events.
    pub purchases: i64,
    /// Sum of purchase prices > 0, in cents.
    pub revenue_cents: i64,
}

impl Activity {
    /// The activity of one event.
    pub fn of(kind: EventType, price_cents: i64) -> Activity {
        Activity {
            events: 1,
            views: i64::from(kind == EventType::View),
            carts: i64::from(kind == EventType::Cart),
            purchases: i64::from(kind == EventType::Purchase),
            revenue_cents: if kind == EventType::Purchase && price_cents > 0 {
                price_cents
            } else {
                0
            },
        }
    }
}

impl IsZero for Activity {
    fn is_zero(&self) -> bool {
        *self == Activity::default()
    }
}

impl Semigroup for Activity {
    fn plus_equals(&mut self, rhs: &Self) {
        self.events += rhs.events;
        self.views += rhs.views;
        self.carts += rhs.carts;
        self.purchases += rhs.purchases;
        self.revenue_cents += rhs.revenue_cents;
    }
}

impl Monoid for Activity {
    fn zero() -> Self {
        Activity::default()
    }
}

impl differential_dataflow::difference::Abelian for Activity {
    fn negate(&mut self) {
        *self = self.multiply(&-1);
    }
}

impl Multiply<isize> for Activity {
    type Output = Activity;
    fn multiply(self, rhs: &isize) -> Activity {
        let r = *rhs as i64;
        Activity {
            events: self.events * r,
            views: self.views * r,
            carts: self.carts * r,
            purchases: self.purchases * r,
            revenue_cents: self.revenue_cents * r,
        }
    }
}

/// The category key of the contract: category_code, or category_id as decimal text.
pub fn category_key(e: &Event) -> CompactString {
    match &e.category_code {
        Some(code) => code.clone(),
        None => compact_str::format_compact!("{}", e.category_id),
    }
}

/// `revenue / purchases` rounded half away from zero to the cent (0 when no purchases).
pub fn avg_order_cents(revenue_cents: i64, purchases: u64) -> i64 {
    if purchases == 0 {
        return 0;
    }
    let (r, p) = (i128::from(revenue_cents), i128::from(purchases));
    let q = (2 * r.abs() + p) / (2 * p);
    (if r < 0 { -q } else { q }) as i64
}

/// The per-event projection the traits need (smaller than [`Event`] to fan out).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Fact {
    user: u64,
    time: i64,
    kind: EventType,
    product: u64,
    price_cents: i64,
    session: Option<SessionId>,
    category: CompactString,
}

/// One user's piece of a traits row, gathered per user.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Part {
    Activity(Activity),
    Span(i64, i64),
    Sessions(u64),
    Products(u64),
    TopCategory(CompactString),
}

/// The `customer_traits` rows of `events`. Checkpointed state, per user: the activity
/// counters, the distinct event times, sessions, products and the count of each category.
pub fn customer_traits<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, CustomerTraitsRow>, BuildError> {
    let facts = events.clone().map(|e| Fact {
        user: e.user_id,
        time: e.event_time,
        kind: e.event_type,
        product: e.product_id,
        price_cents: e.price_cents,
        category: category_key(&e),
        session: e.user_session,
    });
    let activity = ck.checkpointed(
        "user_activity",
        contributions(
            facts
                .clone()
                .map(|f| (f.user, Activity::of(f.kind, f.price_cents))),
            "user_activity",
            Some,
        ),
    )?;
    let activity = totals(activity).map(|(u, a)| (u, Part::Activity(a)));
    let times = ck.checkpointed(
        "user_times",
        pre_aggregate(facts.clone().map(|f| (f.user, f.time)), "user_times"),
    )?;
    let span = min_max_by_key(times).map(|(u, (first, last))| (u, Part::Span(first, last)));
    let sessions = ck.checkpointed(
        "user_session",
        pre_aggregate(
            facts.clone().flat_map(|f| f.session.map(|s| (f.user, s))),
            "user_session",
        ),
    )?;
    let sessions = count_distinct_by_key(sessions).map(|(u, n)| (u, Part::Sessions(n)));
    let products = ck.checkpointed(
        "user_product",
        pre_aggregate(facts.clone().map(|f| (f.user, f.product)), "user_product"),
    )?;
    let products = count_distinct_by_key(products).map(|(u, n)| (u, Part::Products(n)));
    let categories = ck.checkpointed(
        "user_category",
        pre_aggregate(facts.map(|f| (f.user, f.category)), "user_category"),
    )?;
    let top = top_k_by_count(categories, 1).map(|(u, r)| (u, Part::TopCategory(r.value)));

    let parts = activity
        .concat(span)
        .concat(sessions)
        .concat(products)
        .concat(top);
    Ok(
        combine_by_key(parts, "customer_traits", |user: &u64, input| {
            let mut activity = None;
            let mut span = None;
            let (mut sessions, mut products, mut top) = (0, 0, None);
            for (part, d) in input {
                if *d <= 0 {
                    continue;
                }
                match part {
                    Part::Activity(a) => activity = Some(*a),
                    Part::Span(f, l) => span = Some((*f, *l)),
                    Part::Sessions(n) => sessions = *n,
                    Part::Products(n) => products = *n,
                    Part::TopCategory(c) => top = Some(c.clone()),
                }
            }
            // Every event yields an activity, a span and a category: a user without one of
            // them has no events.
            let (Some(a), Some((first, last)), Some(top)) = (activity, span, top) else {
                return None;
            };
            let purchases = a.purchases.max(0) as u64;
            Some(CustomerTraitsRow {
                user_id: *user,
                first_seen: UtcTime(first),
                last_seen: UtcTime(last),
                sessions,
                views: a.views.max(0) as u64,
                carts: a.carts.max(0) as u64,
                purchases,
                revenue: Money(a.revenue_cents),
                avg_order_value: Money(avg_order_cents(a.revenue_cents, purchases)),
                distinct_products: products,
                top_category: top,
            })
        })
        .map(|(_user, row)| row),
    )
}

/// Each user's top_category, for tables that build on it (e.g. recommendations' fill).
pub fn top_category<'s>(
    traits: &VecCollection<'s, u64, CustomerTraitsRow>,
) -> VecCollection<'s, u64, (u64, CompactString)> {
    traits.clone().map(|r| (r.user_id, r.top_category))
}

/// The traits segment rules may name, in [`TraitNumbers`] order.
pub fn trait_schema() -> Schema {
    Schema::new(&[
        ("sessions", TraitKind::Count),
        ("views", TraitKind::Count),
        ("carts", TraitKind::Count),
        ("purchases", TraitKind::Count),
        ("revenue", TraitKind::Money),
        ("avg_order_value", TraitKind::Money),
        ("distinct_products", TraitKind::Count),
        ("first_seen", TraitKind::Time),
        ("last_seen", TraitKind::Time),
    ])
}

/// A traits row's numbers, in [`trait_schema`] order: what segment rules read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TraitNumbers(pub [i64; 9]);

impl From<&CustomerTraitsRow> for TraitNumbers {
    fn from(r: &CustomerTraitsRow) -> TraitNumbers {
        let n = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        TraitNumbers([
            n(r.sessions),
            n(r.views),
            n(r.carts),
            n(r.purchases),
            r.revenue.0,
            r.avg_order_value.0,
            n(r.distinct_products),
            r.first_seen.0,
            r.last_seen.0,
        ])
    }
}

impl TraitValues for TraitNumbers {
    fn trait_value(&self, index: usize) -> i64 {
        self.0.get(index).copied().unwrap_or(0)
    }
}

/// Compiles the `[job.segments]` rules (name -> rule text; an empty text disables a
/// segment). An invalid rule is a configuration error naming `job.segments.<name>`, the
/// column, the token and the reason.
pub fn segment_rules(rules: &BTreeMap<String, String>) -> Result<RuleSet, BuildError> {
    let enabled = rules
        .iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .map(|(name, text)| (name.as_str(), text.as_str()));
    RuleSet::compile(&trait_schema(), enabled).map_err(|e| {
        BuildError::Config(ConfigError::Invalid {
            key: format!("job.segments.{}", e.rule),
            reason: e.to_string(),
        })
    })
}

/// The watermark's UTC day: the day of the greatest event_time seen so far (one row).
/// Checkpointed state: the days with events.
pub fn watermark_day<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, i64>, BuildError> {
    let days = ck.checkpointed(
        "event_days",
        pre_aggregate(
            events.clone().map(|e| i64::from(day_of(e.event_time))),
            "event_days",
        ),
    )?;
    Ok(max_of(days))
}

/// The `segments` rows: the users of `traits` that satisfy each rule, against the watermark
/// of `events`.
pub fn segments<'s>(
    ck: &mut impl Checkpoints<'s>,
    traits: &VecCollection<'s, u64, CustomerTraitsRow>,
    events: &VecCollection<'s, u64, Event>,
    rules: &RuleSet,
) -> Result<VecCollection<'s, u64, SegmentRow>, BuildError> {
    let numbers = traits.clone().map(|r| (r.user_id, TraitNumbers::from(&r)));
    let names: Vec<String> = rules.rules().iter().map(|r| r.name.clone()).collect();
    let watermark = watermark_day(ck, events)?;
    Ok(
        cap_operators::segments::segments(numbers, watermark, rules).map(move |(user_id, i)| {
            SegmentRow {
                user_id,
                segment: names.get(usize::from(i)).cloned().unwrap_or_default(),
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_order_value_rounds_half_away_from_zero() {
        assert_eq!(avg_order_cents(0, 0), 0);
        assert_eq!(avg_order_cents(1000, 0), 0);
        assert_eq!(avg_order_cents(1000, 3), 333);
        assert_eq!(avg_order_cents(1001, 2), 501); // 500.5 -> 501
        assert_eq!(avg_order_cents(999, 2), 500); // 499.5 -> 500
        assert_eq!(avg_order_cents(2000, 3), 667);
        assert_eq!(avg_order_cents(-1001, 2), -501);
    }

    #[test]
    fn activity_is_a_group() {
        let a = Activity::of(EventType::Purchase, 1999);
        let mut s = a;
        s.plus_equals(&Activity::of(EventType::Purchase, -5));
        assert_eq!((s.purchases, s.revenue_cents, s.events), (2, 1999, 2));
        s.plus_equals(&a.multiply(&-1));
        s.plus_equals(&Activity::of(EventType::Purchase, -5).multiply(&-1));
        assert!(s.is_zero());
    }

    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let row = CustomerTraitsRow {
            user_id: 7,
            first_seen: UtcTime(cap_engine::time::ms_from_civil(2019, 11, 1, 13, 5, 9, 0)),
            last_seen: UtcTime(cap_engine::time::ms_from_civil(2019, 11, 3, 0, 0, 0, 7)),
            sessions: 2,
            views: 10,
            carts: 1,
            purchases: 1,
            revenue: Money(16820),
            avg_order_value: Money(16820),
            distinct_products: 4,
            top_category: "electronics.smartphone".into(),
        };
        assert_eq!(
            bincode::deserialize::<CustomerTraitsRow>(&bincode::serialize(&row)?)?,
            row
        );
        let json = serde_json::to_value(&row)?;
        assert_eq!(json["first_seen"], "2019-11-01T13:05:09Z");
        assert_eq!(json["last_seen"], "2019-11-03T00:00:00.007Z");
        assert_eq!(serde_json::to_string(&row.revenue)?, "168.20");
        assert_eq!(
            serde_json::from_value::<CustomerTraitsRow>(json)?,
            row,
            "JSON round trip"
        );
        let seg = SegmentRow {
            user_id: 7,
            segment: "active".into(),
        };
        assert_eq!(
            bincode::deserialize::<SegmentRow>(&bincode::serialize(&seg)?)?,
            seg
        );
        Ok(())
    }

    #[test]
    fn default_rules_compile_and_a_bad_rule_names_its_key() -> anyhow::Result<()> {
        let layers = cap_engine::config::Layers::from_defaults(crate::DEFAULT_CONFIG)?;
        let settings: crate::Settings = layers.typed("job")?;
        let rules = segment_rules(&settings.segments)?;
        let names: Vec<&str> = rules.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "active",
                "at_risk",
                "bot_suspect",
                "cart_abandoner",
                "champion",
                "high_value",
                "new",
                "window_shopper"
            ]
        );
        let mut bad = settings.segments.clone();
        bad.insert("vip".into(), "revenue >= 100 and".into());
        bad.insert("new".into(), String::new()); // disabled
        let Err(e) = segment_rules(&bad) else {
            anyhow::bail!("a bad rule must fail")
        };
        let text = e.to_string();
        assert!(text.contains("job.segments.vip"), "{text}");
        assert!(text.contains("column 19"), "{text}");
        Ok(())
    }
}
