//! `customer_clusters` and `cluster_centroids`: k-means segments of customers over
//! standardized log1p traits (see `docs/output-contract.md`).
//!
//! ```text
//!  customer_traits ─ map to (user, [6 traits]) ─ kmeans_segments ─┬─ assignments ─▶ customer_clusters
//!                                                                  └─ centroids   ─▶ cluster_centroids
//! ```
//!
//! The six traits, in feature order: views, carts, purchases (event counts; duplicates
//! count), revenue (sum of purchase prices > 0, in cents), distinct_products (any event
//! type) and sessions (distinct non-null user_session). Features are
//! `log1p(views) .. log1p(revenue / 100) .. log1p(sessions)` (revenue in currency units),
//! standardized with the population means and deviations frozen at the last refit.
//!
//! Non-guarantee: this table is exempt from "streaming equals batch" while the input is
//! open: which model is current depends on where epochs fall. After the input ends it is
//! a pure function of the input (the final model is fit on every user's final traits),
//! the same for any worker count or epoch size.

use super::customers::CustomerTraitsRow;
use super::keep_state;
use cap_engine::config::ConfigError;
use cap_engine::job::{BuildError, Checkpoints};
use cap_engine::sink::{TableRow, TableSchema};
use cap_operators::kmeans::{kmeans_segments_with_state, KMeansParams, SegmentConfig};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The six raw traits of a user, in feature order (see [`FEATURES`]).
pub type ClusterTraits = [u64; 6];

/// Feature names, in order.
pub const FEATURES: [&str; 6] = [
    "views",
    "carts",
    "purchases",
    "revenue",
    "distinct_products",
    "sessions",
];

/// Per trait, the divisor before `log1p`: revenue is in cents, its feature in units.
pub const SCALES: [f64; 6] = [1.0, 1.0, 1.0, 100.0, 1.0, 1.0];

/// `[job.clusters]`: the k-means segmentation's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Number of clusters (fewer when fewer users have distinct features).
    pub k: usize,
    /// Seed of the k-means++ random numbers.
    pub seed: u64,
    /// k-means++ restarts per fit; the least SSE wins.
    pub n_init: usize,
    /// Maximum Lloyd iterations per restart.
    pub max_iter: usize,
    /// Convergence tolerance, relative to the features' mean variance (as scikit-learn).
    pub tolerance: f64,
    /// No clusters before this many users have traits (except at the end of the input).
    pub min_users: usize,
    /// Refit once this many users per user at the last fit changed traits (0: never on
    /// schedule).
    pub refit_change_ratio: f64,
    /// Refit when the mean squared distance grew by this factor since the fit (0: off).
    pub drift_factor: f64,
    /// A drift refit also needs this ratio of the last fit's users to have changed.
    pub drift_min_change_ratio: f64,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        let op = SegmentConfig::default();
        ClusterSettings {
            k: op.kmeans.k,
            seed: op.kmeans.seed,
            n_init: op.kmeans.n_init,
            max_iter: op.kmeans.max_iter,
            tolerance: op.kmeans.tolerance,
            min_users: op.min_users,
            refit_change_ratio: op.refit_change_ratio,
            drift_factor: op.drift_factor,
            drift_min_change_ratio: op.drift_min_change_ratio,
        }
    }
}

impl ClusterSettings {
    /// Checks the values; errors name the key (`job.clusters.<key>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: format!("job.clusters.{key}"),
                reason: reason.into(),
            })
        };
        for (key, v) in [
            ("k", self.k),
            ("n_init", self.n_init),
            ("max_iter", self.max_iter),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if self.k > 1000 {
            return bad("k", "must be at most 1000");
        }
        for (key, v) in [
            ("tolerance", self.tolerance),
            ("refit_change_ratio", self.refit_change_ratio),
            ("drift_factor", self.drift_factor),
            ("drift_min_change_ratio", self.drift_min_change_ratio),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(key, &format!("must be a finite number >= 0, found {v}"));
            }
        }
        Ok(())
    }

    /// The operator's configuration.
    pub fn segment_config(&self) -> SegmentConfig {
        SegmentConfig {
            kmeans: KMeansParams {
                k: self.k,
                n_init: self.n_init,
                max_iter: self.max_iter,
                tolerance: self.tolerance,
                seed: self.seed,
            },
            scales: SCALES.to_vec(),
            min_users: self.min_users,
            refit_change_ratio: self.refit_change_ratio,
            drift_factor: self.drift_factor,
            drift_min_change_ratio: self.drift_min_change_ratio,
        }
    }
}

/// A real number held as integer micro-units (`round(x x 10^6)`): exact and ordered on the
/// wire (bincode: the integer), a JSON number with at most six decimals in output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl Micros {
    /// The value as a float.
    pub fn value(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_f64(self.value())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
        if d.is_human_readable() {
            let v = f64::deserialize(d)?;
            Ok(Micros((v * 1e6).round() as i64))
        } else {
            i64::deserialize(d).map(Micros)
        }
    }
}

/// `customer_clusters`: a user's k-means cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterRow {
    /// The user.
    pub user_id: u64,
    /// The nearest centroid of the current model (`0..k`, largest cluster at the fit first).
    pub cluster: u32,
    /// Euclidean distance to that centroid in standardized feature space.
    pub distance: Micros,
}

/// Primary key of `customer_clusters`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct UserKey {
    /// The user.
    pub user_id: u64,
}

impl TableRow for ClusterRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["user_id"],
            &[
                ("user_id", UInt64),
                ("cluster", UInt32),
                ("distance", Float64),
            ],
        ))
    }
    type Key = UserKey;
    fn key(&self) -> UserKey {
        UserKey {
            user_id: self.user_id,
        }
    }
}

/// `cluster_centroids`: a cluster's centroid (standardized log1p features) and size.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CentroidRow {
    /// The cluster.
    pub cluster: u32,
    /// Standardized `log1p(views)`.
    pub views_z: Micros,
    /// Standardized `log1p(carts)`.
    pub carts_z: Micros,
    /// Standardized `log1p(purchases)`.
    pub purchases_z: Micros,
    /// Standardized `log1p(revenue)` (revenue in currency units).
    pub revenue_z: Micros,
    /// Standardized `log1p(distinct_products)`.
    pub distinct_products_z: Micros,
    /// Standardized `log1p(sessions)`.
    pub sessions_z: Micros,
    /// Users currently in the cluster (rows of `customer_clusters` with this cluster).
    pub size: u64,
}

/// Primary key of `cluster_centroids`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ClusterKey {
    /// The cluster.
    pub cluster: u32,
}

impl TableRow for CentroidRow {
    fn schema() -> Option<TableSchema> {
        use cap_engine::sink::ColumnType::*;
        Some(TableSchema::new(
            1,
            &["cluster"],
            &[
                ("cluster", UInt32),
                ("views_z", Float64),
                ("carts_z", Float64),
                ("purchases_z", Float64),
                ("revenue_z", Float64),
                ("distinct_products_z", Float64),
                ("sessions_z", Float64),
                ("size", UInt64),
            ],
        ))
    }
    type Key = ClusterKey;
    fn key(&self) -> ClusterKey {
        ClusterKey {
            cluster: self.cluster,
        }
    }
}

/// The two tables.
pub struct Clusters<'s> {
    /// `customer_clusters`.
    pub customers: VecCollection<'s, u64, ClusterRow>,
    /// `cluster_centroids`.
    pub centroids: VecCollection<'s, u64, CentroidRow>,
}

/// The six clustering traits of one `customer_traits` row, in feature order.
pub fn cluster_traits_of(row: &CustomerTraitsRow) -> ClusterTraits {
    [
        row.views,
        row.carts,
        row.purchases,
        row.revenue.0.max(0) as u64,
        row.distinct_products,
        row.sessions,
    ]
}

/// `customer_clusters` and `cluster_centroids` from the `customer_traits` table: the
/// clusters share its per-user state instead of keeping their own.
pub fn customer_clusters<'s>(
    ck: &mut impl Checkpoints<'s>,
    traits: &VecCollection<'s, u64, CustomerTraitsRow>,
    settings: &ClusterSettings,
) -> Result<Clusters<'s>, BuildError> {
    clusters_from_traits(
        ck,
        traits
            .clone()
            .map(|row| (row.user_id, cluster_traits_of(&row))),
        settings,
    )
}

/// `customer_clusters` and `cluster_centroids` from per-user traits. Checkpointed state:
/// the fit's schedule and model (`kmeans_fit`); the traits are restored upstream.
pub fn clusters_from_traits<'s>(
    ck: &mut impl Checkpoints<'s>,
    traits: VecCollection<'s, u64, (u64, ClusterTraits)>,
    settings: &ClusterSettings,
) -> Result<Clusters<'s>, BuildError> {
    let restored = ck.restored("kmeans_fit")?;
    let fitted = kmeans_segments_with_state(traits, restored.clone(), settings.segment_config());
    keep_state(ck, "kmeans_fit", fitted.state, restored)?;
    let segments = fitted.segments;
    let customers = segments.assignments.map(|(user_id, a)| ClusterRow {
        user_id,
        cluster: a.cluster,
        distance: Micros(a.distance_micros),
    });
    let centroids = segments.centroids.map(|c| {
        let z = |j: usize| Micros(c.coordinates_micros.get(j).copied().unwrap_or(0));
        CentroidRow {
            cluster: c.cluster,
            views_z: z(0),
            carts_z: z(1),
            purchases_z: z(2),
            revenue_z: z(3),
            distinct_products_z: z(4),
            sessions_z: z(5),
            size: c.size,
        }
    });
    Ok(Clusters {
        customers,
        centroids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_the_wire_format_and_print_six_decimals() -> anyhow::Result<()> {
        let r = ClusterRow {
            user_id: 7,
            cluster: 2,
            distance: Micros(1_234_567),
        };
        assert_eq!(
            bincode::deserialize::<ClusterRow>(&bincode::serialize(&r)?)?,
            r
        );
        assert_eq!(
            serde_json::to_value(&r)?,
            serde_json::json!({"user_id": 7, "cluster": 2, "distance": 1.234567})
        );
        assert_eq!(
            serde_json::from_str::<ClusterRow>(&serde_json::to_string(&r)?)?,
            r
        );
        let c = CentroidRow {
            cluster: 0,
            views_z: Micros(-1),
            carts_z: Micros(0),
            purchases_z: Micros(2_000_000),
            revenue_z: Micros(-987_654_321),
            distinct_products_z: Micros(5),
            sessions_z: Micros(100_000),
            size: 42,
        };
        assert_eq!(
            bincode::deserialize::<CentroidRow>(&bincode::serialize(&c)?)?,
            c
        );
        let json = serde_json::to_value(&c)?;
        assert_eq!(json["views_z"], serde_json::json!(-0.000001));
        assert_eq!(json["revenue_z"], serde_json::json!(-987.654321));
        assert_eq!(json["size"], serde_json::json!(42));
        Ok(())
    }

    #[test]
    fn settings_default_and_validate() {
        let s = ClusterSettings::default();
        assert_eq!((s.k, s.n_init, s.seed), (5, 10, 0));
        assert!(s.validate().is_ok());
        let bad = ClusterSettings { k: 0, ..s.clone() };
        let err = bad
            .validate()
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default();
        assert!(err.contains("job.clusters.k"), "{err}");
        let bad = ClusterSettings {
            tolerance: f64::NAN,
            ..s
        };
        assert!(bad.validate().is_err());
    }
}
