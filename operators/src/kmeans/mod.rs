//! k-means segmentation of keys (users) by their traits, maintained incrementally.
//!
//! Input: a collection of `(key, traits)` where `traits: [u64; D]` are non-negative counts
//! or amounts (for customers: views, carts, purchases, revenue in cents, distinct products,
//! sessions). A key's traits are its greatest record with positive multiplicity; a
//! well-formed input (a `reduce` output) has exactly one.
//!
//! Features: `x_j = log1p(traits_j / scale_j)`, standardized as `(x_j - mean_j) / std_j`
//! with the population mean and deviation of each feature over all keys **at the last
//! fit** (frozen until the next one; a zero deviation counts as 1).
//!
//! [`kmeans_segments`] outputs:
//! - `assignments`: per key with traits, once a model exists, its nearest centroid
//!   (`cluster`, ties to the lowest index) and the Euclidean distance to it in standardized
//!   space, in micro-units (`round(d x 10^6)`: integers on the wire, so rows are `Ord` and
//!   consolidate exactly);
//! - `centroids`: per cluster of the current model, its coordinates (micro-units) and the
//!   number of keys currently assigned to it (which may drift from the fit, even to 0,
//!   until the next refit);
//! - `models`: the current [`Model`] (standardization + centroids), on worker 0;
//! - with [`kmeans_segments_with_state`], also `state`: the fit operator's [`FitState`]
//!   (model and refit schedule), to checkpoint and restore it (see [Restore](#restore)).
//!
//! ```text
//!  traits (key, [u64; D]) ──exchange to worker 0──▶ [KMeansFit]  every key's traits (BTreeMap),
//!        │                                              refit schedule, k-means on refit
//!        │                                                   │ models: (old, -1), (new, +1) at t
//!        │                                                   ├──────────────▶ models
//!        │                                                broadcast
//!        └─exchange by key─▶ [KMeansAssign] ◀────────────────┘
//!                 per key: traits, current row; at each completed time t: the model at t,
//!                 then the traits at t; re-assign changed keys (every key on a new model)
//!                     │ (key, Assignment) ±1 ──▶ assignments
//!                     └─ cluster ─ pre_aggregate ─ count ─┐
//!  models ─ centroid coordinates ───────────────────────── reduce per cluster ─▶ centroids
//! ```
//!
//! Refit schedule, evaluated on worker 0 at every completed time (epoch), in time order,
//! after applying that time's changes; "changes" counts keys whose traits changed at a
//! completed time (a key changing twice within one epoch counts once):
//! - first fit: once at least [`SegmentConfig::min_users`] keys have traits;
//! - scheduled: once changes since the last fit reach
//!   `refit_change_ratio x keys at the last fit` (so fits grow geometrically apart while
//!   the population grows, and come every so many changes when it is stable);
//! - drift: once the mean squared distance of the keys to their centroids exceeds
//!   `drift_factor x` its value at the last fit (and at least
//!   `drift_min_change_ratio x keys at the last fit` changed);
//! - end of input (the frontier becomes empty): when anything changed since the last fit
//!   (or no model exists yet and some key has traits); emitted at the last time seen.
//!
//! A fit gathers every key's traits in key order, standardizes, and runs
//! [`algorithm::fit`] (deterministic k-means++ with `n_init` restarts, Lloyd to
//! convergence). A new model is emitted at the time whose changes triggered it, together
//! with the retraction of the old one; the assigners apply it at that same time, so every
//! output is consistent at every time.
//!
//! Guarantees:
//! - The outputs are differential collections: a row that changes is retracted; after
//!   each completed time there is exactly one assignment per key with traits (once a
//!   model exists), one centroid row per cluster of the current model, and sizes equal
//!   the assignment counts.
//! - Given the input and its time boundaries, everything is deterministic: the worker
//!   count does not matter (the fit runs on one worker in key order; floats are compared
//!   by value and sums taken in a fixed order; the refit decision uses integer counts and
//!   fixed-point distance sums).
//! - After the input ends, the outputs are a pure function of the final traits: the final
//!   model is [`fit_model`] over every key's traits, exactly [`segments_batch`]; neither
//!   the time boundaries nor the worker count matter.
//!
//! Non-guarantees:
//! - While the input is open, which model is current depends on where time (epoch)
//!   boundaries fall, since refits are decided per completed time. This is why the
//!   customer table is exempt from "streaming equals batch".
//! - Cluster labels are canonical per fit (largest cluster at the fit first), not stable
//!   across refits: a refit may renumber clusters.
//! - The k-means optimum is not guaranteed (no one can promise it); the tests hold the SSE
//!   within 5% of scikit-learn's `KMeans(init="k-means++", n_init=10)`.
//!
//! # Restore
//!
//! The refit schedule and the model are not a function of the traits' contents (they
//! depend on where epochs fell), so a checkpointed job cannot recompute them on restore.
//! [`kmeans_segments_with_state`] publishes them as a collection and takes them back:
//!
//! ```text
//!  restored (FitState at C, any worker) ──exchange to worker 0──▶ [KMeansFit] ──▶ state: (old, -1), (new, +1)
//!  caller: checkpoint(state.concat(restored))       (the operator does not re-emit `restored`)
//! ```
//!
//! - [`FitState`] is everything the fit operator holds besides the keys' traits: the model
//!   (or none yet), its version, the changes since the last fit, the keys at the last fit
//!   and the drift baseline (`f64` bits). The keys' squared distances and their sum are
//!   recomputed from the traits and the model, exactly (integer micro-units).
//! - `state` on its own accumulates, after every completed time with input, to exactly one
//!   record, the state after that time, unless a state was restored: from the restored time
//!   on, `state` goes from the restored record (`(restored, -1), (next, +1)`) without
//!   repeating it, so `state.concat(restored)` accumulates to the one current state. This
//!   is the shape the engine's `Dataflow::restored` / `Dataflow::checkpoint` expect.
//! - At the restored time `C` the fit operator applies `C`'s traits changes (on a restore,
//!   the whole traits collection as of `C`) to its per-key traits *without* counting them
//!   as changes, installs the restored state, decides no refit at `C`, and emits the
//!   restored model at `C`; the assigners then assign every key at `C`.
//!
//! Guarantee (tested on 1 and 3 workers, restored on another worker count than the one
//! that checkpointed): if run A sees traits changes over epochs `0..N`, and run B is given
//! `restored` = A's state accumulated at `C` (at `C`) and traits = A's traits accumulated
//! at `C` (at `C`) followed by A's changes of the epochs after `C`, then at every time
//! `t >= C` (and after the input ends) B's assignments, centroids, models and state
//! accumulate to A's. Non-guarantee: B's outputs at `C` are whole collections (insertions
//! at `C`), not A's changes at `C`; only the accumulations agree. A restored input with
//! more than one live record at a time is malformed: its greatest positive record wins.
//!
//! Costs and state:
//! - Worker 0 holds every key's traits (`O(keys)`, ~`D x 8 + 40` bytes a key) and receives
//!   every traits change (`O(changes)` traffic). A fit takes
//!   `O(n_init x iterations x k x D x keys)` time on worker 0, which stalls that worker
//!   meanwhile; with `refit_change_ratio = r` this is amortized over `r x keys` changes.
//! - Each worker holds its keys' traits and rows (`O(keys / workers)`); a new model
//!   re-assigns every key (`O(keys x k x D)` work, `O(keys)` output changes).
//! - The model is broadcast to every worker (`O(k x D)` a fit).
//! - `state` changes at every time with a counted change (`changes` moves): two records of
//!   `O(k x D)` each (the model rides in the state); a restore re-measures every key on
//!   worker 0 once (`O(keys x k x D)`).

pub mod algorithm;
pub mod segments;

pub use algorithm::{fit, KMeansFit, KMeansParams, SplitMix64, Standardizer};
pub use segments::{
    fit_model, kmeans_segments, kmeans_segments_with_state, raw_features, segments_batch,
    to_micros, Assignment, ClusterCentroid, FitState, Model, SegmentConfig, Segments,
    StatefulSegments,
};

#[cfg(test)]
mod tests;
