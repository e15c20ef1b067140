//! One module per output table (or family of tables): each builds its rows from the
//! decoded clicks and nothing else, so tables can be read, tested and changed alone.

pub mod abandonment;
pub mod alerts;
pub mod brands;
pub mod categories;
pub mod clusters;
pub mod counters;
pub mod customers;
pub mod funnels;
pub mod recommendations;
pub mod visitors;

use cap_engine::job::{BuildError, Checkpoints};
use differential_dataflow::VecCollection;

/// Checkpoints an operator's state: the changes it made and the records it was restored
/// with (which it does not repeat in its changes).
pub(crate) fn keep_state<'s, S>(
    ck: &mut impl Checkpoints<'s>,
    name: &str,
    changes: VecCollection<'s, u64, S>,
    restored: Option<VecCollection<'s, u64, S>>,
) -> Result<(), BuildError>
where
    S: differential_dataflow::ExchangeData + std::hash::Hash,
{
    let state = match restored {
        Some(r) => changes.concat(r),
        None => changes,
    };
    ck.checkpoint(name, state)
}
