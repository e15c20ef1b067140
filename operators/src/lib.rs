//! Incremental analytics operators on differential dataflow.
//!
//! Each operator takes and returns [`VecCollection`]s, so it composes with any other
//! differential operator, and states its exact semantics in its module docs. Outputs are
//! maintained incrementally: after every epoch, an operator's output equals the function
//! applied to its accumulated input (insertions *and* retractions) up to that epoch, which
//! the tests check against plain sequential oracles with 1 and 3 workers.
//!
//! | operator | computes |
//! |---|---|
//! | [`distinct::distinct_count`] | per key, the number of distinct values present |
//! | [`funnel::ordered_funnel`] | per unit (session, user), the funnel step reached and the unit's first time |
//! | [`funnel::funnel_step_counts`] | per bucket and step, the units that reached at least that step |
//! | [`local::pre_aggregate`] | per worker, consolidates an epoch's updates before they are exchanged |
//! | [`similarity::similar_items`] | per item, its top-k items by exact cosine of their user sets |
//! | [`recommend::recommend`] | per user, top-k items scored through similar items, filled from a category's best sellers |
//!
//! ```
//! use differential_dataflow::input::Input;
//! use cap_operators::distinct::distinct_count;
//!
//! timely::execute_directly(|worker| {
//!     let mut input = worker.dataflow::<u64, _, _>(|scope| {
//!         let (input, visits) = scope.new_collection::<(u32, u64), isize>();
//!         // visitors per day: distinct user ids per day
//!         distinct_count(visits).inspect(|x| println!("{x:?}"));
//!         input
//!     });
//!     input.insert((1, 42));
//!     input.insert((1, 42));
//!     input.insert((1, 7));
//!     input.advance_to(1);
//! });
//! ```
#![warn(missing_docs)]

pub mod distinct;
pub mod funnel;
pub mod local;
pub mod recommend;
pub mod similarity;
pub mod testing;

pub use differential_dataflow::VecCollection;
