//! `session_funnel_daily`: the ordered view -> cart -> purchase funnel per session, counted
//! per day of the session's first event.

use cap_engine::time::{day_of, Day, UtcDay};
use cap_operators::funnel::{funnel_step_counts, ordered_funnel};
use cap_operators::local::pre_aggregate;
use differential_dataflow::VecCollection;

use crate::rows::FunnelRow;
use crate::{funnel_step, Click};

fn day_bucket(t: i64) -> Day {
    day_of(t)
}

/// The `session_funnel_daily` rows of `clicks`.
pub fn session_funnel_daily<'s>(
    clicks: &VecCollection<'s, u64, Click>,
) -> VecCollection<'s, u64, FunnelRow> {
    let steps = pre_aggregate(
        clicks.clone().flat_map(|c| {
            let step = funnel_step(c.kind);
            c.session.map(|s| (s, (step, c.time)))
        }),
        "session_steps",
    );
    let progress = ordered_funnel(steps, 3);
    let funnel = funnel_step_counts(progress, day_bucket)
        .map(|((day, step), n)| (day, (step, n)))
        .reduce_named("FunnelDaily", |day: &Day, input, output| {
            let first = input
                .iter()
                .find(|((s, _), d)| *s == 1 && *d > 0)
                .map(|((_, n), _)| *n)
                .unwrap_or(0);
            for ((step, n), diff) in input {
                if *diff > 0 {
                    output.push((
                        FunnelRow {
                            day: UtcDay(*day),
                            step: *step,
                            sessions: *n,
                            step1_sessions: first,
                        },
                        1isize,
                    ));
                }
            }
        });
    funnel.map(|(_day, row)| row)
}
