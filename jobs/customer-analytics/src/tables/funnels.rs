//! `session_funnel_daily`: the view -> cart -> purchase funnel per session, counted per day
//! of the session's first event.
//!
//! It is one configuration of the general funnel operator ([`cap_operators::funnel`]):
//! ordered, no conversion window, unit = session, no exclusions, no breakdown.

use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::time::{day_of, Day, UtcDay};
use cap_operators::funnel::{
    funnel_step_counts, funnel_units, step_bit, FunnelEvent, FunnelSpec, UnitFunnel,
};
use cap_operators::local::pre_aggregate;
use differential_dataflow::VecCollection;

use crate::rows::{FunnelRow, STEP_NAMES};
use crate::{funnel_step, Click};

/// The day of a session's first event of any type.
fn first_day(u: &UnitFunnel<()>) -> Day {
    day_of(u.first_time)
}

/// The `session_funnel_daily` rows of `clicks`. Checkpointed state: each session's distinct
/// `(time, step)` events.
pub fn session_funnel_daily<'s>(
    ck: &mut impl Checkpoints<'s>,
    clicks: &VecCollection<'s, u64, Click>,
) -> Result<VecCollection<'s, u64, FunnelRow>, BuildError> {
    let spec = FunnelSpec::new(STEP_NAMES.len() as u8)
        .map_err(|e| BuildError::Table("session_funnel_daily".into(), e.to_string()))?;
    let events = ck.checkpointed(
        "session_steps",
        pre_aggregate(
            clicks.clone().flat_map(|c| {
                let event = FunnelEvent {
                    time: c.time,
                    steps: step_bit(funnel_step(c.kind)),
                    exclusions: 0,
                    breakdown: (),
                };
                c.session.map(|s| (s, event))
            }),
            "session_steps",
        ),
    )?;
    let sessions = funnel_units(events, &spec);
    Ok(
        funnel_step_counts(sessions, first_day).map(|((day, (), step), counts)| FunnelRow {
            day: UtcDay(day),
            step,
            sessions: counts.units,
            step1_sessions: counts.first_units,
        }),
    )
}
