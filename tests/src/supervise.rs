//! Supervised runs with SIGKILLs at chosen moments, for the restart tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::job_binary;

/// The newest epoch with a complete checkpoint (a manifest) under `state`.
pub fn newest_checkpoint(state: &Path) -> Option<u64> {
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
pub type KillWhen = fn(&Path, Option<u64>) -> bool;

/// Runs `supervise` reading `input` (flags: `--input FILE` or `--config FILE`) into `out`
/// with `extra` flags, kills the running process
/// `kills` times with SIGKILL, each once `when` says so, and returns the supervisor's log.
pub fn supervise_with_kills(
    input: &[String],
    out: &Path,
    extra: &[&str],
    kills: usize,
    when: KillWhen,
) -> Result<String> {
    let bin = job_binary()?;
    let mut sup = Command::new(&bin)
        .args(["supervise", "--backoff-ms", "200"])
        .args(input)
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

/// Runs the job binary with `args` (a `run` command line), kills it with SIGKILL once
/// `when(state)` holds, and returns its log; fails if it ends before that.
pub fn run_until_killed(
    args: &[String],
    state: &Path,
    when: impl Fn(&Path) -> bool,
) -> Result<String> {
    let bin = job_binary()?;
    let mut child = Command::new(&bin)
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let outcome = loop {
        if when(state) {
            child.kill()?;
            let _ = child.wait();
            break Ok(());
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!(
                "the run ended ({status}) before it was killed"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break Err(anyhow::anyhow!("the kill condition never held"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap_or_default();
    outcome.map_err(|e| anyhow::anyhow!("{e}:\n{text}"))?;
    Ok(text)
}
