//! `customer_traits` and the default `segments` as batch queries over all events, written
//! straight from the output contract with plain maps and `chrono` (no engine, operator or
//! connector code). The default segment rules are re-stated here as Rust conditions from
//! their documented meaning, not parsed from the rule language.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat};

use crate::BatchEvent;

/// One user's traits, as the batch side computes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchTraits {
    /// RFC 3339 UTC of the least event time.
    pub first_seen: String,
    /// RFC 3339 UTC of the greatest event time.
    pub last_seen: String,
    /// Distinct non-null sessions.
    pub sessions: u64,
    /// View events.
    pub views: u64,
    /// Cart events.
    pub carts: u64,
    /// Purchase events.
    pub purchases: u64,
    /// Sum of purchase prices > 0, cents.
    pub revenue_cents: i64,
    /// revenue / purchases rounded half away from zero, cents; 0 without purchases.
    pub avg_order_value_cents: i64,
    /// Distinct products.
    pub distinct_products: u64,
    /// Category key with most events, ties by key ascending.
    pub top_category: String,
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Whole days since the Unix epoch of an instant (UTC).
fn utc_day(ms: i64) -> i64 {
    DateTime::from_timestamp_millis(ms)
        .and_then(|t| {
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            Some((t.date_naive() - epoch).num_days())
        })
        .unwrap_or(0)
}

/// `customer_traits` as a batch query: user -> traits.
pub fn batch_customer_traits(events: &[BatchEvent]) -> BTreeMap<u64, BatchTraits> {
    #[derive(Default)]
    struct Acc {
        first: i64,
        last: i64,
        sessions: BTreeSet<String>,
        products: BTreeSet<u64>,
        categories: HashMap<String, u64>,
        views: u64,
        carts: u64,
        purchases: u64,
        revenue: i64,
        seen: bool,
    }
    let mut users: BTreeMap<u64, Acc> = BTreeMap::new();
    for e in events {
        let a = users.entry(e.user_id).or_default();
        if !a.seen {
            a.first = e.time_ms;
            a.last = e.time_ms;
            a.seen = true;
        }
        a.first = a.first.min(e.time_ms);
        a.last = a.last.max(e.time_ms);
        if let Some(s) = &e.session {
            a.sessions.insert(s.clone());
        }
        a.products.insert(e.product_id);
        *a.categories.entry(e.category_key()).or_default() += 1;
        match e.event_type.as_str() {
            "view" => a.views += 1,
            "cart" => a.carts += 1,
            "purchase" => {
                a.purchases += 1;
                if e.price_cents > 0 {
                    a.revenue += e.price_cents;
                }
            }
            _ => {}
        }
    }
    users
        .into_iter()
        .map(|(user, a)| {
            let top = a
                .categories
                .iter()
                .max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0)))
                .map(|(c, _)| c.clone())
                .unwrap_or_default();
            let avg = if a.purchases == 0 {
                0
            } else {
                let p = a.purchases as i64;
                let (q, r) = (a.revenue / p, a.revenue % p);
                if 2 * r >= p {
                    q + 1
                } else {
                    q
                }
            };
            (
                user,
                BatchTraits {
                    first_seen: rfc3339(a.first),
                    last_seen: rfc3339(a.last),
                    sessions: a.sessions.len() as u64,
                    views: a.views,
                    carts: a.carts,
                    purchases: a.purchases,
                    revenue_cents: a.revenue,
                    avg_order_value_cents: avg,
                    distinct_products: a.products.len() as u64,
                    top_category: top,
                },
            )
        })
        .collect()
}

/// The default `segments` as a batch query: the set of (user, segment).
///
/// Watermark = the greatest event time; "days since" = whole UTC days between the trait's
/// day and the watermark's day. high_value: among purchasers, revenue at or above the
/// nearest-rank 90th percentile (rank ceil(0.9 N) of the ascending revenues).
pub fn batch_default_segments(
    events: &[BatchEvent],
    traits: &BTreeMap<u64, BatchTraits>,
) -> BTreeSet<(u64, String)> {
    let mut out = BTreeSet::new();
    let Some(watermark) = events.iter().map(|e| e.time_ms).max() else {
        return out;
    };
    let wday = utc_day(watermark);
    let mut first_last: HashMap<u64, (i64, i64)> = HashMap::new();
    for e in events {
        let fl = first_last
            .entry(e.user_id)
            .or_insert((e.time_ms, e.time_ms));
        fl.0 = fl.0.min(e.time_ms);
        fl.1 = fl.1.max(e.time_ms);
    }
    let mut revenues: Vec<i64> = traits
        .values()
        .filter(|t| t.purchases >= 1)
        .map(|t| t.revenue_cents)
        .collect();
    revenues.sort_unstable();
    let p90 = if revenues.is_empty() {
        None
    } else {
        let rank = (revenues.len() * 9).div_ceil(10).max(1);
        Some(revenues[rank - 1])
    };
    for (user, t) in traits {
        let (first, last) = first_last[user];
        let since_first = wday - utc_day(first);
        let since_last = wday - utc_day(last);
        let mut add = |s: &str| {
            out.insert((*user, s.to_owned()));
        };
        if since_first <= 7 {
            add("new");
        }
        if since_last <= 7 {
            add("active");
        }
        if t.purchases >= 1 && (14..=60).contains(&since_last) {
            add("at_risk");
        }
        if t.purchases >= 3 && since_last <= 7 {
            add("champion");
        }
        if t.carts >= 1 && t.purchases == 0 {
            add("cart_abandoner");
        }
        if t.views >= 10 && t.carts == 0 && t.purchases == 0 {
            add("window_shopper");
        }
        if t.purchases >= 1 && p90.is_some_and(|q| t.revenue_cents >= q) {
            add("high_value");
        }
        // views / sessions > 300, with x / 0 = 0
        if t.distinct_products > 500 || (t.sessions > 0 && t.views > 300 * t.sessions) {
            add("bot_suspect");
        }
    }
    out
}
