//! Batch computations of the aggregate tables (`category_hourly`, `category_weekday`,
//! `brand_daily`, `cart_abandonment_daily`), written straight from the output contract
//! with plain maps and full sorts, sharing no code with the engine, operators or decoders.
//!
//! Each function returns the table as a map from its primary key to the row's other
//! columns, money as the text the contract prescribes (two decimals) and ratios as the
//! number rounded to six decimals.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use chrono::{Datelike, Timelike};

use crate::BatchEvent;

/// The contract's top-k size for the category tables.
const TOP: usize = 10;

/// Per-key totals of one bucket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    views: i64,
    carts: i64,
    purchases: i64,
    revenue_cents: i64,
}

impl Totals {
    fn add(&mut self, e: &BatchEvent) {
        match e.event_type.as_str() {
            "view" => self.views += 1,
            "cart" => self.carts += 1,
            "purchase" => {
                self.purchases += 1;
                if e.price_cents > 0 {
                    self.revenue_cents += e.price_cents;
                }
            }
            _ => {}
        }
    }
}

/// Cents as the contract prints money: two decimals, e.g. `1682.00`, `-0.05`.
pub fn money_text(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// `num / den` rounded to six decimals, 0 when `den` is 0.
pub fn ratio6(num: i64, den: i64) -> f64 {
    if den == 0 {
        0.0
    } else {
        ((num as f64 / den as f64) * 1e6).round() / 1e6
    }
}

fn utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn day_text(ms: i64) -> String {
    utc(ms).format("%Y-%m-%d").to_string()
}

/// The hour an event falls in, as RFC 3339 text (`2019-11-01T13:00:00Z`).
pub fn hour_text(ms: i64) -> String {
    let t = utc(ms);
    format!("{}T{:02}:00:00Z", t.format("%Y-%m-%d"), t.hour())
}

/// Category totals per bucket: every category with at least one event of any type in the
/// bucket is present, even with all counts zero.
fn category_totals<B: Ord>(
    events: &[BatchEvent],
    bucket: impl Fn(&BatchEvent) -> B,
) -> BTreeMap<B, BTreeMap<String, Totals>> {
    let mut out: BTreeMap<B, BTreeMap<String, Totals>> = BTreeMap::new();
    for e in events {
        out.entry(bucket(e))
            .or_default()
            .entry(e.category_key())
            .or_default()
            .add(e);
    }
    out
}

/// A `category_hourly` row without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyRow {
    /// Category key.
    pub category: String,
    /// Views.
    pub views: i64,
    /// Carts.
    pub carts: i64,
    /// Purchases.
    pub purchases: i64,
    /// Revenue text.
    pub revenue: String,
}

/// `category_hourly`: (hour text, rank) -> row. The 10 categories with most views, ties by
/// more purchases, then category ascending (byte order).
pub fn batch_category_hourly(events: &[BatchEvent]) -> BTreeMap<(String, u64), HourlyRow> {
    let mut out = BTreeMap::new();
    for (hour, cats) in category_totals(events, |e| hour_text(e.time_ms)) {
        let mut ranked: Vec<(String, Totals)> = cats.into_iter().collect();
        ranked.sort_by(|(a, ta), (b, tb)| {
            (Reverse(ta.views), Reverse(ta.purchases), a.as_bytes()).cmp(&(
                Reverse(tb.views),
                Reverse(tb.purchases),
                b.as_bytes(),
            ))
        });
        for (i, (category, t)) in ranked.into_iter().take(TOP).enumerate() {
            let row = HourlyRow {
                category,
                views: t.views,
                carts: t.carts,
                purchases: t.purchases,
                revenue: money_text(t.revenue_cents),
            };
            out.insert((hour.clone(), i as u64 + 1), row);
        }
    }
    out
}

/// A `category_weekday` row without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeekdayRow {
    /// Category key.
    pub category: String,
    /// Views.
    pub views: i64,
    /// Purchases.
    pub purchases: i64,
    /// Revenue text.
    pub revenue: String,
}

/// `category_weekday`: (weekday 0 = Monday, rank) -> row. The 10 categories with most
/// purchases, ties by more revenue, then category ascending (byte order).
pub fn batch_category_weekday(events: &[BatchEvent]) -> BTreeMap<(u64, u64), WeekdayRow> {
    let mut out = BTreeMap::new();
    let weekday = |e: &BatchEvent| u64::from(utc(e.time_ms).weekday().num_days_from_monday());
    for (day, cats) in category_totals(events, weekday) {
        let mut ranked: Vec<(String, Totals)> = cats.into_iter().collect();
        ranked.sort_by(|(a, ta), (b, tb)| {
            (
                Reverse(ta.purchases),
                Reverse(ta.revenue_cents),
                a.as_bytes(),
            )
                .cmp(&(
                    Reverse(tb.purchases),
                    Reverse(tb.revenue_cents),
                    b.as_bytes(),
                ))
        });
        for (i, (category, t)) in ranked.into_iter().take(TOP).enumerate() {
            let row = WeekdayRow {
                category,
                views: t.views,
                purchases: t.purchases,
                revenue: money_text(t.revenue_cents),
            };
            out.insert((day, i as u64 + 1), row);
        }
    }
    out
}

/// A `brand_daily` row without its key.
#[derive(Debug, Clone, PartialEq)]
pub struct BrandRow {
    /// Views.
    pub views: i64,
    /// Carts.
    pub carts: i64,
    /// Purchases.
    pub purchases: i64,
    /// Revenue text.
    pub revenue: String,
    /// purchases / views, 0 without views, rounded to 6 decimals.
    pub conversion: f64,
}

/// `brand_daily`: (day, brand) -> row, non-null brands; rows whose counts (views, carts,
/// purchases, revenue) are all zero are absent.
pub fn batch_brand_daily(events: &[BatchEvent]) -> BTreeMap<(String, String), BrandRow> {
    let mut totals: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for e in events {
        if let Some(brand) = &e.brand {
            totals
                .entry((day_text(e.time_ms), brand.clone()))
                .or_default()
                .add(e);
        }
    }
    totals
        .into_iter()
        .filter(|(_, t)| *t != Totals::default())
        .map(|(k, t)| {
            let row = BrandRow {
                views: t.views,
                carts: t.carts,
                purchases: t.purchases,
                revenue: money_text(t.revenue_cents),
                conversion: ratio6(t.purchases, t.views),
            };
            (k, row)
        })
        .collect()
}

/// A `cart_abandonment_daily` row without its key.
#[derive(Debug, Clone, PartialEq)]
pub struct AbandonmentRow {
    /// Sessions with a cart event.
    pub sessions_with_cart: i64,
    /// Sessions with a purchase event.
    pub sessions_with_purchase: i64,
    /// Sessions with a cart event and no purchase event.
    pub abandoned_sessions: i64,
    /// abandoned / with cart, 0 when none, rounded to 6 decimals.
    pub abandonment_rate: f64,
}

/// `cart_abandonment_daily`: day of each session's first event -> row; a day appears when
/// one of its sessions has a cart or a purchase. Events without a session are left out.
pub fn batch_cart_abandonment(events: &[BatchEvent]) -> BTreeMap<String, AbandonmentRow> {
    // session -> (first time, has cart, has purchase)
    let mut sessions: HashMap<&str, (i64, bool, bool)> = HashMap::new();
    for e in events {
        let Some(s) = &e.session else { continue };
        let entry = sessions
            .entry(s.as_str())
            .or_insert((e.time_ms, false, false));
        entry.0 = entry.0.min(e.time_ms);
        entry.1 |= e.event_type == "cart";
        entry.2 |= e.event_type == "purchase";
    }
    let mut days: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for (first, cart, purchase) in sessions.into_values() {
        if !(cart || purchase) {
            continue;
        }
        let d = days.entry(day_text(first)).or_default();
        d.0 += i64::from(cart);
        d.1 += i64::from(purchase);
        d.2 += i64::from(cart && !purchase);
    }
    days.into_iter()
        .map(|(day, (with_cart, with_purchase, abandoned))| {
            let row = AbandonmentRow {
                sessions_with_cart: with_cart,
                sessions_with_purchase: with_purchase,
                abandoned_sessions: abandoned,
                abandonment_rate: ratio6(abandoned, with_cart),
            };
            (day, row)
        })
        .collect()
}

/// The raw JSON text of a top-level number field in a one-line JSON object, e.g. the
/// `1682.00` of `"revenue":1682.00` (parsing into `serde_json::Value` would lose the
/// trailing zeros the contract prints).
pub fn raw_number<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let pat = format!("\"{field}\":");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_hours_print_as_the_contract_says() {
        assert_eq!(money_text(168_200), "1682.00");
        assert_eq!(money_text(5), "0.05");
        assert_eq!(money_text(-5), "-0.05");
        // 2019-11-01 13:59:59.999 UTC
        assert_eq!(hour_text(1_572_616_799_999), "2019-11-01T13:00:00Z");
        assert_eq!(
            raw_number(r#"{"a":"x","revenue":10.50,"b":1}"#, "revenue"),
            Some("10.50")
        );
        assert_eq!(raw_number(r#"{"revenue":0.00}"#, "revenue"), Some("0.00"));
    }
}
