//! `brand_daily`: per UTC day and non-null brand, views, carts, purchases, revenue and
//! conversion.
//!
//! ```text
//!  events ─ brand non-null, not remove_from_cart ─((day, brand), EventCounters::of(e))─
//!         sum_by_key ─▶ brand_daily
//! ```
//!
//! Semantics (see `docs/output-contract.md`): `purchases` counts purchase events of any
//! price, `revenue` sums purchase prices > 0, `conversion` = purchases / views (0 when no
//! views). "Rows whose counts are all zero are absent": a brand whose only events that day
//! are `remove_from_cart` has views, carts, purchases and revenue all zero, so it has no
//! row. That is why `remove_from_cart` events are left out before summing: every remaining
//! event adds 1 to views, carts or purchases, so a total is non-zero exactly when its row
//! has a non-zero count, and `sum_by_key` drops zero totals by itself.
//!
//! State: one [`EventCounters`] total per (day, brand).

use cap_connectors::clickstream::{Event, EventType};
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::{day_of, UtcDay};
use cap_engine::values::{Money, Ratio};
use cap_operators::aggregate::{contributions, totals};
use compact_str::CompactString;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use super::counters::EventCounters;

/// `brand_daily`: one brand on one day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BrandDailyRow {
    /// The UTC day.
    pub day: UtcDay,
    /// The brand (non-null).
    pub brand: CompactString,
    /// `view` events.
    pub views: i64,
    /// `cart` events.
    pub carts: i64,
    /// `purchase` events (any price).
    pub purchases: i64,
    /// Sum of purchase prices > 0.
    pub revenue: Money,
    /// purchases / views, 0 when there are no views.
    pub conversion: Ratio,
}

/// Primary key of `brand_daily`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DayBrandKey {
    /// The day.
    pub day: UtcDay,
    /// The brand.
    pub brand: CompactString,
}

impl TableRow for BrandDailyRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["day", "brand"],
            &[
                ("day", Date),
                ("brand", Text),
                ("views", Int64),
                ("carts", Int64),
                ("purchases", Int64),
                ("revenue", Money),
                ("conversion", Float64),
            ],
        ))
    }
    type Key = DayBrandKey;
    fn key(&self) -> DayBrandKey {
        DayBrandKey {
            day: self.day,
            brand: self.brand.clone(),
        }
    }
}

/// The `brand_daily` rows of `events`. Checkpointed state: the counters of each
/// `(day, brand)`.
pub fn brand_daily<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, BrandDailyRow>, BuildError> {
    let counts = ck.checkpointed(
        "day_brand",
        contributions(events.clone(), "day_brand", |e: Event| {
            let brand = e
                .brand
                .filter(|_| e.event_type != EventType::RemoveFromCart)?;
            let counters = EventCounters::of(e.event_type, e.price_cents);
            Some(((day_of(e.event_time), brand), counters))
        }),
    )?;
    Ok(totals(counts).map(|((day, brand), c)| BrandDailyRow {
        day: UtcDay(day),
        brand,
        views: c.views,
        carts: c.carts,
        purchases: c.purchases,
        revenue: Money(c.revenue_cents),
        conversion: Ratio::new(c.purchases, c.views),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::counters::fixtures::{at, event};
    use cap_connectors::clickstream::EventType::*;
    use cap_engine::job::NoCheckpoints;
    use cap_engine::time::days_from_civil;
    use cap_operators::testing::{accumulate_at, run_on_workers};

    #[test]
    fn brands_with_only_removals_or_no_brand_have_no_row() {
        let updates = vec![
            (event(at(1, 10, 0), View, "c", "apple", 0, ""), 0u64, 1isize),
            (event(at(1, 10, 1), View, "c", "apple", 0, ""), 0, 1),
            (event(at(1, 10, 2), Cart, "c", "apple", 0, ""), 0, 1),
            (event(at(1, 10, 3), Purchase, "c", "apple", 2550, ""), 0, 1),
            (event(at(1, 10, 4), Purchase, "c", "apple", -100, ""), 0, 1),
            (
                event(at(1, 10, 5), RemoveFromCart, "c", "lg", 900, ""),
                0,
                1,
            ),
            (event(at(1, 10, 6), Purchase, "c", "", 900, ""), 0, 1),
            (event(at(2, 0, 0), Purchase, "c", "lg", 900, ""), 0, 1),
            (event(at(2, 0, 0), Purchase, "c", "lg", 900, ""), 1, -1),
        ];
        let out = run_on_workers(2, updates, |c| {
            brand_daily(&mut NoCheckpoints, &c).expect("builds")
        });
        let rows = |epoch| -> Vec<String> {
            accumulate_at(&out, epoch)
                .keys()
                .map(|r| serde_json::to_string(r).unwrap_or_default())
                .collect()
        };
        assert_eq!(
            rows(0),
            [
                r#"{"day":"2019-11-01","brand":"apple","views":2,"carts":1,"purchases":2,"revenue":25.50,"conversion":1.0}"#,
                r#"{"day":"2019-11-02","brand":"lg","views":0,"carts":0,"purchases":1,"revenue":9.00,"conversion":0.0}"#,
            ]
        );
        assert_eq!(rows(1).len(), 1);
    }

    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let row = BrandDailyRow {
            day: UtcDay(days_from_civil(2019, 11, 2)),
            brand: "samsung".into(),
            views: 3,
            carts: 1,
            purchases: 1,
            revenue: Money(0),
            conversion: Ratio::new(1, 3),
        };
        assert_eq!(
            bincode::deserialize::<BrandDailyRow>(&bincode::serialize(&row)?)?,
            row
        );
        assert_eq!(
            serde_json::to_string(&row)?,
            r#"{"day":"2019-11-02","brand":"samsung","views":3,"carts":1,"purchases":1,"revenue":0.00,"conversion":0.333333}"#
        );
        Ok(())
    }
}
