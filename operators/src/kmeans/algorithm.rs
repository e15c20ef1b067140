//! The pure k-means core: deterministic k-means++ seeding, Lloyd iterations, restarts.
//!
//! No dataflow here: [`fit`] takes points as a row-major `&[f64]` (`n` rows of `dims`
//! values) and returns centroids, sizes, labels and the within-cluster sum of squared
//! distances (SSE, scikit-learn's "inertia"). The dataflow operator in
//! [`super::segments`] calls it on one worker at each refit; tests and batch checks call it
//! directly.
//!
//! Algorithm (scikit-learn's `KMeans(init="k-means++", algorithm="lloyd")`, with our own
//! random numbers):
//! - `k_eff = min(k, distinct points)`: with fewer distinct points than `k` there are fewer
//!   clusters (scikit-learn raises an error instead).
//! - Each of `n_init` runs seeds with *greedy* k-means++: the first centre uniformly, then
//!   per centre `2 + ln(k)` candidates drawn with probability proportional to the squared
//!   distance to the nearest chosen centre, keeping the candidate that lowers the potential
//!   most.
//! - Lloyd iterations until the labels stop changing, or the summed squared centre shift is
//!   at most `tolerance x mean per-dimension variance of the points`, or `max_iter`. A
//!   cluster left empty takes the point farthest from its centre (from a cluster of more
//!   than one point).
//! - The run with the least SSE wins (the first one on ties); labels and SSE are those of a
//!   final assignment of every point to its nearest centre.
//! - Clusters are then put in a canonical order: larger clusters first, ties by centroid
//!   coordinates (lexicographic, `f64::total_cmp`), so the labels do not depend on which
//!   run or which random centre found a cluster.
//!
//! Determinism: the result is a pure function of `(points in order, dims, params)`; the
//! random numbers come from [`SplitMix64`] seeded from `params.seed` (run `r` uses the
//! `r`-th output of a generator seeded with `seed`), and every sum is taken in point order.
//! Ties in nearest-centre search go to the lowest cluster index.
//!
//! Cost: `O(n_init x (k x trials + iterations x k) x n x dims)` time; `O(n + k x dims)`
//! memory beyond the points.

use std::cmp::Ordering;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-mixed deterministic PRNG.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n` is 0). Multiply-shift, no modulo bias
    /// beyond 2^-64.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Parameters of [`fit`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansParams {
    /// Number of clusters asked for (fewer when there are fewer distinct points).
    pub k: usize,
    /// Independent k-means++ restarts; the best SSE wins (at least 1 run).
    pub n_init: usize,
    /// Maximum Lloyd iterations per run (at least 1).
    pub max_iter: usize,
    /// Relative tolerance on the squared centre shift (scaled by the mean variance of the
    /// points, as in scikit-learn).
    pub tolerance: f64,
    /// Seed of the random numbers.
    pub seed: u64,
}

impl Default for KMeansParams {
    /// scikit-learn's defaults with `k = 5` and seed 0.
    fn default() -> KMeansParams {
        KMeansParams {
            k: 5,
            n_init: 10,
            max_iter: 300,
            tolerance: 1e-4,
            seed: 0,
        }
    }
}

/// The result of [`fit`].
#[derive(Clone, Debug, PartialEq)]
pub struct KMeansFit {
    /// Dimensions of a point.
    pub dims: usize,
    /// `k_eff` centroids, row-major (`k_eff x dims`), in canonical order (see the module docs).
    pub centroids: Vec<f64>,
    /// Points nearest to each centroid.
    pub sizes: Vec<u64>,
    /// Per point, the index of its nearest centroid (ties: lowest index).
    pub labels: Vec<u32>,
    /// Sum over points of the squared distance to the nearest centroid.
    pub sse: f64,
    /// Lloyd iterations of the winning run.
    pub iterations: usize,
}

impl KMeansFit {
    /// Number of clusters found (`min(k, distinct points)`).
    pub fn k(&self) -> usize {
        self.sizes.len()
    }

    /// Centroid `c`.
    pub fn centroid(&self, c: usize) -> &[f64] {
        &self.centroids[c * self.dims..(c + 1) * self.dims]
    }
}

/// Squared Euclidean distance.
#[inline]
pub fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The nearest of the row-major `centroids` to `point` and its squared distance; ties go
/// to the lowest index. `(0, inf)` when there are no centroids.
#[inline]
pub fn nearest(centroids: &[f64], dims: usize, point: &[f64]) -> (usize, f64) {
    let mut best = (0usize, f64::INFINITY);
    for (c, centre) in centroids.chunks_exact(dims.max(1)).enumerate() {
        let d = squared_distance(centre, point);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// Per-dimension mean and population standard deviation, as scikit-learn's
/// `StandardScaler` computes them (a zero deviation is replaced by 1, so a constant
/// dimension standardizes to 0).
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// Per-dimension means.
    pub means: Vec<f64>,
    /// Per-dimension standard deviations (never 0).
    pub stds: Vec<f64>,
}

impl Standardizer {
    /// Fits means and deviations over the row-major `points` (two passes, in point order).
    pub fn fit(points: &[f64], dims: usize) -> Standardizer {
        let n = points.len() / dims.max(1);
        let mut means = vec![0.0; dims];
        let mut stds = vec![1.0; dims];
        if n == 0 {
            return Standardizer { means, stds };
        }
        for row in points.chunks_exact(dims) {
            for (m, x) in means.iter_mut().zip(row) {
                *m += x;
            }
        }
        for m in &mut means {
            *m /= n as f64;
        }
        let mut vars = vec![0.0; dims];
        for row in points.chunks_exact(dims) {
            for ((v, x), m) in vars.iter_mut().zip(row).zip(&means) {
                *v += (x - m) * (x - m);
            }
        }
        for (s, v) in stds.iter_mut().zip(&vars) {
            let sd = (v / n as f64).sqrt();
            // scikit-learn treats scales below ~10 machine epsilons as zero.
            *s = if sd.is_finite() && sd > 10.0 * f64::EPSILON {
                sd
            } else {
                1.0
            };
        }
        Standardizer { means, stds }
    }

    /// Standardizes one point in place: `(x - mean) / std` per dimension.
    pub fn apply(&self, point: &mut [f64]) {
        for ((x, m), s) in point.iter_mut().zip(&self.means).zip(&self.stds) {
            *x = standardize(*x, *m, *s);
        }
    }
}

/// `(x - mean) / std`: the one formula every standardization in the crate uses, so the
/// fitting and the assignment of a point agree to the bit.
#[inline]
pub fn standardize(x: f64, mean: f64, std: f64) -> f64 {
    (x - mean) / std
}

/// Fits k-means to the row-major `points` (see the module docs). `dims` must be positive.
pub fn fit(points: &[f64], dims: usize, params: &KMeansParams) -> KMeansFit {
    let dims = dims.max(1);
    let n = points.len() / dims;
    let points = &points[..n * dims];
    let k = params.k.min(count_distinct(points, dims));
    if k == 0 {
        return KMeansFit {
            dims,
            centroids: Vec::new(),
            sizes: Vec::new(),
            labels: Vec::new(),
            sse: 0.0,
            iterations: 0,
        };
    }
    let tol = params.tolerance.max(0.0) * mean_variance(points, dims);
    let mut seeds = SplitMix64::new(params.seed);
    let mut best: Option<(Vec<f64>, f64, usize)> = None;
    for _run in 0..params.n_init.max(1) {
        let mut rng = SplitMix64::new(seeds.next_u64());
        let init = kmeans_plus_plus(points, dims, k, &mut rng);
        let (centroids, iterations) = lloyd(points, dims, init, params.max_iter.max(1), tol);
        let sse = sse_of(points, dims, &centroids);
        if best.as_ref().map(|b| sse < b.1).unwrap_or(true) {
            best = Some((centroids, sse, iterations));
        }
    }
    let (centroids, _, iterations) = best.unwrap_or_default();
    canonical(points, dims, centroids, iterations)
}

/// The number of distinct rows (bitwise after normalising -0.0 to 0.0).
fn count_distinct(points: &[f64], dims: usize) -> usize {
    let mut rows: Vec<&[f64]> = points.chunks_exact(dims).collect();
    rows.sort_unstable_by(|a, b| cmp_rows(a, b));
    rows.dedup_by(|a, b| cmp_rows(a, b) == Ordering::Equal);
    rows.len()
}

/// Lexicographic order of rows by `f64::total_cmp`, with -0.0 equal to 0.0.
fn cmp_rows(a: &[f64], b: &[f64]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = (x + 0.0).total_cmp(&(y + 0.0));
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Mean over dimensions of the population variance of the points.
fn mean_variance(points: &[f64], dims: usize) -> f64 {
    let n = points.len() / dims;
    if n == 0 {
        return 0.0;
    }
    let scaler = Standardizer::fit(points, dims);
    let mut total = 0.0;
    for row in points.chunks_exact(dims) {
        total += squared_distance(row, &scaler.means);
    }
    total / (n as f64 * dims as f64)
}

/// Greedy k-means++ seeding of `k` centres (k <= distinct points).
fn kmeans_plus_plus(points: &[f64], dims: usize, k: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let n = points.len() / dims;
    let row = |i: usize| &points[i * dims..(i + 1) * dims];
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut centres = Vec::with_capacity(k * dims);
    let first = rng.below(n);
    centres.extend_from_slice(row(first));
    let mut closest: Vec<f64> = (0..n)
        .map(|i| squared_distance(row(i), row(first)))
        .collect();
    let mut potential: f64 = closest.iter().sum();
    let mut cumulative = vec![0.0; n];
    let mut candidate_dist = vec![0.0; n];
    let mut best_dist = vec![0.0; n];
    for _c in 1..k {
        if potential <= 0.0 {
            break; // cannot happen with k <= distinct points; kept as a guard
        }
        let mut acc = 0.0;
        for (c, d) in cumulative.iter_mut().zip(&closest) {
            acc += d;
            *c = acc;
        }
        let mut best: Option<(usize, f64)> = None;
        for _t in 0..trials {
            let r = rng.next_f64() * acc;
            let mut idx = cumulative.partition_point(|s| *s <= r).min(n - 1);
            if closest[idx] <= 0.0 {
                // Rounding at the top end: take the last point with positive weight.
                idx = closest.iter().rposition(|d| *d > 0.0).unwrap_or(idx);
            }
            let mut pot = 0.0;
            for (i, (cd, cl)) in candidate_dist.iter_mut().zip(&closest).enumerate() {
                *cd = squared_distance(row(i), row(idx)).min(*cl);
                pot += *cd;
            }
            if best.map(|b| pot < b.1).unwrap_or(true) {
                best = Some((idx, pot));
                std::mem::swap(&mut best_dist, &mut candidate_dist);
            }
        }
        let Some((idx, pot)) = best else { break };
        centres.extend_from_slice(row(idx));
        std::mem::swap(&mut closest, &mut best_dist);
        potential = pot;
    }
    centres
}

/// Lloyd iterations from `centroids`; returns the final centroids and the iterations run.
fn lloyd(
    points: &[f64],
    dims: usize,
    mut centroids: Vec<f64>,
    max_iter: usize,
    tol: f64,
) -> (Vec<f64>, usize) {
    let n = points.len() / dims;
    let k = centroids.len() / dims;
    let mut labels = vec![u32::MAX; n];
    let mut dist = vec![0.0; n];
    let mut sums = vec![0.0; k * dims];
    let mut counts = vec![0u64; k];
    let mut iterations = 0;
    for it in 0..max_iter {
        iterations = it + 1;
        sums.iter_mut().for_each(|s| *s = 0.0);
        counts.iter_mut().for_each(|c| *c = 0);
        let mut changed = false;
        for (i, row) in points.chunks_exact(dims).enumerate() {
            let (c, d) = nearest(&centroids, dims, row);
            if labels[i] != c as u32 {
                changed = true;
                labels[i] = c as u32;
            }
            dist[i] = d;
            counts[c] += 1;
            for (s, x) in sums[c * dims..(c + 1) * dims].iter_mut().zip(row) {
                *s += x;
            }
        }
        if !changed {
            break; // strict convergence: the centroids are already the means
        }
        relocate_empty(points, dims, &mut labels, &dist, &mut sums, &mut counts);
        let mut shift = 0.0;
        for c in 0..k {
            if counts[c] == 0 {
                continue; // no point could be moved here; keep the centre
            }
            for j in 0..dims {
                let new = sums[c * dims + j] / counts[c] as f64;
                let old = centroids[c * dims + j];
                shift += (new - old) * (new - old);
                centroids[c * dims + j] = new;
            }
        }
        if shift <= tol {
            break;
        }
    }
    (centroids, iterations)
}

/// Gives each empty cluster the point farthest from its centre, taken from a cluster that
/// keeps at least one point (farthest first, ties by lower point index).
fn relocate_empty(
    points: &[f64],
    dims: usize,
    labels: &mut [u32],
    dist: &[f64],
    sums: &mut [f64],
    counts: &mut [u64],
) {
    let empty: Vec<usize> = (0..counts.len()).filter(|c| counts[*c] == 0).collect();
    if empty.is_empty() {
        return;
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|a, b| dist[*b].total_cmp(&dist[*a]).then(a.cmp(b)));
    let mut candidates = order.into_iter();
    for c in empty {
        for i in candidates.by_ref() {
            let from = labels[i] as usize;
            if counts[from] <= 1 {
                continue;
            }
            let row = &points[i * dims..(i + 1) * dims];
            for (s, x) in sums[from * dims..(from + 1) * dims].iter_mut().zip(row) {
                *s -= x;
            }
            counts[from] -= 1;
            sums[c * dims..(c + 1) * dims].copy_from_slice(row);
            counts[c] = 1;
            labels[i] = c as u32;
            break;
        }
    }
}

/// Sum of squared distances of the points to their nearest centroid.
fn sse_of(points: &[f64], dims: usize, centroids: &[f64]) -> f64 {
    points
        .chunks_exact(dims)
        .map(|row| nearest(centroids, dims, row).1)
        .sum()
}

/// Orders clusters canonically and computes labels, sizes and SSE by a final assignment.
fn canonical(points: &[f64], dims: usize, centroids: Vec<f64>, iterations: usize) -> KMeansFit {
    let k = centroids.len() / dims;
    let mut sizes = vec![0u64; k];
    for row in points.chunks_exact(dims) {
        sizes[nearest(&centroids, dims, row).0] += 1;
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|a, b| {
        sizes[*b].cmp(&sizes[*a]).then_with(|| {
            cmp_rows(
                &centroids[a * dims..(a + 1) * dims],
                &centroids[b * dims..(b + 1) * dims],
            )
        })
    });
    let mut sorted = Vec::with_capacity(centroids.len());
    for c in &order {
        sorted.extend_from_slice(&centroids[c * dims..(c + 1) * dims]);
    }
    let mut sizes = vec![0u64; k];
    let mut labels = Vec::with_capacity(points.len() / dims);
    let mut sse = 0.0;
    for row in points.chunks_exact(dims) {
        let (c, d) = nearest(&sorted, dims, row);
        sizes[c] += 1;
        labels.push(c as u32);
        sse += d;
    }
    KMeansFit {
        dims,
        centroids: sorted,
        sizes,
        labels,
        sse,
        iterations,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Three well-separated blobs in 2-D, `per` points each, with uniform noise.
    fn blobs(per: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
        let centres = [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)];
        let mut rng = SplitMix64::new(seed);
        let mut points = Vec::new();
        let mut truth = Vec::new();
        for i in 0..per * 3 {
            let b = (i * 7) % 3; // interleaved, so point order does not reveal the blob
            let (cx, cy) = centres[b];
            points.push(cx + rng.next_f64() * 2.0 - 1.0);
            points.push(cy + rng.next_f64() * 2.0 - 1.0);
            truth.push(b);
        }
        (points, truth)
    }

    #[test]
    fn recovers_well_separated_clusters() {
        let (points, truth) = blobs(200, 3);
        let params = KMeansParams {
            k: 3,
            ..KMeansParams::default()
        };
        let fit = fit(&points, 2, &params);
        assert_eq!(fit.k(), 3);
        assert_eq!(fit.sizes, vec![200, 200, 200]);
        // Every blob maps to exactly one cluster, and distinct blobs to distinct clusters.
        let mut map = [None; 3];
        for (label, blob) in fit.labels.iter().zip(&truth) {
            match map[*blob] {
                None => map[*blob] = Some(*label),
                Some(l) => assert_eq!(l, *label, "blob {blob} split"),
            }
        }
        let mut labels: Vec<_> = map.iter().map(|l| l.unwrap()).collect();
        labels.sort();
        assert_eq!(labels, vec![0, 1, 2]);
        // Centroids near the blob centres; equal sizes, so ordered by coordinates.
        for (x, y) in [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)] {
            assert!(
                (0..3).any(|c| {
                    let got = fit.centroid(c);
                    (got[0] - x).abs() < 0.2 && (got[1] - y).abs() < 0.2
                }),
                "no centroid near ({x}, {y}): {:?}",
                fit.centroids
            );
        }
        for c in 1..3 {
            assert_eq!(
                cmp_rows(fit.centroid(c - 1), fit.centroid(c)),
                Ordering::Less,
                "equal sizes: lexicographic order"
            );
        }
        // SSE equals the sum of squared distances to the assigned centroids.
        let sse: f64 = points
            .chunks(2)
            .zip(&fit.labels)
            .map(|(p, l)| squared_distance(p, fit.centroid(*l as usize)))
            .sum();
        assert!((sse - fit.sse).abs() < 1e-9);
    }

    #[test]
    fn same_input_and_seed_give_the_same_fit_to_the_bit() {
        let (points, _) = blobs(150, 9);
        let params = KMeansParams {
            k: 5,
            ..KMeansParams::default()
        };
        let a = fit(&points, 2, &params);
        let b = fit(&points, 2, &params);
        assert_eq!(a, b);
        let bits = |f: &KMeansFit| f.centroids.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        // Another seed may find other (equally good or worse) centroids, still valid.
        let c = fit(
            &points,
            2,
            &KMeansParams {
                seed: 77,
                ..params.clone()
            },
        );
        assert_eq!(c.sizes.iter().sum::<u64>(), 450);
    }

    #[test]
    fn more_restarts_never_give_a_worse_sse() {
        let mut rng = SplitMix64::new(5);
        // Unstructured data: many local optima.
        let points: Vec<f64> = (0..600).map(|_| rng.next_f64()).collect();
        let one = fit(
            &points,
            3,
            &KMeansParams {
                k: 6,
                n_init: 1,
                ..KMeansParams::default()
            },
        );
        let ten = fit(
            &points,
            3,
            &KMeansParams {
                k: 6,
                n_init: 10,
                ..KMeansParams::default()
            },
        );
        // Run 0 of both uses the same seed, so ten restarts include the single run.
        assert!(ten.sse <= one.sse, "{} > {}", ten.sse, one.sse);
    }

    /// The least SSE over every assignment of the points to at most `k` clusters.
    fn brute_force_sse(points: &[f64], dims: usize, k: usize) -> f64 {
        let n = points.len() / dims;
        let mut best = f64::INFINITY;
        let mut labels = vec![0usize; n];
        loop {
            let mut sse = 0.0;
            for c in 0..k {
                let members: Vec<&[f64]> = (0..n)
                    .filter(|i| labels[*i] == c)
                    .map(|i| &points[i * dims..(i + 1) * dims])
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let mut mean = vec![0.0; dims];
                for m in &members {
                    for j in 0..dims {
                        mean[j] += m[j] / members.len() as f64;
                    }
                }
                sse += members
                    .iter()
                    .map(|m| squared_distance(m, &mean))
                    .sum::<f64>();
            }
            best = best.min(sse);
            // next assignment (base-k counter)
            let mut i = 0;
            while i < n {
                labels[i] += 1;
                if labels[i] < k {
                    break;
                }
                labels[i] = 0;
                i += 1;
            }
            if i == n {
                return best;
            }
        }
    }

    #[test]
    fn finds_the_optimum_on_small_inputs() {
        for seed in 0..8u64 {
            let mut rng = SplitMix64::new(seed);
            let points: Vec<f64> = (0..16).map(|_| (rng.below(20) as f64) / 4.0).collect();
            let k = 2 + (seed as usize % 2);
            let fit = fit(
                &points,
                2,
                &KMeansParams {
                    k,
                    ..KMeansParams::default()
                },
            );
            let optimum = brute_force_sse(&points, 2, k);
            assert!(
                fit.sse <= optimum + 1e-9,
                "seed {seed}: sse {} optimum {optimum}",
                fit.sse
            );
        }
    }

    #[test]
    fn degenerate_inputs() {
        let params = KMeansParams::default();
        // No points.
        let f = fit(&[], 3, &params);
        assert_eq!((f.k(), f.sse), (0, 0.0));
        // Fewer distinct points than k: one cluster per distinct point, SSE 0.
        let points = [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, -0.0, 0.0, 0.0, 0.0];
        let f = fit(&points, 2, &params);
        assert_eq!(f.k(), 3);
        assert_eq!(f.sse, 0.0);
        assert_eq!(f.sizes, vec![2, 2, 1]);
        // All identical.
        let f = fit(&[3.0; 12], 3, &params);
        assert_eq!((f.k(), f.sizes.clone(), f.sse), (1, vec![4], 0.0));
    }

    #[test]
    fn empty_clusters_take_the_farthest_point() {
        let points = [0.0, 0.1, 0.2, 10.0];
        let mut labels = vec![0u32; 4];
        let dist = [0.0, 0.01, 0.04, 100.0];
        let mut sums = vec![10.3, 0.0];
        let mut counts = vec![4, 0];
        relocate_empty(&points, 1, &mut labels, &dist, &mut sums, &mut counts);
        assert_eq!(labels, vec![0, 0, 0, 1]);
        assert_eq!(counts, vec![3, 1]);
        assert!((sums[0] - 0.3).abs() < 1e-12 && sums[1] == 10.0);
    }

    #[test]
    fn standardizer_matches_population_statistics() {
        let points = [1.0, 5.0, 3.0, 5.0, 5.0, 5.0];
        let s = Standardizer::fit(&points, 2);
        assert_eq!(s.means, vec![3.0, 5.0]);
        assert!((s.stds[0] - (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.stds[1], 1.0, "a constant dimension keeps scale 1");
        let mut p = [5.0, 5.0];
        s.apply(&mut p);
        assert!((p[0] - 2.0 / (8.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(p[1], 0.0);
    }

    #[test]
    fn splitmix_is_uniform_enough() {
        let mut rng = SplitMix64::new(1);
        let mut hist = [0u32; 10];
        for _ in 0..100_000 {
            hist[rng.below(10)] += 1;
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(hist.iter().all(|h| (9_000..11_000).contains(h)), "{hist:?}");
    }
}
