//! End to end: `customer_clusters` and `cluster_centroids` from the real binary over a
//! generated CSV (out-of-order and duplicated events), checked against features computed
//! independently (`cap_tests::batch_clusters`):
//! - every user with traits has exactly one cluster row; sizes match the rows;
//! - each distance is the distance from the user's features to its printed centroid, and
//!   no other centroid is nearer;
//! - the final tables do not depend on the worker count or the epoch size;
//! - the SSE is within 5% of scikit-learn's `KMeans(k-means++, n_init=10)` on the same
//!   features (`tests/kmeans_vs_sklearn.py`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use cap_tests::batch_clusters::{
    batch_cluster_traits, standardized_features, write_features_csv, FEATURES,
};
use cap_tests::{
    ensure_changelog_folds_to_snapshot_in_order, field_f64, generate_csv, read_csv_batch,
    read_jsonl, run_on_csv,
};

/// Tolerance on a recomputed distance: the printed centroid and distance are rounded to
/// 6 decimals (error <= sqrt(6) x 5e-7 + 5e-7), plus float noise.
const DISTANCE_TOLERANCE: f64 = 1e-5;

/// The centroids: cluster -> (6 standardized coordinates, size).
fn read_centroids(out: &Path) -> Result<BTreeMap<u64, ([f64; 6], u64)>> {
    let mut centroids = BTreeMap::new();
    for row in read_jsonl(&out.join("cluster_centroids.jsonl"))? {
        let cluster = row["cluster"].as_u64().context("cluster")?;
        let mut z = [0.0; 6];
        for (j, name) in FEATURES.iter().enumerate() {
            z[j] = field_f64(&row, &format!("{name}_z"))?;
        }
        let size = row["size"].as_u64().context("size")?;
        centroids.insert(cluster, (z, size));
    }
    Ok(centroids)
}

/// The rows: user -> (cluster, distance).
fn read_clusters(out: &Path) -> Result<BTreeMap<u64, (u64, f64)>> {
    let mut rows = BTreeMap::new();
    for row in read_jsonl(&out.join("customer_clusters.jsonl"))? {
        let user = row["user_id"].as_u64().context("user_id")?;
        let cluster = row["cluster"].as_u64().context("cluster")?;
        let distance = row["distance"].as_f64().context("distance")?;
        if rows.insert(user, (cluster, distance)).is_some() {
            bail!("two rows for user {user}");
        }
    }
    Ok(rows)
}

fn check_consistency(csv: &Path, out: &Path, k: usize) -> Result<()> {
    let (events, _bad) = read_csv_batch(csv)?;
    let traits = batch_cluster_traits(&events);
    let features = standardized_features(&traits);
    let rows = read_clusters(out)?;
    let centroids = read_centroids(out)?;
    ensure!(traits.len() > 1000, "too few users: {}", traits.len());

    // Exactly one row per user with traits.
    ensure!(
        rows.keys().eq(traits.keys()),
        "users with a cluster row ({}) differ from users with traits ({})",
        rows.len(),
        traits.len()
    );
    // k clusters, numbered 0..k, sizes = rows per cluster.
    ensure!(
        centroids.keys().copied().eq(0..k as u64),
        "clusters {:?}",
        centroids.keys()
    );
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for (cluster, _) in rows.values() {
        *counts.entry(*cluster).or_default() += 1;
    }
    for (c, (_, size)) in &centroids {
        ensure!(
            counts.get(c).copied().unwrap_or(0) == *size,
            "cluster {c}: size {size}, rows {:?}",
            counts.get(c)
        );
    }
    // Distances: to the printed centroid of the row's cluster, and no nearer centroid.
    let dist = |a: &[f64; 6], b: &[f64; 6]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    for (user, (cluster, distance)) in &rows {
        let z = features.get(user).context("features")?;
        let (centre, _) = centroids
            .get(cluster)
            .context("row's cluster has no centroid")?;
        let expected = dist(z, centre);
        ensure!(
            (expected - distance).abs() <= DISTANCE_TOLERANCE,
            "user {user}: distance {distance}, recomputed {expected} (features {z:?}, centroid {centre:?})"
        );
        for (other, (c, _)) in &centroids {
            ensure!(
                dist(z, c) >= expected - DISTANCE_TOLERANCE,
                "user {user}: cluster {other} is nearer than its cluster {cluster}"
            );
        }
    }
    // Changelogs fold to the snapshots (every old row was retracted or replaced).
    for table in ["customer_clusters", "cluster_centroids"] {
        ensure_changelog_folds_to_snapshot_in_order(out, table)?;
    }
    Ok(())
}

#[test]
fn every_user_has_one_row_consistent_with_independent_features() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 60_000, 11, &[])?;
    let out = dir.path().join("out");
    // Small epochs and a low first-fit threshold: many refits and re-assignments.
    run_on_csv(
        &csv,
        &out,
        "2",
        "2000",
        &["--set", "job.clusters.min_users=50"],
    )?;
    check_consistency(&csv, &out, 5)
}

#[test]
fn final_clusters_do_not_depend_on_workers_or_epochs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 40_000, 23, &[])?;
    let runs = [(1usize, 997u64), (3, 5000), (2, 100_000)];
    let mut outputs = Vec::new();
    for (workers, epoch_records) in runs {
        let out = dir.path().join(format!("out-{workers}-{epoch_records}"));
        run_on_csv(
            &csv,
            &out,
            &workers.to_string(),
            &epoch_records.to_string(),
            &["--set", "job.clusters.k=4", "--set", "job.clusters.seed=7"],
        )?;
        let tables = (
            std::fs::read_to_string(out.join("customer_clusters.jsonl"))?,
            std::fs::read_to_string(out.join("cluster_centroids.jsonl"))?,
        );
        ensure!(!tables.0.is_empty(), "no customer_clusters rows");
        outputs.push(tables);
        if outputs.len() == 1 {
            check_consistency(&csv, &out, 4)?;
        }
    }
    for (i, (workers, epoch_records)) in runs.iter().enumerate().skip(1) {
        ensure!(
            outputs[i] == outputs[0],
            "final clusters with {workers} workers and {epoch_records}-record epochs differ from {:?}",
            runs[0]
        );
    }
    Ok(())
}

/// scikit-learn is on PyPI: installs it (once, quietly) when `import sklearn` fails.
fn ensure_sklearn() -> Result<()> {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import sklearn, numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if importable() {
        return Ok(());
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "scikit-learn"])
        .output()
        .context("running python3 -m pip (is python3 installed?)")?;
    ensure!(
        importable(),
        "scikit-learn is not importable and `python3 -m pip install scikit-learn` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn sse_is_within_5_percent_of_scikit_learn() -> Result<()> {
    ensure_sklearn()?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 100_000, 5, &[])?;
    let out = dir.path().join("out");
    run_on_csv(&csv, &out, "2", "20000", &[])?;
    let (events, _bad) = read_csv_batch(&csv)?;
    let features = standardized_features(&batch_cluster_traits(&events));
    let features_csv = dir.path().join("features.csv");
    write_features_csv(&features_csv, &features)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kmeans_vs_sklearn.py");
    let result = Command::new("python3")
        .arg(&script)
        .args(["--features", features_csv.to_str().context("path")?])
        .args([
            "--clusters",
            out.join("customer_clusters.jsonl")
                .to_str()
                .context("path")?,
        ])
        .args(["--k", "5", "--n-init", "10", "--max-ratio", "1.05"])
        .output()
        .context("running python3 kmeans_vs_sklearn.py")?;
    let stdout = String::from_utf8_lossy(&result.stdout);
    // The figures, for the test log (`--nocapture` / nextest output).
    println!("kmeans_vs_sklearn: {stdout}");
    ensure!(
        result.status.success(),
        "{} failed:\n{stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    Ok(())
}
