//! The epoch log: what each epoch covers of each partition, kept across runs, and the replay
//! plan a restarted run cuts its input by.
//!
//! ```text
//!  <state_dir>/epochs/run-000003/run.json        this run: first epoch, epochs replayed
//!  <state_dir>/epochs/run-000003/worker-0.jsonl  one line per source per epoch the worker closed
//! ```
//!
//! Every worker appends, when it closes an epoch, the position each of its partitions has
//! reached (the position of the first record after the epoch), and flushes the line before
//! its sources let the epoch go; a sink publishes an epoch only after every source of every
//! worker has let it go, so every published epoch is in the log. A partition whose source
//! stops (its input ended, or the job was stopped) is logged `finished`: it read nothing in
//! later epochs of that run.
//!
//! A restarted run merges the logs of all runs ([`History`]) and replays, partition by
//! partition, the recorded cut of every epoch that may have been published ([`Plan`]):
//! epoch `e` of partition `p` ends at the position logged for `p` at `e` (or at the latest
//! epoch before `e` that `p` was logged at: a finished partition reads nothing more). Epochs
//! after the plan are cut afresh. Published epochs end at or before the plan's last epoch:
//! that is the epoch every unfinished partition has been logged at (or, when every partition
//! is finished, the last epoch logged at all).
//!
//! Guarantees: a record is a whole line; a line cut short by a crash ends the file and is
//! ignored with a warning. Non-guarantees: lines are flushed to the operating system, not
//! fsynced, so a power loss (not a process crash) can lose the last epochs' lines; every
//! process of a cluster must see the same `state_dir` (one machine, or shared storage) for a
//! restart to read the other processes' lines.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::Position;

/// One line of a worker's epoch log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The epoch.
    pub epoch: u64,
    /// The source.
    pub source: String,
    /// `(partition label, position)` per partition the worker owns: the position of the first
    /// record after `epoch`, or with `start`, of the first record of `epoch`.
    pub positions: Vec<(String, Position)>,
    /// The positions the run started reading at, before `epoch` (its first epoch).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    /// The partitions read nothing after `epoch` in this run (input ended, or stopped).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

/// `run.json`: how a run began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHeader {
    /// The run's number (the newest run has the highest).
    pub run: u64,
    /// The run's first epoch (the epoch after the checkpoint it restored, or 0).
    pub first_epoch: u64,
    /// The last epoch the run replays by the earlier runs' cut, if any: epochs after it are
    /// cut afresh, so earlier runs' lines for them are void.
    pub replay_through: Option<u64>,
}

/// Where the epoch log lives: `<state_dir>/epochs`.
pub fn log_root(state_dir: &Path) -> PathBuf {
    state_dir.join("epochs")
}

/// An error reading or writing the epoch log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// I/O on a log file.
    #[error("epoch log {path}: {cause}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// A line that is not a log record, other than a torn last line.
    #[error("epoch log {path} line {line}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// Why it could not be read.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |cause| LogError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// One partition's merged history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartitionHistory {
    /// Position after each logged epoch.
    ends: BTreeMap<u64, Position>,
    /// Position before the earliest run's first epoch, when logged.
    start: Option<(u64, Position)>,
    /// The epoch after which the partition read nothing (until a later run reads it).
    finished_at: Option<u64>,
}

impl PartitionHistory {
    /// Forgets every epoch from `from` on, except those through `keep_through`.
    fn void_after(&mut self, from: u64, keep_through: Option<u64>) {
        let cut = match keep_through {
            Some(k) if k + 1 > from => k + 1,
            _ => from,
        };
        self.ends.split_off(&cut);
        if self.finished_at.is_some_and(|f| f >= cut) {
            self.finished_at = None;
        }
        if self.start.is_some_and(|(e, _)| e >= cut) {
            self.start = None;
        }
    }

    /// The position after `epoch`: the latest logged at or before it, else the start (a
    /// partition first read by a later run read nothing before it).
    fn position_after(&self, epoch: u64) -> Option<Position> {
        match self.ends.range(..=epoch).next_back() {
            Some((_, &p)) => Some(p),
            None => self.start.map(|(_, p)| p),
        }
    }

    /// The last epoch the history covers: unbounded (`None`) when finished.
    fn covered_through(&self) -> Option<Option<u64>> {
        if self.finished_at.is_some() {
            return None;
        }
        Some(self.ends.keys().next_back().copied())
    }
}

/// The merged epoch log of every earlier run, by `(source, partition label)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    partitions: BTreeMap<(String, String), PartitionHistory>,
    /// The number of the newest run read.
    pub last_run: Option<u64>,
}

impl History {
    /// Reads every run under `root` (`<state_dir>/epochs`); an absent root is an empty history.
    pub fn read(root: &Path) -> Result<History, LogError> {
        let mut history = History::default();
        let mut runs = Vec::new();
        match std::fs::read_dir(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(history),
            Err(e) => return Err(io_error(root)(e)),
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_error(root))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(n) = name
                        .strip_prefix("run-")
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        runs.push((n, entry.path()));
                    }
                }
            }
        }
        runs.sort();
        for (n, dir) in runs {
            let header_path = dir.join("run.json");
            let header: RunHeader = match std::fs::read(&header_path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                    path: header_path.clone(),
                    line: 1,
                    reason: e.to_string(),
                })?,
                // A run that crashed before writing its header logged nothing either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&header_path)(e)),
            };
            let mut records = Vec::new();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(io_error(&dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            files.sort();
            for file in files {
                read_lines(&file, &mut records)?;
            }
            history.add_run(&header, records);
            history.last_run = Some(n);
        }
        Ok(history)
    }

    /// Merges one run (given its header and lines) into the history.
    pub fn add_run(&mut self, header: &RunHeader, records: Vec<LogRecord>) {
        for p in self.partitions.values_mut() {
            p.void_after(header.first_epoch, header.replay_through);
        }
        // A run's lines are merged in epoch order, so a later epoch clears an earlier
        // `finished` of the same run.
        let mut records = records;
        records.sort_by_key(|r| (r.epoch, !r.start));
        for r in records {
            for (label, position) in r.positions {
                let p = self
                    .partitions
                    .entry((r.source.clone(), label))
                    .or_default();
                if r.start {
                    if p.ends.is_empty() && p.start.is_none() {
                        p.start = Some((r.epoch, position));
                    }
                    continue;
                }
                p.ends.insert(r.epoch, position);
                match p.finished_at {
                    Some(f) if r.epoch > f => p.finished_at = None,
                    _ => {}
                }
                if r.finished {
                    p.finished_at = Some(r.epoch);
                }
            }
        }
        self.last_run = Some(header.run);
    }

    /// Whether any run logged anything.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The replay plan of a run restoring the state after epoch `restored` (`None`: no
    /// checkpoint, the run starts from the beginning).
    pub fn plan(&self, restored: Option<u64>) -> Plan {
        let first_epoch = restored.map_or(0, |c| c + 1);
        // The last epoch that may have been published.
        let unfinished: Vec<Option<u64>> = self
            .partitions
            .values()
            .filter_map(PartitionHistory::covered_through)
            .collect();
        let last = if unfinished.is_empty() {
            self.partitions
                .values()
                .filter_map(|p| p.ends.keys().next_back().copied())
                .max()
        } else if unfinished.iter().any(Option::is_none) {
            None
        } else {
            unfinished.into_iter().flatten().min()
        };
        let replay_through = last.filter(|&l| l >= first_epoch);
        let mut partitions = HashMap::new();
        for ((source, label), p) in &self.partitions {
            let start = match restored {
                Some(c) => p.position_after(c),
                None => p.start.map(|(_, pos)| pos),
            };
            let ends = match replay_through {
                Some(through) => (first_epoch..=through)
                    .map(|e| p.position_after(e))
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            partitions.insert(
                (source.clone(), label.clone()),
                PartitionPlan { start, ends },
            );
        }
        Plan {
            first_epoch,
            replay_through,
            partitions,
        }
    }
}

/// Reads the records of one log file; a torn last line is skipped with a warning.
fn read_lines(path: &Path, out: &mut Vec<LogRecord>) -> Result<(), LogError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io_error(path))?;
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LogRecord>(&line) {
            Ok(r) => out.push(r),
            Err(e) if i + 1 == count => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "epoch log: ignoring a torn last line (a crash while writing it)");
            }
            Err(e) => {
                return Err(LogError::Corrupt {
                    path: path.to_owned(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// How one partition is read by a restarted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Where to start reading (`None`: unknown, a new partition: read as configured).
    pub start: Option<Position>,
    /// The end position of each replayed epoch, from the plan's first epoch on.
    pub ends: Vec<Position>,
}

/// How a restarted run cuts its input: where each partition starts, and the recorded end of
/// each epoch it replays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The run's first epoch.
    pub first_epoch: u64,
    /// The last replayed epoch, if any.
    pub replay_through: Option<u64>,
    partitions: HashMap<(String, String), PartitionPlan>,
}

impl Plan {
    /// A fresh run's plan: start at epoch 0, replay nothing.
    pub fn fresh() -> Plan {
        Plan::default()
    }

    /// The plan of `label` of `source`, if the log knows the partition.
    pub fn partition(&self, source: &str, label: &str) -> Option<&PartitionPlan> {
        self.partitions.get(&(source.to_owned(), label.to_owned()))
    }

    /// Whether `epoch` is cut by the plan.
    pub fn replays(&self, epoch: u64) -> bool {
        self.replay_through
            .is_some_and(|t| epoch >= self.first_epoch && epoch <= t)
    }
}

/// A worker's epoch log of the current run.
pub struct EpochLog {
    path: Option<PathBuf>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl EpochLog {
    /// A log that keeps nothing (no state directory).
    pub fn disabled() -> EpochLog {
        EpochLog {
            path: None,
            file: None,
        }
    }

    /// The log of global worker `worker` in `run_dir` (created by [`start_run`]), emptied
    /// first when `fresh`.
    pub fn open(run_dir: &Path, worker: usize, fresh: bool) -> Result<EpochLog, LogError> {
        let path = run_dir.join(format!("worker-{worker}.jsonl"));
        let mut options = std::fs::OpenOptions::new();
        options.create(true);
        if fresh {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        let file = options.open(&path).map_err(io_error(&path))?;
        Ok(EpochLog {
            path: Some(path),
            file: Some(std::io::BufWriter::new(file)),
        })
    }

    /// Appends one record and flushes it to the operating system.
    pub fn record(&mut self, rec: &LogRecord) {
        if let Some(f) = self.file.as_mut() {
            let line = serde_json::to_string(rec).unwrap_or_default();
            if let Err(e) = writeln!(f, "{line}").and_then(|_| f.flush()) {
                tracing::error!(path = ?self.path, error = %e, "cannot append to the epoch log; a restart may not replay this epoch exactly");
            }
        }
    }
}

/// Creates the directory of a new run (`run-<n>` after the newest under `root`) and writes
/// its header; returns the directory.
pub fn start_run(root: &Path, header: &RunHeader) -> Result<PathBuf, LogError> {
    let dir = root.join(format!("run-{:06}", header.run));
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let path = dir.join("run.json");
    // Every process of a run writes the same header; each through its own temporary file.
    let tmp = dir.join(format!("run.json.tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(header).unwrap_or_default();
    std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, source: &str, parts: &[(&str, u64)]) -> LogRecord {
        LogRecord {
            epoch,
            source: source.into(),
            positions: parts.iter().map(|(l, p)| ((*l).into(), *p)).collect(),
            start: false,
            finished: false,
        }
    }

    fn start(epoch: u64, parts: &[(&str, u64)]) -> LogRecord {
        LogRecord {
            start: true,
            ..rec(epoch, "s", parts)
        }
    }

    fn header(run: u64, first_epoch: u64, replay_through: Option<u64>) -> RunHeader {
        RunHeader {
            run,
            first_epoch,
            replay_through,
        }
    }

    #[test]
    fn a_run_without_checkpoint_replays_from_its_start_positions() {
        let mut h = History::default();
        // Worker 0 owns a, worker 1 owns b; worker 1 lagged one epoch behind.
        h.add_run(
            &header(0, 0, None),
            vec![
                start(0, &[("a", 5)]),
                start(0, &[("b", 0)]),
                rec(0, "s", &[("a", 10)]),
                rec(1, "s", &[("a", 20)]),
                rec(2, "s", &[("a", 25)]),
                rec(0, "s", &[("b", 3)]),
                rec(1, "s", &[("b", 9)]),
            ],
        );
        let plan = h.plan(None);
        assert_eq!(plan.first_epoch, 0);
        assert_eq!(plan.replay_through, Some(1));
        let a = plan.partition("s", "a").unwrap();
        assert_eq!((a.start, a.ends.clone()), (Some(5), vec![10, 20]));
        let b = plan.partition("s", "b").unwrap();
        assert_eq!((b.start, b.ends.clone()), (Some(0), vec![3, 9]));
        assert!(plan.replays(1) && !plan.replays(2));
    }

    #[test]
    fn a_restore_starts_after_the_checkpoint_and_finished_partitions_read_nothing_more() {
        let mut h = History::default();
        let mut finished = rec(1, "s", &[("b", 9)]);
        finished.finished = true;
        h.add_run(
            &header(0, 0, None),
            vec![
                rec(0, "s", &[("a", 10)]),
                rec(1, "s", &[("a", 20)]),
                rec(2, "s", &[("a", 25)]),
                rec(3, "s", &[("a", 30)]),
                rec(0, "s", &[("b", 3)]),
                finished,
            ],
        );
        let plan = h.plan(Some(1));
        assert_eq!((plan.first_epoch, plan.replay_through), (2, Some(3)));
        let b = plan.partition("s", "b").unwrap();
        assert_eq!((b.start, b.ends.clone()), (Some(9), vec![9, 9]));
        let a = plan.partition("s", "a").unwrap();
        assert_eq!((a.start, a.ends.clone()), (Some(20), vec![25, 30]));
    }

    #[test]
    fn a_later_run_voids_what_earlier_runs_logged_after_its_replay() {
        let mut h = History::default();
        h.add_run(
            &header(0, 0, None),
            vec![
                rec(0, "s", &[("a", 10)]),
                rec(1, "s", &[("a", 20)]),
                rec(2, "s", &[("a", 30)]),
                rec(0, "s", &[("b", 1)]),
                rec(1, "s", &[("b", 2)]),
            ],
        );
        // Run 1 restored epoch 0, replayed epoch 1 (the last both partitions covered), then
        // cut epoch 2 afresh, differently, and crashed before b logged it.
        h.add_run(
            &header(1, 1, Some(1)),
            vec![rec(1, "s", &[("a", 20)]), rec(2, "s", &[("a", 27)])],
        );
        let plan = h.plan(Some(0));
        assert_eq!(plan.replay_through, Some(1));
        assert_eq!(plan.partition("s", "a").unwrap().ends, vec![20]);
        // The void epoch 2 of run 0 is forgotten: only run 1's cut remains, and b never
        // logged epoch 2, so nothing after epoch 1 can have been published.
        assert_eq!(h.partitions[&("s".into(), "a".into())].ends[&2], 27);
        let after = h.plan(Some(1));
        assert_eq!(after.replay_through, None);
        assert_eq!(after.partition("s", "a").unwrap().start, Some(20));
        assert_eq!(after.partition("s", "b").unwrap().start, Some(2));
        // A run that crashed before replaying everything does not shorten the replay of
        // epochs an earlier run may have published.
        let mut h2 = History::default();
        h2.add_run(
            &header(0, 0, None),
            vec![
                rec(0, "s", &[("a", 10)]),
                rec(1, "s", &[("a", 20)]),
                rec(2, "s", &[("a", 30)]),
            ],
        );
        h2.add_run(&header(1, 1, Some(2)), vec![rec(1, "s", &[("a", 20)])]);
        let plan = h2.plan(Some(0));
        assert_eq!(plan.replay_through, Some(2));
        assert_eq!(plan.partition("s", "a").unwrap().ends, vec![20, 30]);
    }

    #[test]
    fn when_every_partition_is_finished_the_plan_runs_to_the_last_logged_epoch() {
        let mut h = History::default();
        let mut a = rec(4, "s", &[("a", 40)]);
        a.finished = true;
        let mut b = rec(2, "s", &[("b", 7)]);
        b.finished = true;
        h.add_run(&header(0, 0, None), vec![rec(3, "s", &[("a", 30)]), a, b]);
        let plan = h.plan(Some(3));
        assert_eq!(plan.replay_through, Some(4));
        assert_eq!(plan.partition("s", "b").unwrap().ends, vec![7]);
    }

    #[test]
    fn logs_round_trip_and_a_torn_last_line_is_ignored() -> Result<(), LogError> {
        let dir = tempfile::tempdir().unwrap();
        let root = log_root(dir.path());
        let run = start_run(&root, &header(0, 0, None))?;
        let mut log = EpochLog::open(&run, 0, true)?;
        log.record(&start(0, &[("a", 0)]));
        log.record(&rec(0, "s", &[("a", 4)]));
        drop(log);
        let path = run.join("worker-0.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"epoch\":1,\"sou");
        std::fs::write(&path, &text).unwrap();
        let h = History::read(&root)?;
        assert_eq!(h.last_run, Some(0));
        let plan = h.plan(None);
        assert_eq!(plan.partition("s", "a").unwrap().ends, vec![4]);
        // A corrupt line that is not the last is an error naming the file and the line.
        std::fs::write(&path, format!("garbage\n{text}\n")).unwrap();
        let e = History::read(&root).unwrap_err().to_string();
        assert!(e.contains("worker-0.jsonl line 1"), "{e}");
        Ok(())
    }
}
