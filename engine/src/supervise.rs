//! `supervise`: runs this machine's processes of a job and, when one dies, stops the others
//! and restarts them all, restoring the newest checkpoint and replaying the epoch log.
//!
//! ```text
//!  supervise [supervisor flags] [run flags]
//!    └─ run [run flags] --process i --run K   (i = 0..engine.processes, K: a new run number)
//!         one dies ─▶ log who and why ─▶ SIGTERM the others (SIGKILL after --stop-timeout-s)
//!                   ─▶ wait (backoff: --backoff-ms, doubling, at most 30 s)
//!                   ─▶ start them all again with engine.checkpoint.restore = true
//! ```
//!
//! Gives up (exit 1) after more than `--max-restarts` restarts within `--restart-window-s`
//! (a crash loop), and at once when a process exits with 2 (a configuration or build error:
//! a restart cannot fix it) or 3 (its input no longer holds what a replay needs). SIGINT or
//! SIGTERM to the supervisor stops the processes gracefully and ends it. Every process of a
//! cluster runs on this machine: a supervisor cannot restart processes on other machines.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::checkpoint::log::log_root;

/// The supervisor's own flags (the rest are the processes' `run` flags).
#[derive(Debug, Clone, Args)]
pub struct SuperviseArgs {
    /// Restarts allowed within --restart-window-s before the supervisor gives up.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub max_restarts: usize,
    /// The window of --max-restarts, in seconds.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub restart_window_s: u64,
    /// Wait before the first restart; doubles with each restart in a row, up to 30 s.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub backoff_ms: u64,
    /// After SIGTERM, how long the other processes may take to stop before SIGKILL.
    #[arg(long, value_name = "S", default_value_t = 10)]
    pub stop_timeout_s: u64,
}

impl SuperviseArgs {
    /// The flags `supervise` takes for itself, each with a value.
    const OWN: [&'static str; 4] = [
        "--max-restarts",
        "--restart-window-s",
        "--backoff-ms",
        "--stop-timeout-s",
    ];

    /// `args` (what followed `supervise`) without the supervisor's own flags.
    pub fn run_flags(args: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let own = Self::OWN
                .iter()
                .find(|f| a == *f || a.starts_with(&format!("{f}=")));
            match own {
                Some(f) if a == f => {
                    it.next();
                }
                Some(_) => {}
                None => out.push(a.clone()),
            }
        }
        out
    }
}

/// Why supervision ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// A process could not be started.
    #[error("cannot start process {process}: {cause}")]
    Spawn {
        /// The process index.
        process: usize,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The processes keep dying.
    #[error("crash loop: {failures} failures within {window_s} s (--max-restarts {max}); giving up. Last: {last}")]
    CrashLoop {
        /// Failures in the window.
        failures: usize,
        /// The window.
        window_s: u64,
        /// The limit.
        max: usize,
        /// The last failure.
        last: String,
    },
    /// A failure a restart cannot fix.
    #[error("not restarting: {0}")]
    Fatal(String),
}

/// What the supervisor runs: this binary, the run flags, the cluster's shape.
pub struct Plan<'a> {
    /// The job binary.
    pub exe: &'a Path,
    /// `run` flags for every process (without `--process` and `--run`).
    pub run_flags: Vec<String>,
    /// `engine.processes`.
    pub processes: usize,
    /// `engine.state_dir`: where the run numbers are.
    pub state_dir: &'a Path,
}

/// The next run number under `state_dir`: one after the newest run of the epoch log.
pub fn next_run(state_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(log_root(state_dir)) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("run-")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

/// How a process ended, in words.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".into(),
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Sends SIGTERM to the live processes and waits up to `timeout` for them, then SIGKILLs.
fn stop_all(children: &mut [(usize, Child)], timeout: Duration) {
    for (_, c) in children.iter() {
        signal(c, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + timeout;
    for (i, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!(
                        process = *i,
                        pid = c.id(),
                        "supervise: no stop after SIGTERM; killing"
                    );
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Runs the processes until they all end well, restarting them all when one fails.
pub fn supervise(plan: &Plan<'_>, args: &SuperviseArgs) -> Result<(), SuperviseError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let window = Duration::from_secs(args.restart_window_s);
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    let mut backoff = Duration::from_millis(args.backoff_ms);
    let mut restarting = false;
    loop {
        let run = next_run(plan.state_dir);
        let mut children: Vec<(usize, Child)> = Vec::new();
        for i in 0..plan.processes {
            let mut cmd = Command::new(plan.exe);
            cmd.arg("run");
            let flags = plan
                .run_flags
                .iter()
                .filter(|f| !(restarting && *f == "--fresh"));
            cmd.args(flags);
            if plan.processes > 1 {
                cmd.args(["--process", &i.to_string()]);
            }
            cmd.args(["--run", &run.to_string()]);
            if restarting {
                cmd.args(["--set", "engine.checkpoint.restore=true"]);
            }
            match cmd.spawn() {
                Ok(c) => {
                    tracing::info!(
                        process = i,
                        pid = c.id(),
                        run,
                        restart = restarting,
                        "supervise: process started"
                    );
                    children.push((i, c));
                }
                Err(cause) => {
                    stop_all(&mut children, Duration::from_secs(args.stop_timeout_s));
                    return Err(SuperviseError::Spawn { process: i, cause });
                }
            }
        }
        let started = Instant::now();
        // Wait for every process to end well, or for the first failure.
        let mut done = vec![false; children.len()];
        let failure = loop {
            if stop.load(Ordering::Relaxed) {
                tracing::info!("supervise: stop requested; stopping the processes");
                stop_all(&mut children, Duration::from_secs(args.stop_timeout_s));
                return Ok(());
            }
            let mut failed = None;
            for (k, (i, c)) in children.iter_mut().enumerate() {
                if done[k] {
                    continue;
                }
                match c.try_wait() {
                    Ok(Some(status)) if status.success() => done[k] = true,
                    Ok(Some(status)) => {
                        done[k] = true;
                        failed = Some((*i, c.id(), status));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(process = *i, error = %e, "supervise: cannot poll a process");
                    }
                }
            }
            if let Some(f) = failed {
                break f;
            }
            if done.iter().all(|d| *d) {
                tracing::info!(
                    run,
                    seconds = started.elapsed().as_secs(),
                    "supervise: every process finished"
                );
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (process, pid, status) = failure;
        let why = format!("process {process} (pid {pid}) {}", describe(status));
        let live: Vec<(usize, Child)> = children
            .into_iter()
            .zip(done)
            .filter(|(_, d)| !d)
            .map(|(c, _)| c)
            .collect();
        let mut live = live;
        match status.code() {
            Some(2) | Some(3) => {
                stop_all(&mut live, Duration::from_secs(args.stop_timeout_s));
                return Err(SuperviseError::Fatal(format!(
                    "{why} (2: configuration or build error, 3: the input no longer holds what a replay needs; see its log)"
                )));
            }
            _ => {}
        }
        tracing::error!(process, pid, status = %describe(status), run, "supervise: a process died; stopping the others and restarting all from the newest checkpoint");
        stop_all(&mut live, Duration::from_secs(args.stop_timeout_s));
        let now = Instant::now();
        if started.elapsed() > window {
            backoff = Duration::from_millis(args.backoff_ms);
        }
        restarts.push_back(now);
        while restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            restarts.pop_front();
        }
        if restarts.len() > args.max_restarts {
            return Err(SuperviseError::CrashLoop {
                failures: restarts.len(),
                window_s: args.restart_window_s,
                max: args.max_restarts,
                last: why,
            });
        }
        tracing::info!(
            wait_ms = backoff.as_millis() as u64,
            restarts_in_window = restarts.len(),
            "supervise: restarting after a pause"
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
        restarting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_supervisors_flags_are_not_passed_to_the_processes() {
        let args: Vec<String> = [
            "--max-restarts",
            "3",
            "--config",
            "job.toml",
            "--backoff-ms=10",
            "-w",
            "2",
            "--stop-timeout-s",
            "1",
            "--fresh",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            SuperviseArgs::run_flags(&args),
            ["--config", "job.toml", "-w", "2", "--fresh"]
                .map(String::from)
                .to_vec()
        );
    }

    #[test]
    fn run_numbers_follow_the_newest_run() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_run(dir.path()), 0);
        std::fs::create_dir_all(dir.path().join("epochs/run-000004")).unwrap();
        std::fs::create_dir_all(dir.path().join("epochs/run-000002")).unwrap();
        assert_eq!(next_run(dir.path()), 5);
    }
}
