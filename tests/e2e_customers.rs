//! End to end: the real `customer-analytics` binary over a generated CSV spanning about two
//! months of event time (out-of-order and duplicated events, null sessions, bots), with
//! `customer_traits` and `segments` compared exactly with an independent batch computation;
//! and rule configuration: a custom rule is applied, an invalid one fails at start naming
//! the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use cap_tests::batch_customers::{batch_customer_traits, batch_default_segments, BatchTraits};
use cap_tests::{
    ensure_changelog_folds_to_snapshot, field_text, field_u64, generate_csv, read_csv_batch,
    read_jsonl, run_on_csv,
};
use serde_json::Value;

/// The generated events (seed 5) of `users` users. ~2 000 events per simulated day: the
/// data spans about two months, so "days since" rules see users from the watermark's day to
/// eight weeks before it.
fn generate(dir: &Path, events: u64, users: u64) -> Result<std::path::PathBuf> {
    let users = users.to_string();
    generate_csv(
        dir,
        events,
        5,
        &["--users", &users, "--set", "events_per_day=2000"],
    )
}

fn cents(v: &Value) -> Result<i64> {
    let x = v.as_f64().with_context(|| format!("money: {v}"))?;
    Ok((x * 100.0).round() as i64)
}

fn read_traits(out: &Path) -> Result<BTreeMap<u64, BatchTraits>> {
    let mut actual = BTreeMap::new();
    for row in read_jsonl(&out.join("customer_traits.jsonl"))? {
        let u = |k: &str| field_u64(&row, k);
        let s = |k: &str| field_text(&row, k);
        actual.insert(
            u("user_id")?,
            BatchTraits {
                first_seen: s("first_seen")?,
                last_seen: s("last_seen")?,
                sessions: u("sessions")?,
                views: u("views")?,
                carts: u("carts")?,
                purchases: u("purchases")?,
                revenue_cents: cents(&row["revenue"])?,
                avg_order_value_cents: cents(&row["avg_order_value"])?,
                distinct_products: u("distinct_products")?,
                top_category: s("top_category")?,
            },
        );
    }
    Ok(actual)
}

fn read_segments(out: &Path) -> Result<BTreeSet<(u64, String)>> {
    read_jsonl(&out.join("segments.jsonl"))?
        .into_iter()
        .map(|row| {
            Ok((
                row["user_id"].as_u64().context("user_id")?,
                row["segment"].as_str().context("segment")?.to_owned(),
            ))
        })
        .collect()
}

fn first_difference<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) -> String {
    for (k, v) in expected {
        match actual.get(k) {
            None => return format!("missing {k:?}: expected {v:?}"),
            Some(a) if a != v => return format!("{k:?}: stream {a:?}, batch {v:?}"),
            _ => {}
        }
    }
    match actual.keys().find(|k| !expected.contains_key(k)) {
        Some(k) => format!("unexpected {k:?}"),
        None => "none".into(),
    }
}

fn check(csv: &Path, out: &Path) -> Result<()> {
    let (events, _bad) = read_csv_batch(csv)?;
    let expected = batch_customer_traits(&events);
    let actual = read_traits(out)?;
    ensure!(
        actual == expected,
        "customer_traits differs from the batch computation ({} vs {} users); first difference: {}",
        actual.len(),
        expected.len(),
        first_difference(&actual, &expected)
    );

    let expected = batch_default_segments(&events, &expected);
    let actual = read_segments(out)?;
    let count = |s: &BTreeSet<(u64, String)>| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for (_, seg) in s {
            *m.entry(seg.clone()).or_default() += 1;
        }
        m
    };
    // Every default segment should be exercised by this data, or the test proves little.
    let sizes = count(&expected);
    for seg in [
        "new",
        "active",
        "at_risk",
        "champion",
        "cart_abandoner",
        "window_shopper",
        "high_value",
        "bot_suspect",
    ] {
        ensure!(
            sizes.get(seg).copied().unwrap_or(0) > 0,
            "the data gives no member of `{seg}`: {sizes:?}"
        );
    }
    ensure!(
        actual == expected,
        "segments differ from the batch computation: stream {:?}, batch {:?}; only in stream: {:?}; only in batch: {:?}",
        count(&actual),
        sizes,
        actual.difference(&expected).take(5).collect::<Vec<_>>(),
        expected.difference(&actual).take(5).collect::<Vec<_>>()
    );

    for table in ["customer_traits", "segments"] {
        // Compared as sorted sets: the folded map orders keys by their JSON text, whose
        // fields serde_json sorts by name (`segment` before `user_id`).
        ensure_changelog_folds_to_snapshot(out, table)?;
    }
    Ok(())
}

#[test]
fn traits_and_segments_equal_batch_with_two_workers_and_small_epochs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 120_000, 3_000)?;
    let out = dir.path().join("out");
    run_on_csv(&csv, &out, "2", "3000", &[])?;
    check(&csv, &out)
}

#[test]
fn traits_and_segments_equal_batch_with_one_worker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 50_000, 1_500)?;
    let out = dir.path().join("out");
    run_on_csv(&csv, &out, "1", "997", &[])?;
    check(&csv, &out)
}

#[test]
fn configured_rules_apply_and_an_invalid_rule_fails_at_start_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 20_000, 800)?;
    let out = dir.path().join("out");
    run_on_csv(
        &csv,
        &out,
        "2",
        "2000",
        &[
            "--set",
            "job.segments.big_spender=revenue >= 500.50 and avg_order_value > 100",
            "--set",
            "job.segments.new=",
        ],
    )?;
    let (events, _) = read_csv_batch(&csv)?;
    let traits = batch_customer_traits(&events);
    let expected: BTreeSet<u64> = traits
        .iter()
        .filter(|(_, t)| t.revenue_cents >= 50_050 && t.avg_order_value_cents > 10_000)
        .map(|(u, _)| *u)
        .collect();
    ensure!(!expected.is_empty(), "no big spender in the data");
    let segs = read_segments(&out)?;
    let actual: BTreeSet<u64> = segs
        .iter()
        .filter(|(_, s)| s == "big_spender")
        .map(|(u, _)| *u)
        .collect();
    ensure!(
        actual == expected,
        "big_spender: stream {} users, batch {}",
        actual.len(),
        expected.len()
    );
    ensure!(
        !segs.iter().any(|(_, s)| s == "new"),
        "a segment set to \"\" is disabled"
    );

    let bin = cap_tests::job_binary()?;
    let failed = std::process::Command::new(bin)
        .args([
            "run",
            "--input",
            csv.to_str().context("path")?,
            "--output",
            dir.path().join("out2").to_str().context("path")?,
            "--no-console",
            "--set",
            "job.segments.vip=revenue >= 100 and and purchases > 1",
        ])
        .output()?;
    ensure!(
        !failed.status.success(),
        "an invalid rule must fail the job"
    );
    let err = String::from_utf8_lossy(&failed.stderr);
    ensure!(
        err.contains("job.segments.vip") && err.contains("column 20") && err.contains("`and`"),
        "the error should name the rule, the column and the token: {err}"
    );
    Ok(())
}
