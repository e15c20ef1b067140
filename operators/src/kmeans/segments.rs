//! The k-means segmentation operator: per key (user), the nearest centroid of a model that
//! is refit on a count-driven schedule. See the [module docs](super) for the semantics.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use differential_dataflow::lattice::Lattice;
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::empty;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, InputCapability};
use timely::dataflow::StreamVec;
use timely::order::TotalOrder;
use timely::progress::Timestamp;

use super::algorithm::{self, nearest, standardize, KMeansParams, Standardizer};
use crate::local::pre_aggregate;

/// Configuration of [`kmeans_segments`].
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentConfig {
    /// The k-means parameters of every refit (k, restarts, iterations, tolerance, seed).
    pub kmeans: KMeansParams,
    /// Per trait, the divisor applied before `log1p` (`log1p(trait / scale)`), e.g. 100 to
    /// turn cents into currency units. Missing, non-finite or non-positive entries mean 1.
    pub scales: Vec<f64>,
    /// No model is fit before this many keys have traits (except at the end of the input,
    /// where any non-empty input gets a model).
    pub min_users: usize,
    /// Scheduled refit: once the number of key changes since the last fit reaches this
    /// ratio times the keys the last fit saw (at least 1 change). 0 or less: no scheduled
    /// refits (only drift and end of input).
    pub refit_change_ratio: f64,
    /// Drift refit: when the mean squared distance under the current model exceeds this
    /// factor times its value at the fit. 0 or less: off.
    pub drift_factor: f64,
    /// A drift refit also needs at least this ratio of the last fit's keys to have changed
    /// since it (so one odd key cannot trigger refits epoch after epoch).
    pub drift_min_change_ratio: f64,
}

impl Default for SegmentConfig {
    fn default() -> SegmentConfig {
        SegmentConfig {
            kmeans: KMeansParams::default(),
            scales: Vec::new(),
            min_users: 100,
            refit_change_ratio: 1.0,
            drift_factor: 1.5,
            drift_min_change_ratio: 0.1,
        }
    }
}

impl SegmentConfig {
    fn scale(&self, j: usize) -> f64 {
        self.scales
            .get(j)
            .copied()
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0)
    }
}

/// A fitted model: the frozen standardization and the centroids, in standardized space.
///
/// Floats are compared and hashed by their bits, so models can be records of a
/// differential collection (one live model at a time).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Model {
    /// 1 for the first fit of a run, then one more per refit.
    pub version: u64,
    /// Keys the model was fit on.
    pub users: u64,
    /// Per trait, the divisor before `log1p`.
    pub scales: Vec<f64>,
    /// Per feature, the mean of `log1p(trait / scale)` over the keys at the fit.
    pub means: Vec<f64>,
    /// Per feature, the population standard deviation at the fit (1 when it was 0).
    pub stds: Vec<f64>,
    /// The centroids, row-major (`k x dims`), in the canonical order of
    /// [`algorithm::fit`] (largest cluster at the fit first).
    pub centroids: Vec<f64>,
    /// Sum of squared distances of the keys to their nearest centroid at the fit.
    pub sse: f64,
}

impl Model {
    /// Feature dimensions.
    pub fn dims(&self) -> usize {
        self.means.len()
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.centroids.len() / self.dims().max(1)
    }

    /// Centroid `c` (standardized space).
    pub fn centroid(&self, c: usize) -> &[f64] {
        let d = self.dims();
        &self.centroids[c * d..(c + 1) * d]
    }

    /// The standardized features of `traits`: `(log1p(trait / scale) - mean) / std`.
    pub fn features<const D: usize>(&self, traits: &[u64; D]) -> [f64; D] {
        let mut out = raw_features(traits, &self.scales);
        for ((x, m), s) in out.iter_mut().zip(&self.means).zip(&self.stds) {
            *x = standardize(*x, *m, *s);
        }
        out
    }

    /// The nearest centroid to `traits` and the squared distance to it (ties: lowest
    /// cluster).
    pub fn nearest<const D: usize>(&self, traits: &[u64; D]) -> (usize, f64) {
        nearest(&self.centroids, self.dims(), &self.features(traits))
    }

    /// `traits`' row: nearest cluster and Euclidean distance in micro-units.
    pub fn assign<const D: usize>(&self, traits: &[u64; D]) -> Assignment {
        let (c, d2) = self.nearest(traits);
        Assignment {
            cluster: c as u32,
            distance_micros: to_micros(d2.sqrt()),
        }
    }

    fn bits(&self) -> impl Iterator<Item = u64> + '_ {
        self.scales
            .iter()
            .chain(&self.means)
            .chain(&self.stds)
            .chain(&self.centroids)
            .chain(std::iter::once(&self.sse))
            .map(|x| x.to_bits())
    }

    fn shape(&self) -> (u64, u64, usize, usize, usize, usize) {
        (
            self.version,
            self.users,
            self.scales.len(),
            self.means.len(),
            self.stds.len(),
            self.centroids.len(),
        )
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Model {}

impl PartialOrd for Model {
    fn partial_cmp(&self, other: &Model) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Model {
    fn cmp(&self, other: &Model) -> Ordering {
        self.shape()
            .cmp(&other.shape())
            .then_with(|| self.bits().cmp(other.bits()))
    }
}

impl Hash for Model {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.shape().hash(h);
        for b in self.bits() {
            b.hash(h);
        }
    }
}

/// A key's row: its cluster and its Euclidean distance to that cluster's centroid in
/// standardized feature space, in micro-units (`round(distance x 10^6)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Assignment {
    /// Cluster index, `0..k` of the current model.
    pub cluster: u32,
    /// Distance to the centroid, micro-units.
    pub distance_micros: i64,
}

/// A cluster of the current model: its centroid and the keys assigned to it now.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterCentroid {
    /// Cluster index.
    pub cluster: u32,
    /// The centroid in standardized feature space, micro-units per feature.
    pub coordinates_micros: Vec<i64>,
    /// Keys currently assigned to the cluster (0 when a cluster emptied since the fit).
    pub size: u64,
}

/// The outputs of [`kmeans_segments`].
pub struct Segments<'s, T: Timestamp, K: 'static> {
    /// `(key, assignment)`: exactly one row per key with traits, once a model exists.
    pub assignments: VecCollection<'s, T, (K, Assignment)>,
    /// One row per cluster of the current model.
    pub centroids: VecCollection<'s, T, ClusterCentroid>,
    /// The current model (one record once the first fit happened; present on the worker
    /// that fits, worker 0).
    pub models: VecCollection<'s, T, Model>,
}

/// The outputs of [`kmeans_segments_with_state`]: the segments and the fit operator's state.
pub struct StatefulSegments<'s, T: Timestamp, K: 'static> {
    /// Assignments, centroids and models, as [`kmeans_segments`] outputs them.
    pub segments: Segments<'s, T, K>,
    /// The changes of the fit operator's [`FitState`], on worker 0: after every completed
    /// time with input, the accumulation of `state` *concatenated with the `restored` input*
    /// is exactly one record, the state after that time. The operator does not re-emit the
    /// restored record (it goes from it with `(restored, -1), (next, +1)`), so a caller
    /// checkpoints `state.concat(restored)`, as the engine's `Dataflow::restored` /
    /// `Dataflow::checkpoint` pair expects. Without a restore, `state` alone accumulates
    /// to the state.
    pub state: VecCollection<'s, T, FitState>,
}

/// The fit operator's schedule state: everything it holds besides the keys' traits, which
/// decides the current model and every future refit (the model, its version, the changes
/// since the last fit, the keys at the last fit, the drift baseline).
///
/// Together with the traits it is the whole of the operator's state: the keys' squared
/// distances and their sum (the drift measure) are recomputed from the traits and the
/// model, exactly (integer micro-units, summed as integers). It is a record to checkpoint,
/// not to build by hand: its fields are read-only. The drift baseline is kept as the bits
/// of its `f64`, so the record is `Eq`, `Ord` and `Hash` and round-trips exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FitState {
    model: Option<Model>,
    /// Fits so far that produced or retracted a model (the next model's version is one more).
    version: u64,
    /// Keys whose traits changed (per completed time) since the last fit.
    changes: u64,
    /// Keys at the last fit.
    fit_users: u64,
    /// Mean squared distance at the last fit, micro-units, as `f64` bits.
    fit_mean_sq_bits: u64,
}

impl FitState {
    /// The current model, if any.
    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Fits so far that produced or retracted a model.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Keys whose traits changed since the last fit.
    pub fn changes_since_fit(&self) -> u64 {
        self.changes
    }

    /// Keys at the last fit.
    pub fn keys_at_fit(&self) -> u64 {
        self.fit_users
    }

    /// The drift baseline: the mean squared distance of the keys to their centroids at the
    /// last fit, micro-units.
    pub fn fit_mean_squared_micros(&self) -> f64 {
        f64::from_bits(self.fit_mean_sq_bits)
    }
}

/// `round(x x 10^6)` as an integer (saturating; NaN is 0).
pub fn to_micros(x: f64) -> i64 {
    (x * 1e6).round() as i64
}

/// `log1p(trait / scale)` per trait (scale 1 where `scales` has no positive finite entry).
pub fn raw_features<const D: usize>(traits: &[u64; D], scales: &[f64]) -> [f64; D] {
    let mut out = [0.0; D];
    for (j, (x, t)) in out.iter_mut().zip(traits).enumerate() {
        let s = scales
            .get(j)
            .copied()
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        *x = (*t as f64 / s).ln_1p();
    }
    out
}

/// Fits a model to the traits of every key, in key order: log1p features, standardized
/// with their own means and deviations, then [`algorithm::fit`]. `None` when there are no
/// keys. This is the batch computation the operator's end-of-input model equals.
pub fn fit_model<'a, const D: usize>(
    traits: impl Iterator<Item = &'a [u64; D]>,
    version: u64,
    config: &SegmentConfig,
) -> Option<Model> {
    let scales: Vec<f64> = (0..D).map(|j| config.scale(j)).collect();
    let mut points: Vec<f64> = Vec::new();
    for t in traits {
        points.extend_from_slice(&raw_features(t, &scales));
    }
    if points.is_empty() || D == 0 {
        return None;
    }
    let scaler = Standardizer::fit(&points, D);
    for row in points.chunks_exact_mut(D) {
        scaler.apply(row);
    }
    let fit = algorithm::fit(&points, D, &config.kmeans);
    Some(Model {
        version,
        users: (points.len() / D) as u64,
        scales,
        means: scaler.means,
        stds: scaler.stds,
        centroids: fit.centroids,
        sse: fit.sse,
    })
}

/// The operator's result over a final input, computed as a batch: the model fit on every
/// key's traits and each key's assignment. Equals what [`kmeans_segments`] outputs after
/// its input ends (up to the model's `version`).
pub fn segments_batch<K: Ord + Clone, const D: usize>(
    traits: &BTreeMap<K, [u64; D]>,
    config: &SegmentConfig,
) -> (Option<Model>, BTreeMap<K, Assignment>) {
    let model = fit_model(traits.values(), 1, config);
    let rows = match &model {
        Some(m) => traits
            .iter()
            .map(|(k, t)| (k.clone(), m.assign(t)))
            .collect(),
        None => BTreeMap::new(),
    };
    (model, rows)
}

/// The k-means segmentation of `traits` (see the [module docs](super)).
///
/// `traits` holds `(key, traits)`; a key's traits are its greatest record with positive
/// multiplicity (a well-formed input has one record per key). This is
/// [`kmeans_segments_with_state`] with nothing to restore and the state dropped.
pub fn kmeans_segments<'s, T, K, const D: usize>(
    traits: VecCollection<'s, T, (K, [u64; D])>,
    config: SegmentConfig,
) -> Segments<'s, T, K>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    [u64; D]: ExchangeData + Hash,
{
    kmeans_segments_with_state(traits, None, config).segments
}

/// [`kmeans_segments`] that publishes the fit operator's [`FitState`] and can be restored
/// from it (see [Restore](super#restore)).
///
/// `restored`: the state to restore, at most one record, at the restored time `C` (on any
/// worker). At `C` the fit operator takes that time's traits changes (on a restore, the
/// whole traits collection as of `C`) into its per-key traits without counting them as
/// changes, installs the restored state instead, decides no refit, and emits the restored
/// model at `C` (retracting the model it had, if any). A restored collection with more
/// than one live record at a time is malformed; the greatest record with positive
/// multiplicity is installed (as for traits).
///
/// The returned `state` does not repeat the restored record: checkpoint
/// `state.concat(restored)` (see [`StatefulSegments::state`]).
pub fn kmeans_segments_with_state<'s, T, K, const D: usize>(
    traits: VecCollection<'s, T, (K, [u64; D])>,
    restored: Option<VecCollection<'s, T, FitState>>,
    config: SegmentConfig,
) -> StatefulSegments<'s, T, K>
where
    T: Timestamp + Lattice + TotalOrder + Hash,
    K: ExchangeData + Hash,
    [u64; D]: ExchangeData + Hash,
{
    let restored = match restored {
        Some(r) => r.inner,
        None => empty(traits.scope()),
    };
    let (models, state) = fit_models(traits.clone(), restored, config);
    let assignments = assign(traits, models.clone());
    let sizes = pre_aggregate(
        assignments.clone().map(|(_k, a)| a.cluster),
        "cluster_sizes",
    )
    .count()
    .map(|(c, n)| (c, CentroidPart::Size(n as u64)));
    let centroids = models
        .clone()
        .flat_map(|m| {
            (0..m.k())
                .map(|c| {
                    let coords = m.centroid(c).iter().map(|x| to_micros(*x)).collect();
                    (c as u32, CentroidPart::Coordinates(coords))
                })
                .collect::<Vec<_>>()
        })
        .concat(sizes)
        .reduce_named("ClusterCentroids", |cluster: &u32, input, output| {
            let mut coords = None;
            let mut size = 0;
            for (part, diff) in input {
                if *diff <= 0 {
                    continue;
                }
                match part {
                    CentroidPart::Coordinates(c) => coords = Some(c.clone()),
                    CentroidPart::Size(n) => size = *n,
                }
            }
            if let Some(coordinates_micros) = coords {
                output.push((
                    ClusterCentroid {
                        cluster: *cluster,
                        coordinates_micros,
                        size,
                    },
                    1isize,
                ));
            }
        })
        .map(|(_c, row)| row);
    StatefulSegments {
        segments: Segments {
            assignments,
            centroids,
            models,
        },
        state,
    }
}

/// What a cluster's row is made of: the model's centroid, and the count of its keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum CentroidPart {
    Coordinates(Vec<i64>),
    Size(u64),
}

/// A key's accumulated traits records: almost always exactly one with multiplicity 1.
#[derive(Clone, Debug, Default)]
enum TraitBag<const D: usize> {
    #[default]
    Empty,
    One([u64; D]),
    Many(Vec<([u64; D], isize)>),
}

impl<const D: usize> TraitBag<D> {
    fn update(&mut self, value: [u64; D], diff: isize) {
        let mut many = match std::mem::take(self) {
            TraitBag::Empty if diff == 1 => {
                *self = TraitBag::One(value);
                return;
            }
            TraitBag::One(x) if x == value && diff == -1 => return,
            TraitBag::Empty => Vec::new(),
            TraitBag::One(x) => vec![(x, 1)],
            TraitBag::Many(v) => v,
        };
        match many.iter_mut().find(|(v, _)| *v == value) {
            Some(entry) => entry.1 += diff,
            None => many.push((value, diff)),
        }
        many.retain(|(_, r)| *r != 0);
        *self = match many.as_slice() {
            [] => TraitBag::Empty,
            [(v, 1)] => TraitBag::One(*v),
            _ => TraitBag::Many(many),
        };
    }

    /// The key's traits: the greatest record with positive multiplicity.
    fn effective(&self) -> Option<&[u64; D]> {
        match self {
            TraitBag::Empty => None,
            TraitBag::One(v) => Some(v),
            TraitBag::Many(v) => v.iter().filter(|(_, r)| *r > 0).map(|(v, _)| v).max(),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, TraitBag::Empty)
    }
}

/// Per time, updates buffered until the frontier passes the time, and a capability for it.
type Pending<T, K, const D: usize> = BTreeMap<T, (Capability<T>, Vec<(K, [u64; D], isize)>)>;

/// Buffers `data` by time, holding a capability for each time.
fn buffer<T: Timestamp + TotalOrder, X>(
    pending: &mut BTreeMap<T, (Capability<T>, Vec<X>)>,
    cap: &InputCapability<T>,
    data: impl Iterator<Item = (X, T)>,
) {
    for (x, t) in data {
        match pending.get_mut(&t) {
            Some(entry) => entry.1.push(x),
            None => {
                let Some(c) = cap.retain_least(0) else {
                    continue; // a message with no capability carries no data we may act on
                };
                pending.insert(t.clone(), (c.delayed(&t), vec![x]));
            }
        }
    }
}

/// The fitting side, on worker 0: every key's traits, the refit schedule, the model.
struct Fitter<K, const D: usize> {
    config: SegmentConfig,
    /// Per key: its traits and its squared distance (micro-units) under the current model.
    users: BTreeMap<K, (TraitBag<D>, u64)>,
    /// The model and the refit schedule.
    state: FitState,
    /// Sum of the keys' squared distances, micro-units (a function of `users` and the model).
    sse_micros: u128,
}

impl<K: Ord + Clone, const D: usize> Fitter<K, D> {
    fn new(config: SegmentConfig) -> Self {
        Fitter {
            config,
            users: BTreeMap::new(),
            state: FitState::default(),
            sse_micros: 0,
        }
    }

    fn squared_micros(model: &Option<Model>, traits: Option<&[u64; D]>) -> u64 {
        match (model, traits) {
            (Some(m), Some(t)) => (m.nearest(t).1 * 1e6).round() as u64,
            _ => 0,
        }
    }

    /// Applies one completed time's updates.
    fn apply(&mut self, updates: Vec<(K, [u64; D], isize)>) {
        let mut touched: BTreeMap<K, Option<[u64; D]>> = BTreeMap::new();
        for (key, value, diff) in updates {
            let entry = self.users.entry(key.clone()).or_default();
            touched
                .entry(key)
                .or_insert_with(|| entry.0.effective().copied());
            entry.0.update(value, diff);
        }
        for (key, old) in touched {
            let Some(entry) = self.users.get_mut(&key) else {
                continue;
            };
            let new = entry.0.effective().copied();
            if new != old {
                self.state.changes += 1;
                self.sse_micros -= u128::from(entry.1);
                entry.1 = Self::squared_micros(&self.state.model, new.as_ref());
                self.sse_micros += u128::from(entry.1);
            }
            if entry.0.is_empty() {
                self.users.remove(&key);
            }
        }
    }

    /// Applies one completed time's updates without counting them, and installs `state`
    /// instead of deciding anything: a restore. Returns the model change.
    fn restore(&mut self, updates: Vec<(K, [u64; D], isize)>, state: FitState) -> ModelChange {
        for (key, value, diff) in updates {
            self.users.entry(key).or_default().0.update(value, diff);
        }
        self.users.retain(|_, (bag, _)| !bag.is_empty());
        let old = std::mem::replace(&mut self.state, state);
        self.measure();
        model_change(old.model, &self.state.model)
    }

    /// Recomputes every key's squared distance under the current model, and their sum.
    fn measure(&mut self) {
        self.sse_micros = 0;
        for (bag, sq) in self.users.values_mut() {
            *sq = Self::squared_micros(&self.state.model, bag.effective());
            self.sse_micros += u128::from(*sq);
        }
    }

    /// Whether the schedule asks for a refit now.
    fn due(&self) -> bool {
        let s = &self.state;
        let n = self.users.len() as u64;
        if n == 0 {
            return s.model.is_some() && s.changes > 0;
        }
        if s.model.is_none() {
            return n >= self.config.min_users as u64;
        }
        let c = &self.config;
        let fit_users = s.fit_users as f64;
        if c.refit_change_ratio > 0.0
            && s.changes as f64 >= (c.refit_change_ratio * fit_users).ceil().max(1.0)
        {
            return true;
        }
        if c.drift_factor > 0.0
            && s.changes > 0
            && s.changes as f64 >= (c.drift_min_change_ratio * fit_users).ceil()
        {
            let mean_sq = self.sse_micros as f64 / n as f64;
            return mean_sq > c.drift_factor * s.fit_mean_squared_micros();
        }
        false
    }

    /// Whether the end of the input asks for a (last) refit.
    fn due_at_end(&self) -> bool {
        self.state.changes > 0 || (self.state.model.is_none() && !self.users.is_empty())
    }

    /// Refits; the model change (none when there was and is no model).
    fn refit(&mut self) -> ModelChange {
        let model = fit_model(
            self.users.values().filter_map(|(bag, _)| bag.effective()),
            self.state.version + 1,
            &self.config,
        );
        self.state.changes = 0;
        if model.is_none() && self.state.model.is_none() {
            return Vec::new();
        }
        self.state.version += 1;
        let old = std::mem::replace(&mut self.state.model, model);
        self.measure();
        self.state.fit_users = self.users.len() as u64;
        let mean_sq = self.sse_micros as f64 / self.state.fit_users.max(1) as f64;
        self.state.fit_mean_sq_bits = mean_sq.to_bits();
        model_change(old, &self.state.model)
    }
}

/// A model change as differential updates (the old model out, the new one in).
type ModelChange = Vec<(Model, isize)>;

fn model_change(old: Option<Model>, new: &Option<Model>) -> ModelChange {
    if old == *new {
        return Vec::new();
    }
    let mut changes = Vec::new();
    if let Some(old) = old {
        changes.push((old, -1));
    }
    if let Some(new) = new {
        changes.push((new.clone(), 1));
    }
    changes
}

/// What the fit operator emits, split into its two outputs.
#[derive(Clone)]
enum Fitted {
    Model(Model),
    State(FitState),
}

/// The record with the greatest positive accumulated multiplicity among `updates`.
fn live_state(updates: Vec<(FitState, isize)>) -> Option<FitState> {
    let mut acc: BTreeMap<FitState, isize> = BTreeMap::new();
    for (s, r) in updates {
        *acc.entry(s).or_default() += r;
    }
    acc.into_iter()
        .filter(|(_, r)| *r > 0)
        .map(|(s, _)| s)
        .next_back()
}

/// The model collection and the fit state's changes: every key's traits gathered on
/// worker 0, refit on schedule and at the end of the input, or restored from `restored`.
fn fit_models<'s, T, K, const D: usize>(
    traits: VecCollection<'s, T, (K, [u64; D])>,
    restored: StreamVec<'s, T, (FitState, T, isize)>,
    config: SegmentConfig,
) -> (VecCollection<'s, T, Model>, VecCollection<'s, T, FitState>)
where
    T: Timestamp + Lattice + TotalOrder,
    K: ExchangeData + Hash,
    [u64; D]: ExchangeData + Hash,
{
    type Restores<T> = BTreeMap<T, (Capability<T>, Vec<(FitState, isize)>)>;
    let mut fitter: Fitter<K, D> = Fitter::new(config);
    let mut pending: Pending<T, K, D> = BTreeMap::new();
    let mut pending_restores: Restores<T> = BTreeMap::new();
    // The state as the `state` output accumulates it (with the restored record).
    let mut published: Option<FitState> = None;
    let fitted = traits
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<(Fitted, T, isize)>>, _, _, _, _>(
            restored,
            Exchange::new(|_: &((K, [u64; D]), T, isize)| 0u64),
            Exchange::new(|_: &(FitState, T, isize)| 0u64),
            "KMeansFit",
            move |cap, _info| {
                // Held at the inputs' frontier, so the end-of-input refit has a time to go
                // out at.
                let mut held = Some(cap);
                let mut last: Option<T> = None;
                move |(input1, frontier1), (input2, frontier2), output| {
                    input1.for_each(|cap, data| {
                        buffer(
                            &mut pending,
                            &cap,
                            data.drain(..).map(|((k, v), t, r)| ((k, v, r), t)),
                        );
                    });
                    input2.for_each(|cap, data| {
                        buffer(
                            &mut pending_restores,
                            &cap,
                            data.drain(..).map(|(s, t, r)| ((s, r), t)),
                        );
                    });
                    loop {
                        let next = match (pending.keys().next(), pending_restores.keys().next()) {
                            (Some(a), Some(b)) => a.min(b).clone(),
                            (Some(a), None) => a.clone(),
                            (None, Some(b)) => b.clone(),
                            (None, None) => break,
                        };
                        if frontier1.less_equal(&next) || frontier2.less_equal(&next) {
                            break;
                        }
                        let (cap_a, updates) = pending.remove(&next).unzip();
                        let (cap_b, restores) = pending_restores.remove(&next).unzip();
                        let Some(cap) = cap_a.or(cap_b) else { break };
                        let updates = updates.unwrap_or_default();
                        let mut session = output.session(&cap);
                        let models = match restores.and_then(live_state) {
                            Some(state) => {
                                // The caller holds the restored record in its state already.
                                published = Some(state.clone());
                                fitter.restore(updates, state)
                            }
                            None => {
                                fitter.apply(updates);
                                if fitter.due() {
                                    fitter.refit()
                                } else {
                                    Vec::new()
                                }
                            }
                        };
                        for (m, r) in models {
                            session.give((Fitted::Model(m), next.clone(), r));
                        }
                        for (s, r) in state_change(&mut published, &fitter.state) {
                            session.give((Fitted::State(s), next.clone(), r));
                        }
                        last = Some(next);
                    }
                    let least = frontier1
                        .frontier()
                        .iter()
                        .chain(frontier2.frontier().iter())
                        .min()
                        .cloned();
                    match least {
                        Some(f) => {
                            if let Some(h) = held.as_mut() {
                                h.downgrade(&f);
                            }
                        }
                        None => {
                            // End of input: the final model is a function of the final traits.
                            if let Some(h) = held.take() {
                                if fitter.due_at_end() {
                                    let t = match &last {
                                        Some(l) if h.time().less_than(l) => l.clone(),
                                        _ => h.time().clone(),
                                    };
                                    let cap = h.delayed(&t);
                                    let mut session = output.session(&cap);
                                    for (m, r) in fitter.refit() {
                                        session.give((Fitted::Model(m), t.clone(), r));
                                    }
                                    for (s, r) in state_change(&mut published, &fitter.state) {
                                        session.give((Fitted::State(s), t.clone(), r));
                                    }
                                }
                            }
                        }
                    }
                }
            },
        );
    // `ok_err` routes by `Result`: `Err` is the second output here, not an error, and the
    // record moves into its output container either way, so its size costs nothing.
    #[allow(clippy::result_large_err)]
    let (models, state): (StreamVec<'s, T, _>, StreamVec<'s, T, _>) =
        fitted.ok_err(|(f, t, r)| match f {
            Fitted::Model(m) => Ok((m, t, r)),
            Fitted::State(s) => Err((s, t, r)),
        });
    (models.as_collection(), state.as_collection())
}

/// The state's change since `published` (which it then becomes): `(old, -1), (new, +1)`.
fn state_change(published: &mut Option<FitState>, now: &FitState) -> Vec<(FitState, isize)> {
    if published.as_ref() == Some(now) {
        return Vec::new();
    }
    let mut changes = Vec::new();
    if let Some(old) = published.replace(now.clone()) {
        changes.push((old, -1));
    }
    changes.push((now.clone(), 1));
    changes
}

/// A key's state on the worker that owns it: traits and current row.
#[derive(Default)]
struct Member<const D: usize> {
    traits: TraitBag<D>,
    row: Option<Assignment>,
}

/// The assignment side, on every worker: each key's nearest centroid under the current
/// model, updated when the key's traits change and for every key when the model changes.
fn assign<'s, T, K, const D: usize>(
    traits: VecCollection<'s, T, (K, [u64; D])>,
    models: VecCollection<'s, T, Model>,
) -> VecCollection<'s, T, (K, Assignment)>
where
    T: Timestamp + Lattice + TotalOrder,
    K: ExchangeData + Hash,
    [u64; D]: ExchangeData + Hash,
{
    type Models<T> = BTreeMap<T, (Capability<T>, Vec<(Model, isize)>)>;
    let mut members: HashMap<K, Member<D>> = HashMap::new();
    let mut pending: Pending<T, K, D> = BTreeMap::new();
    let mut pending_models: Models<T> = BTreeMap::new();
    let mut live: BTreeMap<Model, isize> = BTreeMap::new();
    let mut current: Option<Model> = None;
    traits
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<((K, Assignment), T, isize)>>, _, _, _, _>(
            models.inner.broadcast(),
            Exchange::new(|u: &((K, [u64; D]), T, isize)| (u.0).0.hashed()),
            Pipeline,
            "KMeansAssign",
            move |_cap, _info| {
                move |(input1, frontier1), (input2, frontier2), output| {
                    input1.for_each(|cap, data| {
                        buffer(
                            &mut pending,
                            &cap,
                            data.drain(..).map(|((k, v), t, r)| ((k, v, r), t)),
                        );
                    });
                    input2.for_each(|cap, data| {
                        buffer(
                            &mut pending_models,
                            &cap,
                            data.drain(..).map(|(m, t, r)| ((m, r), t)),
                        );
                    });
                    loop {
                        let next = match (pending.keys().next(), pending_models.keys().next()) {
                            (Some(a), Some(b)) => a.min(b).clone(),
                            (Some(a), None) => a.clone(),
                            (None, Some(b)) => b.clone(),
                            (None, None) => break,
                        };
                        if frontier1.less_equal(&next) || frontier2.less_equal(&next) {
                            break;
                        }
                        let (cap_a, updates) = pending.remove(&next).unzip();
                        let (cap_b, model_updates) = pending_models.remove(&next).unzip();
                        let Some(cap) = cap_a.or(cap_b) else { break };
                        // 1. The model at `next`.
                        for (m, r) in model_updates.into_iter().flatten() {
                            let e = live.entry(m).or_default();
                            *e += r;
                        }
                        live.retain(|_, r| *r != 0);
                        let now = live
                            .iter()
                            .filter(|(_, r)| **r > 0)
                            .map(|(m, _)| m)
                            .next_back()
                            .cloned();
                        let reassign_all = now != current;
                        current = now;
                        // 2. The traits at `next`.
                        let mut touched: Vec<K> = Vec::new();
                        for (key, value, diff) in updates.into_iter().flatten() {
                            members.entry(key.clone()).or_default().traits.update(value, diff);
                            touched.push(key);
                        }
                        // 3. Rows that changed.
                        let mut session = output.session(&cap);
                        let mut refresh = |key: &K, m: &mut Member<D>| {
                            let row = match (&current, m.traits.effective()) {
                                (Some(model), Some(t)) => Some(model.assign(t)),
                                _ => None,
                            };
                            if row != m.row {
                                if let Some(old) = m.row {
                                    session.give(((key.clone(), old), next.clone(), -1));
                                }
                                if let Some(new) = row {
                                    session.give(((key.clone(), new), next.clone(), 1));
                                }
                                m.row = row;
                            }
                        };
                        if reassign_all {
                            for (key, m) in members.iter_mut() {
                                refresh(key, m);
                            }
                        }
                        touched.sort();
                        touched.dedup();
                        for key in &touched {
                            if let Some(m) = members.get_mut(key) {
                                if !reassign_all {
                                    refresh(key, m);
                                }
                                // Only keys touched now can have lost their traits.
                                if m.traits.is_empty() {
                                    members.remove(key);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_bag_keeps_the_greatest_live_record() {
        let mut b: TraitBag<2> = TraitBag::default();
        b.update([1, 2], 1);
        assert_eq!(b.effective(), Some(&[1, 2]));
        b.update([3, 0], 1);
        assert_eq!(b.effective(), Some(&[3, 0]));
        b.update([3, 0], -1);
        assert!(matches!(b, TraitBag::One([1, 2])));
        b.update([1, 2], 1);
        assert_eq!(b.effective(), Some(&[1, 2]));
        b.update([1, 2], -2);
        assert!(b.is_empty());
        // A retraction seen before its insertion within one time.
        b.update([5, 5], -1);
        assert_eq!(b.effective(), None);
        b.update([5, 5], 1);
        assert!(b.is_empty());
    }

    #[test]
    fn models_compare_by_bits() {
        let m = Model {
            version: 1,
            users: 2,
            scales: vec![1.0],
            means: vec![0.5],
            stds: vec![1.0],
            centroids: vec![0.0, 1.0],
            sse: 0.25,
        };
        let mut n = m.clone();
        assert_eq!(m, n);
        n.centroids[1] = 1.0 + f64::EPSILON;
        assert_ne!(m, n);
        assert_eq!(m.k(), 2);
        assert_eq!(m.assign(&[0]).cluster, 0); // log1p(0)=0 -> (0-0.5)/1 = -0.5: nearer 0.0
        assert_eq!(m.assign(&[3]).cluster, 1); // log1p(3)=1.386 -> 0.886: nearer 1.0
    }
}
