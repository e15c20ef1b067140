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
//! | [`funnel::funnel_units`], [`funnel::funnel_step_stats`] | PostHog-style funnels (ordered, strict, unordered; window, exclusions, first-touch breakdown): per unit the counted path; per bucket, breakdown and step the units, conversions and median time to convert |
//! | [`anomaly::windowed_tallies`], [`anomaly::baseline_surges`], [`anomaly::merge_windows`] | event-time window counts with a retention horizon, rolling-baseline surges, runs of alerting windows |
//! | [`local::pre_aggregate`] | per worker, consolidates an epoch's updates before they are exchanged |
//! | [`aggregate::sum_by_key`] | per key, the sum of monoid contributions such as [`counters!`] structs |
//! | [`topk::top_k`] | per group, the k first values under a total order, ranked 1..=k |
//! | [`kmeans::kmeans_segments`] | per key, the nearest k-means centroid over standardized log1p traits, refit on a count-driven schedule |
//! | [`segments::segments`] | per key, the named rules (a [`predicate`] language over traits, the watermark and quantiles) it satisfies |
//! | [`traits`] | per key: sums of monoid values, min/max, distinct counts, top-k by frequency; a collection's max |
//! | [`similarity::similar_items`] | per item, its top-k items by exact cosine of their user sets |
//! | [`recommend::recommend`] | per user, top-k items scored through similar items, filled from a category's best sellers |
//! | [`upsert::latest_by_key`] | per key, the latest value of a keyed upsert log (tombstones remove the key) |
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

pub mod aggregate;
pub mod anomaly;
pub mod distinct;
pub mod funnel;
pub mod kmeans;
pub mod local;
pub mod predicate;
pub mod recommend;
pub mod segments;
pub mod similarity;
pub mod testing;
mod timed;
pub mod topk;
pub mod traits;
pub mod upsert;

pub use differential_dataflow::VecCollection;

/// The operator catalogue (`docs/operators.md`); its examples are compiled as doctests.
#[doc = include_str!("../../docs/operators.md")]
pub mod catalogue {}
