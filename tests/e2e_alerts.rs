//! End to end: the real `customer-analytics` binary over a generated CSV with injected bots
//! and DDoS bursts (plus out-of-order and duplicated events), its `alerts` table checked
//! row for row against an independent batch computation of the documented rules, with the
//! default settings and with other ones.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use cap_tests::batch_alerts::{batch_alerts, AlertParams};
use cap_tests::{
    ensure_changelog_folds_to_snapshot_in_order, generate_csv, read_csv_batch, read_jsonl,
    run_on_csv,
};
use serde_json::Value;

fn check_alerts(csv: &Path, out: &Path, params: &AlertParams) -> Result<BTreeMap<String, Value>> {
    let (events, _) = read_csv_batch(csv)?;
    let expected = batch_alerts(&events, params);
    let actual: BTreeMap<String, Value> = read_jsonl(&out.join("alerts.jsonl"))?
        .into_iter()
        .map(|row| {
            Ok((
                row["alert_id"].as_str().context("alert_id")?.to_owned(),
                row,
            ))
        })
        .collect::<Result<_>>()?;
    if actual != expected {
        let only_stream: Vec<_> = actual
            .iter()
            .filter(|(k, v)| expected.get(*k) != Some(v))
            .collect();
        let only_batch: Vec<_> = expected
            .iter()
            .filter(|(k, v)| actual.get(*k) != Some(v))
            .collect();
        anyhow::bail!(
            "alerts differs from the batch computation:\nstream only {only_stream:#?}\nbatch only  {only_batch:#?}"
        );
    }
    ensure_changelog_folds_to_snapshot_in_order(out, "alerts")?;
    Ok(expected)
}

fn count_kind(rows: &BTreeMap<String, Value>, kind: &str) -> usize {
    rows.values().filter(|r| r["kind"] == kind).count()
}

#[test]
fn alerts_equal_the_batch_rules_with_default_settings_on_two_workers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 150_000, 11, &[])?;
    let out = dir.path().join("out");
    run_on_csv(&csv, &out, "2", "4000", &[])?;
    let rows = check_alerts(&csv, &out, &AlertParams::default())?;
    // Not vacuous: the injected incidents are there, per subject and globally.
    ensure!(
        rows.values().any(|r| r["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("user:")))
            && rows
                .values()
                .any(|r| r["subject"].as_str().is_some_and(|s| s.starts_with("ip:"))),
        "expected bot alerts on users and ips: {rows:#?}"
    );
    ensure!(
        count_kind(&rows, "ddos") > 0,
        "expected ddos alerts: {rows:#?}"
    );
    Ok(())
}

#[test]
fn alerts_equal_the_batch_rules_with_other_settings_on_one_worker() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 60_000, 3, &[])?;
    let out = dir.path().join("out");
    // Shorter, more sensitive windows: many more alerts, merges and retractions.
    let params = AlertParams {
        bot_bucket_ms: 20_000,
        bot_window_buckets: 3,
        bot_user_events: 40,
        bot_ip_events: 30,
        bot_view_burst_events: 12,
        global_window_ms: 10_000,
        baseline_windows: 6,
        baseline_min_windows: 2,
        rate_multiplier: 1.25,
        global_min_events: 5,
        ip_multiplier: 1.1,
        global_min_ips: 5,
        critical_ratio: 1.5,
    };
    let set = [
        "job.alerts.bot_bucket_ms=20000",
        "job.alerts.bot_window_buckets=3",
        "job.alerts.bot_user_events=40",
        "job.alerts.bot_ip_events=30",
        "job.alerts.bot_view_burst_events=12",
        "job.alerts.global_window_ms=10000",
        "job.alerts.baseline_windows=6",
        "job.alerts.baseline_min_windows=2",
        "job.alerts.rate_multiplier=1.25",
        "job.alerts.global_min_events=5",
        "job.alerts.ip_multiplier=1.1",
        "job.alerts.global_min_ips=5",
        "job.alerts.critical_ratio=1.5",
        // Windows never final: the exact path without a retention.
        "job.alerts.retention_ms=0",
    ];
    let set_args: Vec<&str> = set.iter().flat_map(|kv| ["--set", kv]).collect();
    run_on_csv(&csv, &out, "1", "997", &set_args)?;
    let rows = check_alerts(&csv, &out, &params)?;
    ensure!(
        count_kind(&rows, "traffic_spike") > 0 && count_kind(&rows, "bot") > 0,
        "expected spikes and bots with sensitive settings: {rows:#?}"
    );
    Ok(())
}

#[test]
fn invalid_alert_settings_fail_at_start_naming_the_key() -> Result<()> {
    let bin = cap_tests::job_binary()?;
    // The job creates its state directory before it reads its settings: keep it out of the tree.
    let dir = tempfile::tempdir()?;
    for (set, key) in [
        (
            "job.alerts.baseline_min_windows=50",
            "job.alerts.baseline_min_windows",
        ),
        (
            "job.alerts.rate_multiplier=0.5",
            "job.alerts.rate_multiplier",
        ),
        (
            "job.alerts.bot_user_events=-1",
            "job.alerts.bot_user_events",
        ),
        ("job.alerts.no_such_key=1", "no_such_key"),
    ] {
        let out = std::process::Command::new(&bin)
            // A bound on the input, so a setting wrongly accepted cannot run forever.
            .args([
                "run",
                "--set",
                set,
                "--set",
                "engine.max_events=1000",
                "--no-console",
            ])
            .env_remove("RUST_LOG")
            .current_dir(dir.path())
            .output()?;
        ensure!(!out.status.success(), "{set} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains(key),
            "error for {set} should name {key}: {err}"
        );
    }
    Ok(())
}
