//! Checkpoints, deterministic replay and restore: a job that crashes restarts with the
//! outputs of a run that never failed. The design, its guarantees and its non-guarantees are
//! in `docs/fault-tolerance.md`; in short:
//!
//! ```text
//!  sources ──(epoch log: positions per partition per epoch, flushed before an epoch can complete)
//!     │
//!     ├─ job operators ─ df.checkpointed("name", c) ─┬─ job operators ─ sinks (epochs <= restored: dropped)
//!     │                          ▲                   └─ Checkpoint(name): state at marked epochs
//!     │                          │ restored state            │ parts (zstd, CRC-32), off-thread
//!  CheckpointClock (worker 0 marks an epoch every interval_ms) ─▶ Manifest (worker 0, written last)
//! ```
//!
//! On start with `restore` on, the engine picks the newest sound checkpoint (partial and
//! corrupt ones are skipped with a log line), re-feeds its collections at its epoch `C`
//! (re-partitioned over however many workers run now), seeks every partition to where
//! epoch `C` ended, and replays the epochs after `C` that earlier runs may have published
//! with their recorded cut ([`log::Plan`]); sinks drop what they produce for epochs up to
//! `C` (published already).

pub mod log;
pub(crate) mod operator;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, EngineConfig};
use log::{History, Plan, RunHeader};
use store::{Identity, Manifest};

/// `[engine.checkpoint]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Milliseconds between checkpoints (0: none). Worker 0 marks the epoch it closes first
    /// after the interval; every worker then writes its share of each checkpointed collection.
    pub interval_ms: u64,
    /// Directory of the checkpoints; default `<engine.state_dir>/checkpoints`.
    pub dir: Option<PathBuf>,
    /// Complete checkpoints kept; older ones are deleted once a newer one is complete.
    pub keep: usize,
    /// On start, restore the newest sound checkpoint and replay the epoch log. Off: start
    /// afresh (the epoch log and the checkpoints of earlier runs are deleted).
    pub restore: bool,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: 0,
            dir: None,
            keep: 3,
            restore: false,
        }
    }
}

impl CheckpointConfig {
    /// The checkpoint directory for `state_dir`.
    pub fn root(&self, state_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("checkpoints"))
    }

    /// The interval, if checkpoints are on.
    pub fn interval(&self) -> Option<Duration> {
        (self.interval_ms > 0).then(|| Duration::from_millis(self.interval_ms))
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.keep == 0 {
            return Err(ConfigError::Invalid {
                key: "engine.checkpoint.keep".into(),
                reason:
                    "must be at least 1 (the newest complete checkpoint is what a restart restores)"
                        .into(),
            });
        }
        Ok(())
    }
}

/// An error preparing a run's recovery.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The epoch log cannot be read or written.
    #[error(transparent)]
    Log(#[from] log::LogError),
    /// The checkpoints cannot be read, or belong to another job.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What a run restores and how it cuts its input: decided once per process before the
/// workers start, shared by them.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The checkpoint settings.
    pub config: CheckpointConfig,
    /// The checkpoint directory.
    pub root: PathBuf,
    /// The job a checkpoint must come from.
    pub identity: Identity,
    /// The restored checkpoint, if any.
    pub restored: Option<(PathBuf, Manifest)>,
    /// How the sources cut their input.
    pub plan: Arc<Plan>,
    /// This run's epoch log directory.
    pub run_dir: PathBuf,
    /// Whether each worker starts its epoch log anew (a fresh run, which may reuse run
    /// number 0): every process truncates only its own workers' files.
    pub fresh_log: bool,
    /// Whether the run continues earlier ones (restore on, and they left a checkpoint or an
    /// epoch log): sinks then keep and extend what was published.
    pub resuming: bool,
}

impl Recovery {
    /// The epoch whose state was restored (sinks drop outputs up to it).
    pub fn restored_epoch(&self) -> Option<u64> {
        self.restored.as_ref().map(|(_, m)| m.epoch)
    }

    /// Prepares this process's run: reads the history, picks the checkpoint, builds the
    /// plan, and creates the run's epoch log directory. With `restore` off it deletes the
    /// earlier runs' epoch logs and checkpoints instead.
    pub fn prepare(engine: &EngineConfig, identity: Identity) -> Result<Recovery, RecoveryError> {
        let config = engine.checkpoint.clone();
        config.validate()?;
        let root = config.root(&engine.state_dir);
        let log_root = log::log_root(&engine.state_dir);
        let restore = config.restore;
        let (run, restored, plan, resuming) = if restore {
            let history = History::read(&log_root)?;
            let run = match (engine.run, engine.processes) {
                (Some(n), _) => n,
                (None, 1) => history.last_run.map_or(0, |n| n + 1),
                (None, _) => {
                    return Err(ConfigError::Invalid {
                        key: "engine.run".into(),
                        reason: "must be set when engine.processes > 1 and engine.checkpoint.restore is on, so that every process logs into the same run (the supervisor and the cluster scripts set it)".into(),
                    }
                    .into())
                }
            };
            let restored = store::newest(&root, &identity)?;
            let plan = history.plan(restored.as_ref().map(|(_, m)| m.epoch));
            match &restored {
                Some((dir, m)) => tracing::info!(
                    checkpoint = %dir.display(),
                    epoch = m.epoch,
                    bytes = m.bytes(),
                    replay_through = ?plan.replay_through,
                    "restoring"
                ),
                None if !history.is_empty() => tracing::info!(
                    replay_through = ?plan.replay_through,
                    "no sound checkpoint: replaying the epoch log from the start"
                ),
                None => {}
            }
            let resuming = restored.is_some() || !history.is_empty();
            (run, restored, plan, resuming)
        } else {
            let run = engine.run.unwrap_or(0);
            if engine.process == 0 {
                start_afresh(&log_root, &root, run);
            }
            (run, None, Plan::fresh(), false)
        };
        let header = RunHeader {
            run,
            first_epoch: plan.first_epoch,
            replay_through: plan.replay_through,
        };
        let run_dir = log::start_run(&log_root, &header)?;
        Ok(Recovery {
            config,
            root,
            identity,
            restored,
            plan: Arc::new(plan),
            run_dir,
            resuming,
            fresh_log: !restore,
        })
    }
}

/// Deletes the epoch logs of runs other than `run` and every checkpoint under `root`.
fn start_afresh(log_root: &Path, root: &Path, run: u64) {
    let keep = format!("run-{run:06}");
    let mut removed = 0usize;
    if let Ok(entries) = std::fs::read_dir(log_root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("run-") && name != keep {
                removed += usize::from(std::fs::remove_dir_all(e.path()).is_ok());
            }
        }
    }
    let checkpoints = store::list(root).unwrap_or_default();
    for epoch in &checkpoints {
        let _ = std::fs::remove_dir_all(store::checkpoint_dir(root, *epoch));
    }
    if removed > 0 || !checkpoints.is_empty() {
        tracing::info!(
            runs = removed,
            checkpoints = checkpoints.len(),
            "starting afresh: deleted the epoch logs and checkpoints of earlier runs"
        );
    }
}
