//! End to end: `similar_items` and `recommendations` from the real `customer-analytics`
//! binary over a generated CSV (out-of-order and duplicated events, scraping bots over the
//! 500-product cap), compared exactly with an independent batch computation; once refreshed
//! every epoch, once every 3 epochs (exact at the end of input).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use cap_tests::batch_recommendations::{batch_recommendations, batch_similar_items};
use cap_tests::{
    ensure_changelog_folds_to_snapshot, ensure_same_rows, field_f64, field_u64, generate_csv,
    read_csv_batch, read_jsonl, run_on_csv, BatchEvent,
};

/// A dense catalogue (few users and products) so that many pairs are co-viewed by two or
/// more users and lists have ties and fills; the generator's bots exceed the cap.
fn generate(dir: &Path, events: u64) -> Result<PathBuf> {
    generate_csv(
        dir,
        events,
        23,
        &[
            "--users",
            "4000",
            "--set",
            "products=3000",
            "--set",
            "categories=60",
        ],
    )
}

fn check_outputs(events: &[BatchEvent], out: &Path) -> Result<()> {
    let expected = batch_similar_items(events);
    ensure!(
        expected.len() > 1000,
        "the data should give many similar items, got {}",
        expected.len()
    );
    let mut actual = BTreeMap::new();
    for row in read_jsonl(&out.join("similar_items.jsonl"))? {
        actual.insert(
            (field_u64(&row, "product_id")?, field_u64(&row, "rank")?),
            (
                field_u64(&row, "similar_product_id")?,
                field_f64(&row, "score")?,
                field_u64(&row, "co_users")?,
            ),
        );
    }
    ensure_same_rows("similar_items", &actual, &expected)?;

    let expected = batch_recommendations(events);
    let fill = expected.values().filter(|(_, s)| *s == 0.0).count();
    ensure!(
        expected.len() > 1000 && fill > 100 && fill < expected.len(),
        "the data should give scored and fill rows: {} rows, {fill} fill",
        expected.len()
    );
    let mut actual = BTreeMap::new();
    for row in read_jsonl(&out.join("recommendations.jsonl"))? {
        actual.insert(
            (field_u64(&row, "user_id")?, field_u64(&row, "rank")?),
            (field_u64(&row, "product_id")?, field_f64(&row, "score")?),
        );
    }
    ensure_same_rows("recommendations", &actual, &expected)?;

    // The fold is keyed by the key's JSON text, the snapshot sorted by key: compare as sets.
    for table in ["similar_items", "recommendations"] {
        ensure_changelog_folds_to_snapshot(out, table)?;
    }
    Ok(())
}

/// The changelog's epochs that carry a change.
fn changed_epochs(path: &Path) -> Result<Vec<u64>> {
    let mut epochs: Vec<u64> = read_jsonl(path)?
        .iter()
        .filter_map(|l| l["epoch"].as_u64())
        .collect();
    epochs.dedup();
    Ok(epochs)
}

#[test]
fn streaming_equals_batch_refreshing_every_epoch_on_two_workers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 60_000)?;
    let (events, _) = read_csv_batch(&csv)?;
    let bots = {
        let mut products: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for e in &events {
            products.entry(e.user_id).or_default().insert(e.product_id);
        }
        products.values().filter(|p| p.len() > 500).count()
    };
    ensure!(
        bots > 0,
        "the data should have users over the 500-product cap"
    );
    let out = dir.path().join("out");
    // Small epochs: many incremental updates and retractions.
    run_on_csv(
        &csv,
        &out,
        "2",
        "3000",
        &["--set", "job.recommendations.refresh_epochs=1"],
    )?;
    check_outputs(&events, &out)?;
    let epochs = changed_epochs(&out.join("recommendations.changelog.jsonl"))?;
    ensure!(
        epochs.len() > 5,
        "recommendations should change in many epochs: {epochs:?}"
    );
    Ok(())
}

#[test]
fn refreshing_every_3_epochs_is_exact_at_the_end_of_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 40_000)?;
    let (events, _) = read_csv_batch(&csv)?;
    let out = dir.path().join("out");
    run_on_csv(
        &csv,
        &out,
        "1",
        "2500",
        &["--set", "job.recommendations.refresh_epochs=3"],
    )?;
    check_outputs(&events, &out)?;
    // Recommendations change only at the end of a block of 3 epochs (or at the final
    // flush, also a block end); similar_items changes every epoch.
    let epochs = changed_epochs(&out.join("recommendations.changelog.jsonl"))?;
    ensure!(
        epochs.len() > 2 && epochs.iter().all(|e| e % 3 == 2),
        "recommendations changed at {epochs:?}"
    );
    let similar = changed_epochs(&out.join("similar_items.changelog.jsonl"))?;
    ensure!(
        similar.iter().any(|e| e % 3 != 2),
        "similar_items is not delayed: {similar:?}"
    );
    Ok(())
}
