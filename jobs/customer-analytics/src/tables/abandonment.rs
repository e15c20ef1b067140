//! `cart_abandonment_daily`: per UTC day of a session's first event, the sessions with a
//! cart, with a purchase, and with a cart but no purchase.
//!
//! ```text
//!  events ─ session non-null ─(session, (time, mark))─ pre_aggregate
//!         ─ reduce per session: first time, any cart?, any purchase? ─ (session, outcome)
//!         ─ (day(first time), SessionCounts) ─ sum_by_key ─▶ cart_abandonment_daily
//! ```
//!
//! Semantics (see `docs/output-contract.md`): a session is its `user_session` alone; events
//! without one are left out. `day` is the UTC day of the session's first event of *any*
//! type. `sessions_with_purchase` counts every session with a purchase, with or without a
//! cart event; `abandoned_sessions` those with a `cart` event and no `purchase` event
//! (`remove_from_cart` is neither); `abandonment_rate` = abandoned / with cart, 0 when no
//! session of the day has a cart. A day appears when any of its sessions has a cart or a
//! purchase: sessions with neither contribute nothing, so every row has a non-zero count.
//!
//! State: the per-session reduce holds one entry per distinct (session, event time, mark),
//! bounded by each session's events (the first time is a minimum, which retractions can
//! move, so it cannot be a running sum); then one [`SessionCounts`] total per day.

use cap_connectors::clickstream::{Event, EventType, SessionId};
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_engine::time::{day_of, Day, UtcDay};
use cap_engine::values::Ratio;
use cap_operators::aggregate::sum_by_key;
use cap_operators::local::pre_aggregate;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::rows::DayKey;

/// What the table needs of a session's event besides its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Mark {
    /// `view` or `remove_from_cart`: only its time matters.
    Other,
    /// `cart`.
    Cart,
    /// `purchase`.
    Purchase,
}

impl Mark {
    fn of(t: EventType) -> Mark {
        match t {
            EventType::Cart => Mark::Cart,
            EventType::Purchase => Mark::Purchase,
            EventType::View | EventType::RemoveFromCart => Mark::Other,
        }
    }
}

/// One session's contribution, when it has a cart or a purchase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct SessionOutcome {
    /// Day of the session's first event.
    day: Day,
    /// Whether it has a `cart` event.
    cart: bool,
    /// Whether it has a `purchase` event.
    purchase: bool,
}

cap_operators::counters! {
    /// Per-day session counts, summed as a monoid.
    pub struct SessionCounts {
        /// Sessions with a `cart` event.
        pub with_cart,
        /// Sessions with a `purchase` event.
        pub with_purchase,
        /// Sessions with a `cart` event and no `purchase` event.
        pub abandoned,
    }
}

/// `cart_abandonment_daily`: one day of sessions with carts or purchases.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CartAbandonmentRow {
    /// UTC day of the sessions' first event.
    pub day: UtcDay,
    /// Sessions with a `cart` event.
    pub sessions_with_cart: i64,
    /// Sessions with a `purchase` event (with or without a cart).
    pub sessions_with_purchase: i64,
    /// Sessions with a `cart` event and no `purchase` event.
    pub abandoned_sessions: i64,
    /// abandoned_sessions / sessions_with_cart, 0 when none has a cart.
    pub abandonment_rate: Ratio,
}

impl TableRow for CartAbandonmentRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["day"],
            &[
                ("day", Date),
                ("sessions_with_cart", Int64),
                ("sessions_with_purchase", Int64),
                ("abandoned_sessions", Int64),
                ("abandonment_rate", Float64),
            ],
        ))
    }
    type Key = DayKey;
    fn key(&self) -> DayKey {
        DayKey { day: self.day }
    }
}

/// The `cart_abandonment_daily` rows of `events`. Checkpointed state: each session's
/// distinct `(time, mark)` events.
pub fn cart_abandonment_daily<'s>(
    ck: &mut impl Checkpoints<'s>,
    events: &VecCollection<'s, u64, Event>,
) -> Result<VecCollection<'s, u64, CartAbandonmentRow>, BuildError> {
    let marks = ck.checkpointed(
        "session_marks",
        pre_aggregate(
            events.clone().flat_map(|e| {
                let mark = Mark::of(e.event_type);
                e.user_session.map(|s| (s, (e.event_time, mark)))
            }),
            "session_marks",
        ),
    )?;
    let outcomes = marks.reduce_named(
        "SessionCartPurchase",
        |_session: &SessionId, input, output| {
            // Values arrive sorted by (time, mark): the first present one is the earliest.
            let mut first = None;
            let (mut cart, mut purchase) = (false, false);
            for ((time, mark), copies) in input {
                if *copies <= 0 {
                    continue;
                }
                first.get_or_insert(*time);
                cart |= *mark == Mark::Cart;
                purchase |= *mark == Mark::Purchase;
            }
            if let Some(first) = first.filter(|_| cart || purchase) {
                let day = day_of(first);
                output.push((
                    SessionOutcome {
                        day,
                        cart,
                        purchase,
                    },
                    1isize,
                ));
            }
        },
    );
    Ok(sum_by_key(outcomes, "abandonment_day", |(_session, o)| {
        let counts = SessionCounts {
            with_cart: i64::from(o.cart),
            with_purchase: i64::from(o.purchase),
            abandoned: i64::from(o.cart && !o.purchase),
        };
        Some((o.day, counts))
    })
    .map(|(day, c)| CartAbandonmentRow {
        day: UtcDay(day),
        sessions_with_cart: c.with_cart,
        sessions_with_purchase: c.with_purchase,
        abandoned_sessions: c.abandoned,
        abandonment_rate: Ratio::new(c.abandoned, c.with_cart),
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

    const S1: &str = "00000000-0000-0000-0000-000000000001";
    const S2: &str = "00000000-0000-0000-0000-000000000002";
    const S3: &str = "00000000-0000-0000-0000-000000000003";
    const S4: &str = "00000000-0000-0000-0000-000000000004";

    #[test]
    fn sessions_count_on_the_day_of_their_first_event() {
        let e = |t: i64, kind, s: &str| (event(t, kind, "c", "", 100, s), 0u64, 1isize);
        let updates = vec![
            // S1 starts on Nov 1 (a removal), carts on Nov 2: abandoned, day Nov 1.
            e(at(1, 23, 59), RemoveFromCart, S1),
            e(at(2, 0, 5), Cart, S1),
            // S2: purchase without a cart, Nov 2.
            e(at(2, 1, 0), View, S2),
            e(at(2, 1, 1), Purchase, S2),
            // S3: views only: no contribution.
            e(at(2, 2, 0), View, S3),
            // S4: cart then purchase on Nov 2.
            e(at(2, 3, 0), Cart, S4),
            e(at(2, 3, 1), Purchase, S4),
            // No session: left out.
            e(at(2, 4, 0), Cart, ""),
            // Epoch 1: S1's removal is retracted, so S1 now starts on Nov 2.
            (
                event(at(1, 23, 59), RemoveFromCart, "c", "", 100, S1),
                1,
                -1,
            ),
        ];
        let out = run_on_workers(2, updates, |c| {
            cart_abandonment_daily(&mut NoCheckpoints, &c).expect("builds")
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
                r#"{"day":"2019-11-01","sessions_with_cart":1,"sessions_with_purchase":0,"abandoned_sessions":1,"abandonment_rate":1.0}"#,
                r#"{"day":"2019-11-02","sessions_with_cart":1,"sessions_with_purchase":2,"abandoned_sessions":0,"abandonment_rate":0.0}"#,
            ]
        );
        assert_eq!(
            rows(1),
            [
                r#"{"day":"2019-11-02","sessions_with_cart":2,"sessions_with_purchase":2,"abandoned_sessions":1,"abandonment_rate":0.5}"#,
            ]
        );
    }

    #[test]
    fn rows_round_trip_through_the_wire_format() -> anyhow::Result<()> {
        let row = CartAbandonmentRow {
            day: UtcDay(days_from_civil(2019, 11, 2)),
            sessions_with_cart: 4,
            sessions_with_purchase: 2,
            abandoned_sessions: 3,
            abandonment_rate: Ratio::new(3, 4),
        };
        assert_eq!(
            bincode::deserialize::<CartAbandonmentRow>(&bincode::serialize(&row)?)?,
            row
        );
        assert_eq!(
            serde_json::to_string(&row)?,
            r#"{"day":"2019-11-02","sessions_with_cart":4,"sessions_with_purchase":2,"abandoned_sessions":3,"abandonment_rate":0.75}"#
        );
        Ok(())
    }
}
