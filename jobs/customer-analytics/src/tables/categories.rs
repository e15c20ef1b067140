//! `category_hourly` and `category_weekday`: the ten leading categories per event-time hour
//! and per weekday, with their counters.
//!
//! ```text
//!  events ─((hour, category), EventCounters::of(e))─ sum_by_key ─ (hour, category counts)
//!         ─ top_k(10, views desc, purchases desc, category asc) ─▶ category_hourly
//!  events ─((weekday, category), EventCounters::of(e))─ sum_by_key ─ (weekday, category counts)
//!         ─ top_k(10, purchases desc, revenue desc, category asc) ─▶ category_weekday
//! ```
//!
//! Semantics (see `docs/output-contract.md`): buckets are by event time in UTC; the
//! category is [`category_key`]; every category with at least one event of any type in the
//! bucket can rank, including one with 0 views; ties end on the category text ascending
//! (UTF-8 bytes), so ranks are a total order and do not depend on arrival order or workers.
//! A bucket with fewer than ten categories has fewer rows.
//!
//! State: one [`EventCounters`] total per (bucket, category) (a monoid sum, not per event),
//! plus the top-k's arrangement of those totals and its ten rows per bucket. A change in a
//! bucket re-ranks that bucket's categories once per epoch (hundreds of categories).

use std::cmp::Reverse;

use cap_connectors::clickstream::Event;
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::{
    day_of, format_rfc3339, hour_of, parse_day, weekday_of, MS_PER_DAY, MS_PER_HOUR,
};
use cap_engine::values::Money;
use cap_operators::aggregate::{contributions, totals};
use cap_operators::topk::top_k_named;
use compact_str::CompactString;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::counters::{category_key, EventCounters};

/// How many categories each bucket ranks.
pub const TOP_CATEGORIES: usize = 10;

/// The start of a UTC hour (ms since the epoch): RFC 3339 text `2019-11-01T13:00:00Z` in
/// human-readable formats (JSON output), the milliseconds in binary formats (bincode,
/// between workers). Orders chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcHour(pub i64);

impl Serialize for UtcHour {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format_rfc3339(self.0))
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for UtcHour {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<UtcHour, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            parse_hour(&text).map(UtcHour).ok_or_else(|| {
                serde::de::Error::custom(format!("`{text}` is not a YYYY-MM-DDTHH:00:00Z hour"))
            })
        } else {
            i64::deserialize(d).map(UtcHour)
        }
    }
}

/// Parses `YYYY-MM-DDTHH:00:00Z` (the form [`UtcHour`] prints) to milliseconds.
fn parse_hour(text: &str) -> Option<i64> {
    let (day, rest) = text.split_at_checked(10)?;
    let b = rest.as_bytes();
    if b.len() != 10 || b[0] != b'T' || !b[1..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    if &rest[3..] != ":00:00Z" {
        return None;
    }
    let hour = i64::from(b[1] - b'0') * 10 + i64::from(b[2] - b'0');
    if hour >= 24 {
        return None;
    }
    Some(i64::from(parse_day(day)?) * MS_PER_DAY + hour * MS_PER_HOUR)
}

/// A category's counters within one bucket: the value the top-k ranks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CategoryCounts {
    /// The category key.
    pub category: CompactString,
    /// Its counters in the bucket.
    pub counters: EventCounters,
}

/// `category_hourly`: one of the ten categories with most views in an hour.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CategoryHourlyRow {
    /// Start of the UTC hour.
    pub hour: UtcHour,
    /// 1..=10.
    pub rank: u32,
    /// The category key.
    pub category: CompactString,
    /// `view` events.
    pub views: i64,
    /// `cart` events.
    pub carts: i64,
    /// `purchase` events (any price).
    pub purchases: i64,
    /// Sum of purchase prices > 0.
    pub revenue: Money,
}

/// Primary key of `category_hourly`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct HourRankKey {
    /// The hour.
    pub hour: UtcHour,
    /// The rank.
    pub rank: u32,
}

impl TableRow for CategoryHourlyRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["hour", "rank"],
            &[
                ("hour", Timestamp),
                ("rank", UInt32),
                ("category", Text),
                ("views", Int64),
                ("carts", Int64),
                ("purchases", Int64),
                ("revenue", Money),
            ],
        ))
    }
    type Key = HourRankKey;
    fn key(&self) -> HourRankKey {
        HourRankKey {
            hour: self.hour,
            rank: self.rank,
        }
    }
}

/// `category_weekday`: one of the ten categories with most purchases on a weekday.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CategoryWeekdayRow {
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    /// 1..=10.
    pub rank: u32,
    /// The category key.
    pub category: CompactString,
    /// `view` events.
    pub views: i64,
    /// `purchase` events (any price).
    pub purchases: i64,
    /// Sum of purchase prices > 0.
    pub revenue: Money,
}

/// Primary key of `category_weekday`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WeekdayRankKey {
    /// The weekday.
    pub weekday: u8,
    /// The rank.
    pub rank: u32,
}

impl TableRow for CategoryWeekdayRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["weekday", "rank"],
            &[
                ("weekday", UInt8),
                ("rank", UInt32),
                ("category", Text),
                ("views", Int64),
                ("purchases", Int64),
                ("revenue", Money),
            ],
        ))
    }
    type Key = WeekdayRankKey;
    fn key(&self) -> WeekdayRankKey {
        WeekdayRankKey {
            weekday: self.weekday,
            rank: self.rank,
        }
    }
}

/// Per bucket, each category's counters (checkpointed under `name`).
fn category_counts<'s, B>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
    name: &str,
    bucket: fn(i64) -> B,
) -> Result<VecCollection<'s, u64, (B, CategoryCounts)>, BuildError>
where
    B: differential_dataflow::ExchangeData + std::hash::Hash,
{
    let counts = ck.checkpointed(
        name,
        contributions(events.clone(), name, move |e: Event| {
            let key = (bucket(e.event_time), category_key(&e));
            Some((key, EventCounters::of(e.event_type, e.price_cents)))
        }),
    )?;
    Ok(totals(counts).map(|((b, category), counters)| (b, CategoryCounts { category, counters })))
}

fn hour_bucket(t: i64) -> i64 {
    hour_of(t)
}

fn weekday_bucket(t: i64) -> u8 {
    weekday_of(day_of(t))
}

/// The `category_hourly` rows of `events`. Checkpointed state: the counters of each
/// `(hour, category)`.
pub fn category_hourly<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, CategoryHourlyRow>, BuildError> {
    let counts = category_counts(ck, events, "hour_category", hour_bucket)?;
    Ok(top_k_named(
        counts,
        "CategoryHourlyTop",
        TOP_CATEGORIES,
        |c: &CategoryCounts| {
            (
                Reverse(c.counters.views),
                Reverse(c.counters.purchases),
                c.category.clone(),
            )
        },
    )
    .map(|(hour, (rank, c))| CategoryHourlyRow {
        hour: UtcHour(hour),
        rank,
        category: c.category,
        views: c.counters.views,
        carts: c.counters.carts,
        purchases: c.counters.purchases,
        revenue: Money(c.counters.revenue_cents),
    }))
}

/// The `category_weekday` rows of `events`. Checkpointed state: the counters of each
/// `(weekday, category)`.
pub fn category_weekday<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, CategoryWeekdayRow>, BuildError> {
    let counts = category_counts(ck, events, "weekday_category", weekday_bucket)?;
    Ok(top_k_named(
        counts,
        "CategoryWeekdayTop",
        TOP_CATEGORIES,
        |c: &CategoryCounts| {
            (
                Reverse(c.counters.purchases),
                Reverse(c.counters.revenue_cents),
                c.category.clone(),
            )
        },
    )
    .map(|(weekday, (rank, c))| CategoryWeekdayRow {
        weekday,
        rank,
        category: c.category,
        views: c.counters.views,
        purchases: c.counters.purchases,
        revenue: Money(c.counters.revenue_cents),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::counters::fixtures::{at, event};
    use cap_connectors::clickstream::EventType::{self, *};
    use cap_engine::job::NoCheckpoints;
    use cap_engine::time::ms_from_civil;
    use cap_operators::testing::{accumulate_at, run_on_workers};

    /// Hour 13 of 2019-11-01 (a Friday): b and c tie on views and purchases (b first by
    /// name), a has no purchase, category id 42 only a removal (0 views, still ranks).
    /// Hour 14: eleven categories with views, so one falls off the top 10. At epoch 1,
    /// c's purchase is retracted.
    fn updates() -> Vec<(Event, u64, isize)> {
        let e = |m: u32, kind: EventType, cat: &str, price: i64| {
            (event(at(1, 13, m), kind, cat, "", price, ""), 0u64, 1isize)
        };
        let mut u = vec![
            e(1, View, "x.a", 0),
            e(2, View, "x.a", 0),
            e(3, View, "x.b", 0),
            e(4, View, "x.b", 0),
            e(5, Purchase, "x.b", 1000),
            e(6, View, "x.c", 0),
            e(7, View, "x.c", 0),
            e(8, Purchase, "x.c", 0),
            e(9, RemoveFromCart, "", 0),
        ];
        for i in 0..10 {
            let cat = format!("y.{i:02}");
            u.push((event(at(1, 14, i), View, &cat, "", 0, ""), 0, 1));
        }
        u.push((event(at(1, 14, 30), View, "x.a", "", 0, ""), 0, 1));
        u.push((event(at(1, 14, 31), View, "x.a", "", 0, ""), 0, 1));
        u.push((event(at(1, 13, 8), Purchase, "x.c", "", 0, ""), 1, -1));
        u
    }

    fn ranking(
        rows: &std::collections::BTreeMap<CategoryHourlyRow, isize>,
        hour: u32,
    ) -> Vec<String> {
        rows.keys()
            .filter(|r| r.hour == UtcHour(at(1, hour, 0)))
            .map(|r| format!("{} {}", r.rank, r.category))
            .collect()
    }

    #[test]
    fn hourly_ranks_views_then_purchases_then_name_and_follows_retractions() {
        let out = run_on_workers(2, updates(), |c| {
            category_hourly(&mut NoCheckpoints, &c).expect("builds")
        });
        let at0 = accumulate_at(&out, 0);
        assert_eq!(ranking(&at0, 13), ["1 x.b", "2 x.c", "3 x.a", "4 42"]);
        let hour14 = ranking(&at0, 14);
        assert_eq!(hour14.len(), 10);
        assert_eq!(hour14[0], "1 x.a");
        assert_eq!(hour14[9], "10 y.08");
        let b = at0.keys().find(|r| r.category == "x.b").cloned();
        assert_eq!(
            b.map(|r| (r.views, r.carts, r.purchases, r.revenue)),
            Some((2, 0, 1, Money(1000)))
        );
        let at1 = accumulate_at(&out, 1);
        assert_eq!(ranking(&at1, 13), ["1 x.b", "2 x.a", "3 x.c", "4 42"]);
        assert!(at1.values().all(|m| *m == 1));
    }

    #[test]
    fn weekday_ranks_purchases_then_revenue_then_name() {
        let out = run_on_workers(2, updates(), |c| {
            category_weekday(&mut NoCheckpoints, &c).expect("builds")
        });
        let names = |epoch| -> Vec<String> {
            accumulate_at(&out, epoch)
                .keys()
                .map(|r| format!("{} {} {}", r.weekday, r.rank, r.category))
                .collect()
        };
        let at0 = names(0);
        assert_eq!(at0.len(), 10);
        assert_eq!(
            &at0[..5],
            ["4 1 x.b", "4 2 x.c", "4 3 42", "4 4 x.a", "4 5 y.00"]
        );
        assert_eq!(&names(1)[..4], ["4 1 x.b", "4 2 42", "4 3 x.a", "4 4 x.c"]);
    }

    #[test]
    fn hours_print_as_rfc3339_and_travel_as_milliseconds() -> anyhow::Result<()> {
        let h = UtcHour(ms_from_civil(2019, 11, 1, 13, 0, 0, 0));
        assert_eq!(serde_json::to_string(&h)?, "\"2019-11-01T13:00:00Z\"");
        assert_eq!(
            serde_json::from_str::<UtcHour>("\"2019-11-01T13:00:00Z\"")?,
            h
        );
        assert!(serde_json::from_str::<UtcHour>("\"2019-11-01T13:05:00Z\"").is_err());
        assert!(serde_json::from_str::<UtcHour>("\"2019-11-01T24:00:00Z\"").is_err());
        assert_eq!(
            bincode::deserialize::<UtcHour>(&bincode::serialize(&h)?)?,
            h
        );
        Ok(())
    }

    /// Regression guard: rows whose JSON differs from their wire form must round-trip
    /// through bincode, or rows exchanged between processes arrive as garbage.
    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let hourly = CategoryHourlyRow {
            hour: UtcHour(ms_from_civil(2019, 11, 1, 13, 0, 0, 0)),
            rank: 3,
            category: "electronics.smartphone".into(),
            views: 12,
            carts: 2,
            purchases: 1,
            revenue: Money(168_200),
        };
        assert_eq!(
            bincode::deserialize::<CategoryHourlyRow>(&bincode::serialize(&hourly)?)?,
            hourly
        );
        assert_eq!(
            serde_json::to_string(&hourly)?,
            r#"{"hour":"2019-11-01T13:00:00Z","rank":3,"category":"electronics.smartphone","views":12,"carts":2,"purchases":1,"revenue":1682.00}"#
        );
        let weekday = CategoryWeekdayRow {
            weekday: 4,
            rank: 1,
            category: "2053013555631882655".into(),
            views: 0,
            purchases: 0,
            revenue: Money(0),
        };
        assert_eq!(
            bincode::deserialize::<CategoryWeekdayRow>(&bincode::serialize(&weekday)?)?,
            weekday
        );
        assert_eq!(
            serde_json::to_string(&weekday)?,
            r#"{"weekday":4,"rank":1,"category":"2053013555631882655","views":0,"purchases":0,"revenue":0.00}"#
        );
        Ok(())
    }
}
