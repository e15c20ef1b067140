//! Conversion funnels per unit (a session, a user: any key), with PostHog's options: step
//! order (ordered, strict, unordered), a conversion window, exclusion steps and a breakdown
//! with first-touch attribution. Per bucket, breakdown value and step the aggregates give
//! the units that reached the step, the conversion from the first and from the previous
//! step, and the median time to convert.
//!
//! ```text
//!  (unit, FunnelEvent) ── funnel_units(spec) ──▶ (unit, UnitFunnel)                  reduce per unit
//!        │
//!        ├─ funnel_step_counts(bucket) ──▶ ((bucket, breakdown, step), StepCounts)    reduce per (bucket, breakdown)
//!        └─ funnel_median_times(bucket) ─▶ ((bucket, breakdown, step), median ms)     reduce per (bucket, breakdown, step)
//!                 funnel_step_stats(bucket) = the two, joined ─▶ FunnelStepStats
//! ```
//!
//! # Input
//! A collection of `(unit, FunnelEvent)`: one record per event of the unit. An event
//! carries its time (ms), a bit mask of the steps it matches (bit `i` = step `i + 1`; one
//! event may match several steps), a bit mask of the exclusions it matches (bit `i` =
//! exclusion `i` of the [`FunnelSpec`]) and its breakdown value. Events that match nothing
//! still belong to the unit: they set its first time and break strict sequences.
//!
//! # Semantics
//! Steps are numbered `1..=n` (`n <= 32`). Times are compared in milliseconds.
//!
//! **Events are a set.** A unit's events are its *distinct* `FunnelEvent`s present
//! (accumulated multiplicity > 0): a duplicated record changes nothing. Two events are the
//! same event when time, masks and breakdown are all equal; a caller that needs two
//! same-millisecond events to stay apart (e.g. for strict order) puts what tells them apart
//! into the breakdown value.
//!
//! **Paths.** A path of length `k` is a sequence of `k` distinct events `e1..ek` with times
//! `t1..tk`:
//! - [`FunnelOrder::Ordered`] (default): `ei` matches step `i` and `t1 <= t2 <= .. <= tk`
//!   (equal times allowed; other events may come in between).
//! - [`FunnelOrder::Strict`]: ordered, and no other event of the unit has a time strictly
//!   between `t1` and `tk`. Equivalently: in some ordering of the unit's events by time,
//!   with equal times in any order (PostHog tries every permutation of equal times), the
//!   path's events are consecutive. Events at exactly `t1` or `tk` never break a path.
//! - [`FunnelOrder::Unordered`]: `ei` match `k` distinct steps, any of them, in any order;
//!   `t1 <= .. <= tk` is the events' times sorted. "Reached step `k`" then means "completed
//!   `k` of the steps", as in PostHog's any-order funnel.
//!
//! **Window.** With a conversion window `W`, a path must satisfy `tk - t1 <= W`: the window
//! is measured from the path's first event and is inclusive. Without one, any span.
//!
//! **Reached and the counted path.** A unit *reaches* `k` = the greatest length of any of its
//! paths. Its *counted path* is, among its paths of that length, the one whose time vector
//! `(t1, .., tk)` is lexicographically least: the earliest entry into the funnel, then the
//! earliest completion of each step. The step times, the time to convert and the breakdown
//! come from the counted path. The search is exact, not a heuristic (see *Algorithm*).
//!
//! **Exclusions.** An exclusion `(from, to)` (`1 <= from < to <= n`) removes the unit
//! entirely (it appears in no step and no bucket) when its counted path reached `from` and
//! an event matching the exclusion has a time `x` with
//! - `t_from < x < t_to`, if the counted path reached `to` (an excluded event between the
//!   steps; the window holds automatically), or
//! - `t_from < x <= t1 + W`, if it stopped before `to` (the unit did the excluded thing
//!   while still inside the window on its way to `to`; with no window, any `x > t_from`).
//!
//! Ties go to the unit: an excluded event at exactly `t_from` or `t_to` does not count.
//! Exclusions do not steer the search: they judge the counted path, so a unit that viewed,
//! removed from cart and viewed again before buying is removed by a `remove_from_cart`
//! exclusion even though a later, clean path exists (which is what the exclusion is for).
//! An event matching both a step strictly inside `(from, to)` and the exclusion itself
//! counts as an excluded event; do not configure that unless it is meant.
//!
//! **Breakdown, first-touch attribution.** A unit's breakdown value is the value of the
//! counted path's first event: the least value among the unit's events at time `t1` that
//! match step 1 (ordered, strict) or any step (unordered). There is no notion of null: use
//! `Option<V>` and `None` is a bucket of its own (the least value, so it wins a tie at `t1`),
//! or filter events beforehand to leave nulls out.
//!
//! **Per-unit output** ([`funnel_units`]): units that reached at least step 1 and were not
//! excluded, with `first_time` (least time of *any* event of the unit, matching or not),
//! `reached`, the counted path's `step_times` and the breakdown value.
//!
//! **Aggregates**, per `(bucket, breakdown, step)` where `bucket` is any function of the
//! [`UnitFunnel`] (e.g. the day of `first_time`, or of the entry time `step_times[0]`):
//! - `units`: units that reached at least `step`; `first_units`, `previous_units`: the same
//!   for step 1 and for `step - 1` (step 1 for step 1), the denominators of the conversion
//!   from the first and from the previous step. Steps no unit reached are absent.
//! - `median_ms` (steps >= 2): the median, over the units that reached `step`, of
//!   `t_step - t_(step-1)` on their counted paths (time between consecutive steps, as PostHog
//!   reports it). Lower median (nearest rank `ceil(m/2)` of `m` durations), so it is an exact
//!   integer of milliseconds.
//!
//! # Differences from PostHog
//! PostHog computes funnels with a single pass that re-anchors on the latest step-1 event;
//! here the search is exact and the counted path is the earliest one, so its time to
//! convert is measured from the unit's earliest qualifying entry. PostHog's first-touch
//! takes the unit's earliest event with a non-null value; here it is the counted path's
//! first event, nulls included as their own value. PostHog also removes a unit that did an
//! excluded event at the very time of a step; here such ties go to the unit.
//!
//! # Algorithm
//! Events are sorted by time and grouped by equal time. Inside a group, which events serve
//! which steps is a bipartite matching (events may match several steps), found by
//! augmenting paths. Ordered: from each candidate entry group, a greedy walk that completes
//! as many steps as possible at each time is optimal and gives the least times (completing
//! more steps earlier never hurts later ones); without a window the first entry group is
//! enough. Strict: from each entry group and each number of steps done there, the path must
//! consume every event of each following group but the last, so the walk is forced.
//! Unordered: events that can serve distinct steps form a matroid, so adding events in time
//! order when they still match gives the largest set with the least sorted times.
//! Tests check all three against brute-force enumeration of every path.
//!
//! # State and cost
//! [`funnel_units`] arranges one entry per distinct `(unit, event)` and recomputes a unit
//! from its events when any of them changes: `O(g * s)` for `g` time groups and `s` steps
//! (`O(g^2 * s)` with a window, bounded by the groups inside one window), so units are best
//! kept small (sessions) or windowed. [`funnel_step_counts`] keeps one entry per
//! `(bucket, breakdown, step)`; [`funnel_median_times`] one per distinct duration of each
//! `(bucket, breakdown, step)`, and rescans those distinct durations when one changes.
//!
//! Guarantees: after every epoch each output equals the functions above applied to the
//! accumulated input, on any number of workers. Not guaranteed: anything about units whose
//! events carry step bits above the spec's step count (ignored) or exclusion bits without a
//! matching exclusion (ignored).

use std::fmt;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

/// The 0-based step index callers use for an event that matches no step ([`step_bit`] maps
/// it to an empty mask).
pub const NO_STEP: u8 = u8::MAX;

/// The most steps a funnel can have (the width of [`FunnelEvent::steps`]).
pub const MAX_STEPS: u8 = 32;

/// The most exclusions a funnel can have (the width of [`FunnelEvent::exclusions`]).
pub const MAX_EXCLUSIONS: usize = 32;

/// The step-mask bit of the 0-based step index `index` (step `index + 1`): 0 for
/// [`NO_STEP`] or any index of [`MAX_STEPS`] or more.
pub fn step_bit(index: u8) -> u32 {
    if index < MAX_STEPS {
        1 << index
    } else {
        0
    }
}

/// How a unit's events must be arranged to count as a path through the steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FunnelOrder {
    /// Steps in order, at non-decreasing times; other events may come in between.
    #[default]
    Ordered,
    /// Steps in order with no other event of the unit strictly between the first and the
    /// last step's times.
    Strict,
    /// Steps in any order; reaching `k` means completing `k` distinct steps.
    Unordered,
}

/// An exclusion step: an excluded event between steps `from_step` and `to_step` (1-based)
/// of the counted path removes the unit (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Exclusion {
    /// The step after which the excluded event counts (1-based).
    pub from_step: u8,
    /// The step before which it counts (1-based, greater than `from_step`).
    pub to_step: u8,
}

/// A funnel configuration: number of steps, order, conversion window, exclusions.
///
/// `session_funnel_daily` is `FunnelSpec::new(3)?` with every option at its default.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunnelSpec {
    steps: u8,
    order: FunnelOrder,
    window_ms: Option<i64>,
    exclusions: Vec<Exclusion>,
}

/// Why a [`FunnelSpec`] is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FunnelSpecError {
    /// The step count is not in `1..=32`.
    Steps(u8),
    /// The conversion window is negative.
    Window(i64),
    /// An exclusion's steps are not `1 <= from < to <= steps`.
    Exclusion {
        /// The exclusion's first step.
        from_step: u8,
        /// The exclusion's last step.
        to_step: u8,
        /// The funnel's step count.
        steps: u8,
    },
    /// More than [`MAX_EXCLUSIONS`] exclusions.
    TooManyExclusions,
}

impl fmt::Display for FunnelSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FunnelSpecError::Steps(n) => {
                write!(f, "a funnel needs 1 to {MAX_STEPS} steps, found {n}")
            }
            FunnelSpecError::Window(w) => {
                write!(f, "the conversion window must be >= 0 ms, found {w}")
            }
            FunnelSpecError::Exclusion {
                from_step,
                to_step,
                steps,
            } => write!(
                f,
                "an exclusion must lie between steps 1 <= from < to <= {steps}, found {from_step}..{to_step}"
            ),
            FunnelSpecError::TooManyExclusions => {
                write!(f, "a funnel can have at most {MAX_EXCLUSIONS} exclusions")
            }
        }
    }
}

impl std::error::Error for FunnelSpecError {}

impl FunnelSpec {
    /// An ordered funnel of `steps` steps (1 to 32), no window, no exclusions.
    pub fn new(steps: u8) -> Result<FunnelSpec, FunnelSpecError> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(FunnelSpecError::Steps(steps));
        }
        Ok(FunnelSpec {
            steps,
            order: FunnelOrder::Ordered,
            window_ms: None,
            exclusions: Vec::new(),
        })
    }

    /// The same funnel with step order `order`.
    pub fn with_order(mut self, order: FunnelOrder) -> FunnelSpec {
        self.order = order;
        self
    }

    /// The same funnel with a conversion window of `window_ms` (>= 0, inclusive).
    pub fn with_window_ms(mut self, window_ms: i64) -> Result<FunnelSpec, FunnelSpecError> {
        if window_ms < 0 {
            return Err(FunnelSpecError::Window(window_ms));
        }
        self.window_ms = Some(window_ms);
        Ok(self)
    }

    /// The same funnel with one more exclusion, between steps `from_step` and `to_step`
    /// (1-based); events match it through bit `i` of [`FunnelEvent::exclusions`], `i` being
    /// its position in [`FunnelSpec::exclusions`].
    pub fn with_exclusion(
        mut self,
        from_step: u8,
        to_step: u8,
    ) -> Result<FunnelSpec, FunnelSpecError> {
        if from_step == 0 || from_step >= to_step || to_step > self.steps {
            return Err(FunnelSpecError::Exclusion {
                from_step,
                to_step,
                steps: self.steps,
            });
        }
        if self.exclusions.len() >= MAX_EXCLUSIONS {
            return Err(FunnelSpecError::TooManyExclusions);
        }
        self.exclusions.push(Exclusion { from_step, to_step });
        Ok(self)
    }

    /// Number of steps.
    pub fn steps(&self) -> u8 {
        self.steps
    }

    /// Step order.
    pub fn order(&self) -> FunnelOrder {
        self.order
    }

    /// Conversion window (ms), if any.
    pub fn window_ms(&self) -> Option<i64> {
        self.window_ms
    }

    /// Exclusions, in the order of their bits.
    pub fn exclusions(&self) -> &[Exclusion] {
        &self.exclusions
    }

    fn step_mask(&self) -> u32 {
        if self.steps >= 32 {
            u32::MAX
        } else {
            (1u32 << self.steps) - 1
        }
    }
}

/// One event of a unit, as the funnel sees it.
///
/// Field order makes the derived `Ord` sort by time first, which the operator relies on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunnelEvent<V> {
    /// Event time (ms).
    pub time: i64,
    /// Steps the event matches: bit `i` = step `i + 1` (see [`step_bit`]).
    pub steps: u32,
    /// Exclusions the event matches: bit `i` = exclusion `i` of the spec.
    pub exclusions: u32,
    /// The event's breakdown value (`()` for none).
    pub breakdown: V,
}

/// One unit's result: how far it got, along which counted path, in which breakdown.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitFunnel<V> {
    /// Least time of any event of the unit (ms), matching a step or not.
    pub first_time: i64,
    /// Steps reached (>= 1).
    pub reached: u8,
    /// Times of the counted path's events, `reached` of them, non-decreasing.
    pub step_times: Vec<i64>,
    /// The breakdown value (first-touch: the counted path's first event).
    pub breakdown: V,
}

impl<V> UnitFunnel<V> {
    /// When the unit entered the funnel: the counted path's step-1 time.
    pub fn entered(&self) -> i64 {
        self.step_times.first().copied().unwrap_or(self.first_time)
    }

    /// Time from step `step - 1` to step `step` (1-based, `step >= 2`) on the counted path,
    /// when the unit reached `step`.
    pub fn time_to_convert(&self, step: u8) -> Option<i64> {
        let i = usize::from(step);
        if i < 2 {
            return None;
        }
        Some(self.step_times.get(i - 1)? - self.step_times.get(i - 2)?)
    }
}

/// Per `(bucket, breakdown, step)`: units that reached the step and the conversion
/// denominators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepCounts {
    /// Units that reached at least this step.
    pub units: u64,
    /// Units that reached step 1 (same bucket and breakdown).
    pub first_units: u64,
    /// Units that reached the previous step (step 1's own count for step 1).
    pub previous_units: u64,
}

impl StepCounts {
    /// `units / first_units`.
    pub fn conversion_from_first(&self) -> f64 {
        ratio(self.units, self.first_units)
    }

    /// `units / previous_units`.
    pub fn conversion_from_previous(&self) -> f64 {
        ratio(self.units, self.previous_units)
    }
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Per `(bucket, breakdown, step)`: counts, conversions and median time to convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FunnelStepStats {
    /// Units and conversion denominators.
    pub counts: StepCounts,
    /// Lower median of the time from the previous step (ms); `None` for step 1.
    pub median_ms: Option<i64>,
}

/// A unit's funnel over its events (any order; duplicates are ignored), or `None` when it
/// reached no step or was excluded. The per-unit function of [`funnel_units`], exposed for
/// oracles and batch checks.
pub fn evaluate_unit<V: Ord + Clone>(
    spec: &FunnelSpec,
    events: &[FunnelEvent<V>],
) -> Option<UnitFunnel<V>> {
    let mut refs: Vec<&FunnelEvent<V>> = events.iter().collect();
    refs.sort();
    refs.dedup();
    Workspace::default().evaluate(spec, &refs)
}

/// Per unit, its [`UnitFunnel`] under `spec` (see the module docs). Units that reached no
/// step, or were excluded, are absent.
pub fn funnel_units<'s, T, K, V>(
    events: VecCollection<'s, T, (K, FunnelEvent<V>), isize>,
    spec: &FunnelSpec,
) -> VecCollection<'s, T, (K, UnitFunnel<V>), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData + std::hash::Hash,
    V: ExchangeData,
{
    let spec = spec.clone();
    let mut workspace = Workspace::default();
    events.reduce_named("FunnelUnits", move |_unit, input, output| {
        // The input is sorted by event (time first) and distinct.
        let present: Vec<&FunnelEvent<V>> = input
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|(e, _)| *e)
            .collect();
        if let Some(u) = workspace.evaluate(&spec, &present) {
            output.push((u, 1));
        }
    })
}

/// Per `(bucket(unit), breakdown, step)`, the units that reached at least `step` and the
/// conversion denominators. Steps no unit reached are absent.
pub fn funnel_step_counts<'s, T, K, V, B, F>(
    units: VecCollection<'s, T, (K, UnitFunnel<V>), isize>,
    bucket: F,
) -> VecCollection<'s, T, ((B, V, u8), StepCounts), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData,
    V: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
    F: Fn(&UnitFunnel<V>) -> B + 'static,
{
    units
        .flat_map(move |(_unit, u)| {
            let key = (bucket(&u), u.breakdown);
            (1..=u.reached).map(move |s| (key.clone(), s))
        })
        .reduce_named("FunnelStepCounts", |_key, input, output| {
            // `input` is (step, units) sorted by step; every unit that reached s reached 1..s.
            let units_at = |step: u8| -> u64 {
                input
                    .iter()
                    .find(|(s, _)| **s == step)
                    .map(|(_, n)| (*n).max(0) as u64)
                    .unwrap_or(0)
            };
            let first_units = units_at(1);
            for (step, n) in input {
                if *n > 0 {
                    let previous_units = if **step <= 1 {
                        first_units
                    } else {
                        units_at(**step - 1)
                    };
                    output.push((
                        (
                            **step,
                            StepCounts {
                                units: *n as u64,
                                first_units,
                                previous_units,
                            },
                        ),
                        1isize,
                    ));
                }
            }
        })
        .map(|((b, v), (step, counts))| ((b, v, step), counts))
}

/// Per `(bucket(unit), breakdown, step)` for steps >= 2, the lower median over the units
/// that reached `step` of the time from the previous step on their counted paths (ms).
pub fn funnel_median_times<'s, T, K, V, B, F>(
    units: VecCollection<'s, T, (K, UnitFunnel<V>), isize>,
    bucket: F,
) -> VecCollection<'s, T, ((B, V, u8), i64), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData,
    V: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
    F: Fn(&UnitFunnel<V>) -> B + 'static,
{
    units
        .flat_map(move |(_unit, u)| {
            let b = bucket(&u);
            let durations: Vec<(u8, i64)> = (2..=u.reached)
                .filter_map(|s| Some((s, u.time_to_convert(s)?)))
                .collect();
            let v = u.breakdown;
            durations
                .into_iter()
                .map(move |(s, d)| ((b.clone(), v.clone(), s), d))
        })
        .reduce_named("FunnelMedianTimes", |_key, input, output| {
            // `input` is (duration, units) sorted by duration: the multiset of durations.
            let total: isize = input.iter().map(|(_, n)| (*n).max(0)).sum();
            if total <= 0 {
                return;
            }
            let rank = (total + 1) / 2;
            let mut seen = 0isize;
            for (d, n) in input {
                seen += (*n).max(0);
                if seen >= rank {
                    output.push((**d, 1isize));
                    return;
                }
            }
        })
}

/// [`funnel_step_counts`] and [`funnel_median_times`] together, per
/// `(bucket(unit), breakdown, step)`.
pub fn funnel_step_stats<'s, T, K, V, B, F>(
    units: VecCollection<'s, T, (K, UnitFunnel<V>), isize>,
    bucket: F,
) -> VecCollection<'s, T, ((B, V, u8), FunnelStepStats), isize>
where
    T: Timestamp + Lattice,
    K: ExchangeData,
    V: ExchangeData + std::hash::Hash,
    B: ExchangeData + std::hash::Hash,
    F: Fn(&UnitFunnel<V>) -> B + Clone + 'static,
{
    let counts = funnel_step_counts(units.clone(), bucket.clone());
    let medians = funnel_median_times(units, bucket);
    let first = counts
        .clone()
        .filter(|((_, _, step), _)| *step == 1)
        .map(|(key, counts)| {
            (
                key,
                FunnelStepStats {
                    counts,
                    median_ms: None,
                },
            )
        });
    let later =
        counts
            .filter(|((_, _, step), _)| *step >= 2)
            .join_map(medians, |key, counts, median| {
                (
                    key.clone(),
                    FunnelStepStats {
                        counts: *counts,
                        median_ms: Some(*median),
                    },
                )
            });
    first.concat(later)
}

/// "None" in the matching arrays.
const FREE: usize = usize::MAX;

/// Scratch space for evaluating units, reused across units to avoid allocations.
#[derive(Default)]
struct Workspace {
    /// Step masks of the unit's events (restricted to the spec's steps), by event index.
    masks: Vec<u32>,
    /// `[start, end)` event ranges of equal time, in time order.
    groups: Vec<(usize, usize)>,
    /// The best path's times so far, and the candidate's.
    best: Vec<i64>,
    candidate: Vec<i64>,
    /// Group matching: step matched to each event of the group (`FREE` if none).
    step_of_event: Vec<usize>,
    seen: Vec<bool>,
    /// Unordered matching: event matched to each step (`FREE` if none).
    event_of_step: [usize; MAX_STEPS as usize],
}

impl Workspace {
    /// The unit's funnel over `events`, which must be sorted by time and distinct.
    fn evaluate<V: Ord + Clone>(
        &mut self,
        spec: &FunnelSpec,
        events: &[&FunnelEvent<V>],
    ) -> Option<UnitFunnel<V>> {
        let first_time = events.first()?.time;
        let steps = usize::from(spec.steps);
        let step_mask = spec.step_mask();
        self.masks.clear();
        self.masks
            .extend(events.iter().map(|e| e.steps & step_mask));
        self.groups.clear();
        let mut start = 0;
        for i in 1..=events.len() {
            if i == events.len() || events[i].time != events[start].time {
                self.groups.push((start, i));
                start = i;
            }
        }
        self.best.clear();
        match spec.order {
            FunnelOrder::Ordered => self.search_ordered(events, steps, spec.window_ms),
            FunnelOrder::Strict => self.search_strict(events, steps, spec.window_ms),
            FunnelOrder::Unordered => self.search_unordered(events, steps, spec.window_ms),
        }
        let t1 = *self.best.first()?;
        // Exclusions judge the counted path.
        for (i, ex) in spec.exclusions.iter().enumerate() {
            let (from, to) = (usize::from(ex.from_step), usize::from(ex.to_step));
            if self.best.len() < from {
                continue;
            }
            let lo = self.best[from - 1];
            let excluded = |x: i64| -> bool {
                if x <= lo {
                    return false;
                }
                match self.best.get(to - 1) {
                    Some(hi) => x < *hi,
                    None => spec.window_ms.is_none_or(|w| x <= t1.saturating_add(w)),
                }
            };
            if events
                .iter()
                .any(|e| e.exclusions & (1 << i) != 0 && excluded(e.time))
            {
                return None;
            }
        }
        // First touch: the least value among the entry time's events that can enter.
        let entry_mask = match spec.order {
            FunnelOrder::Unordered => step_mask,
            FunnelOrder::Ordered | FunnelOrder::Strict => 1,
        };
        let breakdown = events
            .iter()
            .filter(|e| e.time == t1 && e.steps & entry_mask != 0)
            .map(|e| &e.breakdown)
            .min()?
            .clone();
        Some(UnitFunnel {
            first_time,
            reached: u8::try_from(self.best.len()).ok()?,
            step_times: self.best.clone(),
            breakdown,
        })
    }

    /// Whether group `g` has an event that can enter the funnel (matches step 1, or any step
    /// when `any`).
    fn can_enter(&self, g: usize, any: bool) -> bool {
        let (s, e) = self.groups[g];
        let want = if any { u32::MAX } else { 1 };
        self.masks[s..e].iter().any(|m| m & want != 0)
    }

    /// Keeps `candidate` if it is longer than the best path, or as long and earlier.
    fn consider(&mut self) {
        if self.candidate.len() > self.best.len()
            || (self.candidate.len() == self.best.len() && self.candidate < self.best)
        {
            self.best.clone_from(&self.candidate);
        }
    }

    fn search_ordered<V>(&mut self, events: &[&FunnelEvent<V>], steps: usize, window: Option<i64>) {
        for g in 0..self.groups.len() {
            if !self.can_enter(g, false) {
                continue;
            }
            let t0 = events[self.groups[g].0].time;
            self.candidate.clear();
            let mut done = 0;
            for h in g..self.groups.len() {
                let th = events[self.groups[h].0].time;
                if window.is_some_and(|w| th > t0.saturating_add(w)) {
                    break;
                }
                let run = self.run_length(h, done, steps);
                self.candidate.extend(std::iter::repeat_n(th, run));
                done += run;
                if done == steps {
                    break;
                }
            }
            self.consider();
            // Without a window the first entry is never beaten; a complete path from an
            // earlier entry is never beaten either.
            if window.is_none() || self.best.len() == steps {
                return;
            }
        }
    }

    fn search_strict<V>(&mut self, events: &[&FunnelEvent<V>], steps: usize, window: Option<i64>) {
        for g in 0..self.groups.len() {
            if !self.can_enter(g, false) {
                continue;
            }
            let t0 = events[self.groups[g].0].time;
            let entry_run = self.run_length(g, 0, steps);
            // Steps done in the entry group: any prefix of the largest run (events of the
            // entry group left over come before the path).
            for first in 1..=entry_run {
                self.candidate.clear();
                self.candidate.extend(std::iter::repeat_n(t0, first));
                self.consider();
                let mut done = first;
                let mut h = g + 1;
                while done < steps && h < self.groups.len() {
                    let th = events[self.groups[h].0].time;
                    if window.is_some_and(|w| th > t0.saturating_add(w)) {
                        break;
                    }
                    let run = self.run_length(h, done, steps);
                    if run == 0 {
                        break;
                    }
                    self.candidate.extend(std::iter::repeat_n(th, run));
                    self.consider();
                    // Only a group whose every event is on the path can be passed through.
                    let (s, e) = self.groups[h];
                    if run < e - s {
                        break;
                    }
                    done += run;
                    h += 1;
                }
            }
            if self.best.len() == steps {
                return;
            }
        }
    }

    fn search_unordered<V>(
        &mut self,
        events: &[&FunnelEvent<V>],
        steps: usize,
        window: Option<i64>,
    ) {
        for g in 0..self.groups.len() {
            if !self.can_enter(g, true) {
                continue;
            }
            let start = self.groups[g].0;
            let t0 = events[start].time;
            self.event_of_step = [FREE; MAX_STEPS as usize];
            self.candidate.clear();
            for (i, e) in events.iter().enumerate().skip(start) {
                if window.is_some_and(|w| e.time > t0.saturating_add(w)) {
                    break;
                }
                if self.masks[i] != 0 && self.add_event(i, &mut 0) {
                    self.candidate.push(e.time);
                    if self.candidate.len() == steps {
                        break;
                    }
                }
            }
            self.consider();
            if window.is_none() || self.best.len() == steps {
                return;
            }
        }
    }

    /// Unordered matching: tries to give event `i` a step, moving other events to other
    /// steps along an augmenting path. `visited` holds the steps tried in this search.
    fn add_event(&mut self, i: usize, visited: &mut u32) -> bool {
        let mut candidates = self.masks[i] & !*visited;
        while candidates != 0 {
            let s = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if *visited & (1 << s) != 0 {
                continue;
            }
            *visited |= 1 << s;
            let holder = self.event_of_step[s];
            if holder == FREE || self.add_event(holder, visited) {
                self.event_of_step[s] = i;
                return true;
            }
        }
        false
    }

    /// The largest `r` such that steps `done + 1 ..= done + r` (1-based) can be given to
    /// distinct events of group `g`.
    fn run_length(&mut self, g: usize, done: usize, steps: usize) -> usize {
        let (s, e) = self.groups[g];
        if e - s == 1 {
            // The common case: one event, one step at most.
            return usize::from(done < steps && self.masks[s] & (1 << done) != 0);
        }
        self.step_of_event.clear();
        self.step_of_event.resize(e - s, FREE);
        let mut run = 0;
        while done + run < steps {
            self.seen.clear();
            self.seen.resize(e - s, false);
            if !self.add_step(s, e, done + run) {
                break;
            }
            run += 1;
        }
        run
    }

    /// Group matching: tries to give (0-based) step `step` an event of `[s, e)`, moving
    /// other steps to other events along an augmenting path.
    fn add_step(&mut self, s: usize, e: usize, step: usize) -> bool {
        for i in s..e {
            if self.masks[i] & (1 << step) == 0 || self.seen[i - s] {
                continue;
            }
            self.seen[i - s] = true;
            let holder = self.step_of_event[i - s];
            if holder == FREE || self.add_step(s, e, holder) {
                self.step_of_event[i - s] = step;
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
