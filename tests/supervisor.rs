//! The supervisor with real processes: a process killed with SIGKILL in the middle of a run
//! is restarted, the restart replays the epoch log, and the outputs equal those of an
//! uninterrupted run: every table's snapshot is the same, and its changelog holds each
//! epoch once, in order, and folds to the snapshot: nothing lost, nothing doubled. Epochs
//! are cut by time as well as by count, so a restart that did not re-cut the published
//! epochs as recorded would go on from a different state than the one published. A process
//! that fails at every start ends in a crash-loop error.
//!
//! Two ways back: with no checkpoint yet, the restart replays the epoch log from the start
//! (the same cuts) and the file sinks skip the epochs they committed; with checkpoints every
//! 150 ms and three kills, each restart restores the newest checkpoint (every table's
//! checkpointed collections and the windowed and k-means operators' state) and replays
//! only the epochs after it.
//!
//! What this does not show: that the replay re-cuts the published epochs exactly. With the
//! replay plan disabled this test still passes on this input (almost every key is updated
//! again after the crash, which hides a different cut); `engine/tests/restore.rs` is the
//! test that fails then.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use cap_tests::{folded_and_snapshot, generate_csv, job_binary, run_on_csv, snapshot_tables};

/// Lines in every worker log of the newest run under `state`.
fn logged_epochs(state: &Path) -> usize {
    let Ok(runs) = std::fs::read_dir(state.join("epochs")) else {
        return 0;
    };
    let Some(newest) = runs.flatten().map(|e| e.path()).max() else {
        return 0;
    };
    std::fs::read_to_string(newest.join("worker-0.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// The newest epoch with a complete checkpoint (a manifest) under `state`.
fn newest_checkpoint(state: &Path) -> Option<u64> {
    std::fs::read_dir(state.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("MANIFEST.json").is_file())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ckpt-")?.parse().ok()
        })
        .max()
}

/// When to kill the running process: given the state directory and the checkpoint epoch
/// seen at the previous kill.
type KillWhen = fn(&Path, Option<u64>) -> bool;

/// Runs `supervise` over `csv` into `out` with `extra` flags, kills the running process
/// `kills` times with SIGKILL, each once `when` says so, and returns the supervisor's log.
fn supervise_with_kills(
    csv: &Path,
    out: &Path,
    extra: &[&str],
    kills: usize,
    when: KillWhen,
) -> Result<String> {
    let bin = job_binary()?;
    let mut sup = Command::new(&bin)
        .args(["supervise", "--backoff-ms", "200", "--input"])
        .arg(csv)
        .arg("--output")
        .arg(out)
        .args([
            "--workers",
            "2",
            "--epoch-records",
            "100000",
            "--no-console",
        ])
        // Epochs of 3 ms (the record limit is out of reach): cut by timing.
        .args(["--epoch-ms", "3"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} supervise", bin.display()))?;
    let stderr = sup.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut pid: Option<u32> = None;
    let state = out.join("_state");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut killed = 0;
    let mut seen_at_kill: Option<u64> = None;
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            if line.contains("supervise: process started") {
                pid = line
                    .split("pid=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok());
            }
            log.push(line);
        }
        if killed < kills && pid.is_some() && when(&state, seen_at_kill) {
            let p = pid.take().context("no `process started` line with a pid")?;
            let ok = Command::new("kill")
                .args(["-9", &p.to_string()])
                .status()?
                .success();
            ensure!(ok, "kill -9 {p} failed");
            killed += 1;
            seen_at_kill = newest_checkpoint(&state);
        }
        if let Some(status) = sup.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = sup.kill();
            bail!("the supervisor did not finish in time:\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    log.extend(rx.try_iter());
    let text = log.join("\n");
    ensure!(
        killed == kills,
        "the run ended after {killed} of {kills} kills:\n{text}"
    );
    ensure!(status.success(), "supervise failed ({status}):\n{text}");
    ensure!(
        text.matches("was killed by signal 9").count() == kills && text.contains("restarting"),
        "not {kills} restarts in the log:\n{text}"
    );
    ensure!(
        text.contains("file sink resumed"),
        "the restart did not resume the file sinks:\n{text}"
    );
    Ok(text)
}

/// Every table of `out` equals that of `straight`, and its changelog holds each epoch once,
/// in order, and folds to the snapshot.
fn same_outputs(straight: &Path, out: &Path) -> Result<()> {
    let tables = snapshot_tables(straight)?;
    ensure!(tables.len() >= 14, "tables: {tables:?}");
    for t in &tables {
        let snapshot = format!("{t}.jsonl");
        let a = std::fs::read_to_string(straight.join(&snapshot))?;
        let b = std::fs::read_to_string(out.join(&snapshot))
            .with_context(|| format!("{snapshot} after the restart"))?;
        ensure!(
            a == b,
            "{snapshot} differs after a kill and restart ({} vs {} lines)",
            a.lines().count(),
            b.lines().count()
        );
        let changelog = out.join(format!("{t}.changelog.jsonl"));
        let mut last = 0u64;
        for line in std::fs::read_to_string(&changelog)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let epoch = v["epoch"].as_u64().context("epoch")?;
            ensure!(
                epoch >= last,
                "{t}: epoch {epoch} after epoch {last}: an epoch written twice"
            );
            last = epoch;
        }
        let (folded, snapshot_rows) = folded_and_snapshot(out, t)?;
        let mut folded = folded;
        let mut rows = snapshot_rows;
        folded.sort_by_key(|v| v.to_string());
        rows.sort_by_key(|v| v.to_string());
        ensure!(
            folded == rows,
            "{t}: the changelog does not fold to the snapshot"
        );
    }
    Ok(())
}

#[test]
fn a_killed_process_is_restarted_and_the_outputs_equal_an_uninterrupted_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 150_000, 23, &[])?;
    let straight = dir.path().join("straight");
    run_on_csv(&csv, &straight, "2", "300", &[])?;
    let out = dir.path().join("supervised");
    // No checkpoint before the end: the restart replays the epoch log from the start.
    let when: KillWhen = |state, _| logged_epochs(state) >= 10;
    let text = supervise_with_kills(&csv, &out, &["--checkpoint-ms", "600000"], 1, when)?;
    ensure!(
        text.contains("replaying the epoch log from the start"),
        "the restart did not replay the log:\n{text}"
    );
    same_outputs(&straight, &out)
}

#[test]
fn restarts_from_checkpoints_after_several_kills_equal_an_uninterrupted_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 200_000, 29, &[])?;
    let straight = dir.path().join("straight");
    run_on_csv(&csv, &straight, "2", "300", &[])?;
    let out = dir.path().join("supervised");
    // Each kill comes once a checkpoint newer than the one seen at the previous kill is
    // complete, so every restart restores a checkpoint and replays only the epochs after it.
    let when: KillWhen = |state, before| newest_checkpoint(state) > before;
    let text = supervise_with_kills(&csv, &out, &["--checkpoint-ms", "150"], 3, when)?;
    ensure!(
        text.matches("restoring").count() >= 3,
        "not every restart restored a checkpoint:\n{text}"
    );
    same_outputs(&straight, &out)
}

#[test]
fn a_process_that_fails_at_every_start_ends_in_a_crash_loop_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 100, 5, &[])?;
    // The metrics address is taken: every start fails with exit code 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let bin = job_binary()?;
    let out = Command::new(&bin)
        .args([
            "supervise",
            "--max-restarts",
            "2",
            "--backoff-ms",
            "50",
            "--input",
        ])
        .arg(&csv)
        .arg("--output")
        .arg(dir.path().join("out"))
        .args(["--no-console", "--metrics-addr", &addr])
        .env_remove("RUST_LOG")
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "supervise succeeded:\n{text}");
    ensure!(
        text.contains("crash loop: 3 failures within 300 s (--max-restarts 2)")
            && text.contains("exited with code 1"),
        "{text}"
    );
    ensure!(
        text.matches("supervise: process started").count() == 3,
        "expected the first start and 2 restarts:\n{text}"
    );
    Ok(())
}
