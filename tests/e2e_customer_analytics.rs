//! End to end: the real `customer-analytics` binary over a generated CSV (out-of-order and
//! duplicated events, null sessions, prices <= 0, malformed rows), checked table by table
//! against an independent batch computation of the output contract.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use cap_tests::{
    append_lines, batch_daily_visitors, batch_funnel, ensure_changelog_folds_to_snapshot_in_order,
    folded_and_snapshot, generate_csv, read_csv_batch, read_jsonl, run_on_csv,
};

/// Malformed rows of several kinds, appended to the generated file.
const BAD_ROWS: [&str; 7] = [
    "2019-11-01 00:00:00 UTC,view,1,2,,,1.00,3", // too few fields
    "2019-13-01 00:00:00 UTC,view,1,2,,,1.00,3,s,,,,", // month 13
    "1999-11-01 00:00:00 UTC,view,1,2,,,1.00,3,s,,,,", // year out of range
    "2019-11-01 00:00:00 UTC,click,1,2,,,1.00,3,s,,,,", // unknown event type
    "2019-11-01 00:00:00 UTC,view,abc,2,,,1.00,3,s,,,,", // non-numeric id
    "2019-11-01 00:00:00 UTC,view,1,2,,,NaN,3,s,,,,", // price not finite
    "2019-11-01 00:00:00 UTC,purchase,1,2,,,1.00,-3,s,,,,", // negative user id
];

/// The generated events (seed 11) with the malformed rows appended.
fn generate(dir: &std::path::Path, events: u64) -> Result<std::path::PathBuf> {
    let csv = generate_csv(dir, events, 11, &[])?;
    append_lines(&csv, &BAD_ROWS)?;
    Ok(csv)
}

fn check_outputs(csv: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let (events, bad_lines) = read_csv_batch(csv)?;
    ensure!(
        events.len() > 10_000,
        "too few events generated: {}",
        events.len()
    );
    ensure!(
        bad_lines.len() == BAD_ROWS.len(),
        "the batch reader rejects {} lines, expected {}",
        bad_lines.len(),
        BAD_ROWS.len()
    );
    ensure!(
        events.iter().any(|e| e.session.is_none()),
        "the data should contain events without a session"
    );

    // daily_visitors
    let expected = batch_daily_visitors(&events);
    let mut actual = BTreeMap::new();
    for row in read_jsonl(&out.join("daily_visitors.jsonl"))? {
        let day = row["day"].as_str().context("day")?.to_owned();
        let v = (
            row["visitors"].as_u64().context("visitors")?,
            row["sessions"].as_u64().context("sessions")?,
            row["events"].as_u64().context("events")?,
        );
        actual.insert(day, v);
    }
    ensure!(actual == expected, "daily_visitors differs from the batch computation:\nstream {actual:?}\nbatch  {expected:?}");

    // session_funnel_daily
    let expected = batch_funnel(&events);
    let mut actual = BTreeMap::new();
    for row in read_jsonl(&out.join("session_funnel_daily.jsonl"))? {
        let key = (
            row["day"].as_str().context("day")?.to_owned(),
            row["step"].as_u64().context("step")?,
        );
        let name = row["step_name"].as_str().context("step_name")?;
        ensure!(
            name == ["view", "cart", "purchase"][key.1 as usize - 1],
            "bad step_name {name} for step {}",
            key.1
        );
        let sessions = row["sessions"].as_u64().context("sessions")?;
        let step1 = expected.get(&(key.0.clone(), 1)).copied().unwrap_or(0);
        let conversion = row["conversion"].as_f64().context("conversion")?;
        ensure!(
            (conversion - sessions as f64 / step1 as f64).abs() < 1e-6,
            "conversion {conversion} for {key:?}"
        );
        actual.insert(key, sessions);
    }
    ensure!(actual == expected, "session_funnel_daily differs from the batch computation:\nstream {actual:?}\nbatch  {expected:?}");

    // dead_letters: exactly the malformed lines, with a reason and the raw row.
    let dead = read_jsonl(&out.join("dead_letters.jsonl"))?;
    let positions: BTreeSet<u64> = dead.iter().filter_map(|d| d["position"].as_u64()).collect();
    ensure!(
        positions == bad_lines,
        "dead letters at {positions:?}, expected {bad_lines:?}"
    );
    for d in &dead {
        ensure!(
            d["reason"].as_str().map(|r| !r.is_empty()).unwrap_or(false),
            "dead letter without a reason: {d}"
        );
        ensure!(
            BAD_ROWS.contains(&d["raw"].as_str().unwrap_or("")),
            "dead letter raw bytes not the row: {d}"
        );
        ensure!(
            d["source"]
                .as_str()
                .unwrap_or("")
                .starts_with("clickstream:"),
            "dead letter source: {d}"
        );
    }

    // Each changelog folds to its snapshot.
    for table in ["daily_visitors", "session_funnel_daily", "dead_letters"] {
        ensure_changelog_folds_to_snapshot_in_order(out, table)?;
    }
    Ok(())
}

#[test]
fn streaming_equals_batch_on_a_generated_csv_with_two_workers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 150_000)?;
    let out = dir.path().join("out");
    // Small epochs so that many incremental updates (and retractions) happen.
    run_on_csv(&csv, &out, "2", "4000", &[])?;
    check_outputs(&csv, &out)
}

#[test]
fn streaming_equals_batch_with_one_worker_and_one_epoch_per_record_batch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate(dir.path(), 40_000)?;
    let out = dir.path().join("out");
    run_on_csv(&csv, &out, "1", "997", &[])?;
    check_outputs(&csv, &out)
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() -> Result<()> {
    let bin = cap_tests::job_binary()?;
    let out = std::process::Command::new(bin)
        .args(["run", "--set", "engine.workers=two", "--no-console"])
        .output()?;
    ensure!(!out.status.success(), "a bad config must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("engine.workers"),
        "error should name the key: {err}"
    );
    Ok(())
}

#[test]
fn engine_tables_builds_and_writes_only_the_tables_asked_for() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    cap_tests::run_job(&[
        "run",
        "-o",
        out.to_str().context("path")?,
        "--no-console",
        "--max-events",
        "20000",
        "--tables",
        "daily_visitors,segments",
    ])?;
    let mut written: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl") && !n.ends_with(".changelog.jsonl"))
        .collect();
    written.sort();
    ensure!(
        written == ["daily_visitors.jsonl", "segments.jsonl"],
        "wrote {written:?}"
    );
    ensure!(!cap_tests::read_jsonl(&out.join("segments.jsonl"))?.is_empty());

    // A table the job does not have is a start-up error naming the key and the table.
    let bin = cap_tests::job_binary()?;
    let bad = std::process::Command::new(bin)
        .args([
            "run",
            "--no-console",
            "--set",
            r#"engine.tables=["daily_vistors"]"#,
        ])
        .output()?;
    ensure!(
        !bad.status.success(),
        "an unknown table must fail the start"
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        err.contains("engine.tables") && err.contains("daily_vistors"),
        "error should name the key and the table: {err}"
    );
    Ok(())
}

#[test]
fn sigint_completes_the_open_epoch_and_flushes_every_output() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let bin = cap_tests::job_binary()?;
    // Unbounded generator, rate-limited so the run is still going when the signal arrives.
    let child = std::process::Command::new(bin)
        .args([
            "run",
            "-o",
            out.to_str().context("path")?,
            "--no-console",
            "--epoch-ms",
            "100",
            "--set",
            "sources.clickstream.rate=200000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let changelog = out.join("daily_visitors.changelog.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&changelog)
        .map(|m| m.len() == 0)
        .unwrap_or(true)
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "no output within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    ensure!(status.success(), "kill -INT failed");
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "the job should exit 0 after SIGINT: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&output.stderr).contains("stopped=true"),
        "the run should report it was stopped"
    );
    for table in ["daily_visitors", "session_funnel_daily"] {
        let (folded, snapshot) = folded_and_snapshot(&out, table)?;
        ensure!(!snapshot.is_empty(), "{table}: empty snapshot after stop");
        ensure!(
            folded == snapshot,
            "{table}: the final snapshot does not match the changelog"
        );
    }
    Ok(())
}
