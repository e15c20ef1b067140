//! The additive counters behind `category_hourly`, `category_weekday` and `brand_daily`,
//! and the category key of the contract.
//!
//! [`EventCounters`] is a monoid difference (see `cap_operators::aggregate`): each event
//! contributes one [`EventCounters::of`], and `sum_by_key` adds them per key in place, so
//! the state of those tables is one total per (bucket, category) or (day, brand), never one
//! entry per event. A retracted or duplicated event subtracts or adds its contribution like
//! any other.

use cap_connectors::clickstream::{Event, EventType};
use compact_str::{CompactString, ToCompactString};

cap_operators::counters! {
    /// Per-key event counters. Revenue is in cents and counts purchases with price > 0
    /// only; `purchases` counts every purchase event, whatever its price.
    pub struct EventCounters {
        /// Events of any type, `remove_from_cart` included: a key with events has a
        /// non-zero total even with no view, cart or purchase (such a category can rank).
        pub events,
        /// `view` events.
        pub views,
        /// `cart` events.
        pub carts,
        /// `purchase` events (any price).
        pub purchases,
        /// Sum of the prices of `purchase` events with price > 0, in cents.
        pub revenue_cents,
    }
}

impl EventCounters {
    /// The contribution of one event.
    pub fn of(event_type: EventType, price_cents: i64) -> EventCounters {
        let is = |t: EventType| i64::from(event_type == t);
        let purchases = is(EventType::Purchase);
        EventCounters {
            events: 1,
            views: is(EventType::View),
            carts: is(EventType::Cart),
            purchases,
            revenue_cents: if purchases == 1 && price_cents > 0 {
                price_cents
            } else {
                0
            },
        }
    }
}

/// The contract's category key: `category_code`, or the decimal text of `category_id` when
/// the code is null. (A `u64` in decimal is at most 20 bytes: it never allocates.)
pub fn category_key(e: &Event) -> CompactString {
    match &e.category_code {
        Some(code) => code.clone(),
        None => e.category_id.to_compact_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::difference::IsZero;

    /// The `counters!` macro's serde form: an array of the fields, on the wire and in JSON.
    #[test]
    fn counters_serialize_as_an_array_of_fields() -> anyhow::Result<()> {
        let c = EventCounters {
            events: 3,
            views: 1,
            carts: 1,
            purchases: 1,
            revenue_cents: -2,
        };
        assert_eq!(serde_json::to_string(&c)?, "[3,1,1,1,-2]");
        assert_eq!(serde_json::from_str::<EventCounters>("[3,1,1,1,-2]")?, c);
        assert!(serde_json::from_str::<EventCounters>("[3,1,1,1]").is_err());
        let wire = bincode::serialize(&c)?;
        assert_eq!(bincode::deserialize::<EventCounters>(&wire)?, c);
        Ok(())
    }

    #[test]
    fn revenue_counts_positive_purchase_prices_only() {
        assert_eq!(
            EventCounters::of(EventType::Purchase, 1999).revenue_cents,
            1999
        );
        assert_eq!(EventCounters::of(EventType::Purchase, 0).revenue_cents, 0);
        let refund_like = EventCounters::of(EventType::Purchase, -500);
        assert_eq!((refund_like.purchases, refund_like.revenue_cents), (1, 0));
        assert_eq!(EventCounters::of(EventType::Cart, 1999).revenue_cents, 0);
        let removal = EventCounters::of(EventType::RemoveFromCart, 10);
        assert_eq!(
            (
                removal.events,
                removal.views,
                removal.carts,
                removal.purchases
            ),
            (1, 0, 0, 0)
        );
        assert!(!removal.is_zero());
    }
}

/// Hand-built events and a two-worker runner for the tables' unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use cap_connectors::clickstream::{Event, EventType, SessionId};
    use cap_engine::time::ms_from_civil;

    /// Milliseconds of 2019-11-`day` `h`:`m` UTC.
    pub fn at(day: u32, h: u32, m: u32) -> i64 {
        ms_from_civil(2019, 11, day, h, m, 0, 0)
    }

    /// An event with the fields the tables read; the category code `""` means null (the
    /// key is then category id 42), as does a brand or session `""`.
    pub fn event(
        time: i64,
        kind: EventType,
        category: &str,
        brand: &str,
        price_cents: i64,
        session: &str,
    ) -> Event {
        Event {
            event_time: time,
            event_type: kind,
            product_id: 1,
            category_id: 42,
            category_code: (!category.is_empty()).then(|| category.into()),
            brand: (!brand.is_empty()).then(|| brand.into()),
            price_cents,
            user_id: 7,
            user_session: (!session.is_empty()).then(|| SessionId::parse(session)),
            ip: None,
            user_agent: None,
            channel: None,
            country: None,
        }
    }
}
