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
//! | [`segments::segments`] | per key, the named rules (a [`predicate`] language over traits, the watermark and quantiles) it satisfies |
//! | [`traits`] | per key: sums of monoid values, min/max, distinct counts, top-k by frequency; a collection's max |
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
pub mod predicate;
pub mod segments;
pub mod testing;
pub mod traits;

pub use differential_dataflow::VecCollection;
