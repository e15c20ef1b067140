//! `daily_visitors`: per UTC day, distinct visitors, distinct sessions and events.

use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::time::{day_of, Day, UtcDay};
use cap_operators::distinct::distinct_count;
use cap_operators::local::pre_aggregate;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::rows::DailyVisitorsRow;
use crate::Click;

/// Which daily metric a per-day value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DailyMetric {
    Events,
    Visitors,
    Sessions,
}

/// The `daily_visitors` rows of `clicks`. Checkpointed state: events per day, and the
/// distinct `(day, user)` and `(day, session)` pairs.
pub fn daily_visitors<'s>(
    ck: &mut impl Checkpoints<'s>,
    clicks: &VecCollection<'s, u64, Click>,
) -> Result<VecCollection<'s, u64, DailyVisitorsRow>, BuildError> {
    let days = ck.checkpointed(
        "events_per_day",
        pre_aggregate(clicks.clone().map(|c| day_of(c.time)), "events_per_day"),
    )?;
    let events_per_day = days
        .count()
        .map(|(day, n)| (day, (DailyMetric::Events, n as u64)));
    let day_users = ck.checkpointed(
        "day_user",
        pre_aggregate(clicks.clone().map(|c| (day_of(c.time), c.user)), "day_user"),
    )?;
    let visitors = distinct_count(day_users).map(|(day, n)| (day, (DailyMetric::Visitors, n)));
    let session_days = ck.checkpointed(
        "day_session",
        pre_aggregate(
            clicks
                .clone()
                .flat_map(|c| c.session.map(|s| (day_of(c.time), s))),
            "day_session",
        ),
    )?;
    let sessions = distinct_count(session_days).map(|(day, n)| (day, (DailyMetric::Sessions, n)));
    let daily = events_per_day
        .concat(visitors)
        .concat(sessions)
        .reduce_named("DailyVisitors", |day: &Day, input, output| {
            let mut row = DailyVisitorsRow {
                day: UtcDay(*day),
                visitors: 0,
                sessions: 0,
                events: 0,
            };
            for ((metric, n), diff) in input {
                if *diff <= 0 {
                    continue;
                }
                match metric {
                    DailyMetric::Events => row.events = *n,
                    DailyMetric::Visitors => row.visitors = *n,
                    DailyMetric::Sessions => row.sessions = *n,
                }
            }
            output.push((row, 1isize));
        });
    Ok(daily.map(|(_day, row)| row))
}
