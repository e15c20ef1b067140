//! Table sinks: JSON-lines files (a changelog and a snapshot per table) and a null sink.
//!
//! File layout under the sink's `dir`, per table:
//! - `<table>.changelog.jsonl`: every change, one JSON object per line, in epoch order and
//!   key order within an epoch: `{"epoch":3,"key":{..},"row":{..}}`, or `"row":null` when
//!   the key left the table (a tombstone). Flushed at the end of each epoch.
//! - `<table>.jsonl`: the current rows, sorted by key (numbers numerically: the typed key's
//!   order, see [`crate::json_order`]), one JSON object per line. Rewritten
//!   atomically (temporary file + rename) every `snapshot_interval_ms` and when the run ends,
//!   so a reader never sees a half-written snapshot.
//!
//! - `.<table>.changelog.commit`: `{"epoch":E,"bytes":B}`, replaced atomically after each
//!   epoch is flushed: the changelog's first `B` bytes hold every epoch up to `E`, whole.
//!
//! Resume (a restored run, [`TableWriter::begin`] with `true`): the changelog is cut back to
//! its committed length (dropping a half-written epoch), the current rows are rebuilt from
//! it, and epochs up to the committed one are skipped when the replay writes them again, so
//! the changelog holds every epoch exactly once. A fresh start truncates the changelog.
//!
//! Non-guarantees: the snapshot may lag the changelog by up to the snapshot interval while
//! running; the changelog and commit file are flushed, not fsynced, per epoch (a process
//! crash loses nothing; a power loss may lose the last epochs, which a restore rewrites).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cap_engine::config::SinkConfig;
use cap_engine::sink::{Change, SinkError, SinkFactory, TableWriter};

use crate::kafka::KafkaChangelogSink;

use crate::json_order::JsonKey;

fn io_err(table: &str, what: String, cause: std::io::Error) -> SinkError {
    SinkError {
        table: table.to_owned(),
        what,
        cause: Some(cause),
    }
}

/// The JSON-lines file sink of one table.
pub struct JsonLinesSink {
    table: String,
    dir: PathBuf,
    /// Open once begun.
    changelog: Option<BufWriter<File>>,
    /// Bytes of the changelog written and flushed.
    bytes: u64,
    /// The last epoch wholly in the changelog, if any.
    committed: Option<u64>,
    /// Current rows by key, in the typed key order (see [`JsonKey`]).
    current: BTreeMap<JsonKey, String>,
    snapshot_every: Duration,
    last_snapshot: Instant,
    dirty: bool,
}

/// `.<table>.changelog.commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Commit {
    epoch: u64,
    bytes: u64,
}

/// One changelog line, read back on resume with its key and row text as written.
#[derive(serde::Deserialize)]
struct ChangelogLine<'a> {
    #[serde(borrow)]
    key: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    row: &'a serde_json::value::RawValue,
}

impl JsonLinesSink {
    /// The sink of `table` under `dir`; the changelog is opened by [`TableWriter::begin`]
    /// (or the first write).
    pub fn open(
        table: &str,
        dir: &Path,
        snapshot_interval_ms: u64,
    ) -> Result<JsonLinesSink, SinkError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            io_err(
                table,
                format!("cannot create directory {}", dir.display()),
                e,
            )
        })?;
        Ok(JsonLinesSink {
            table: table.to_owned(),
            dir: dir.to_owned(),
            changelog: None,
            bytes: 0,
            committed: None,
            current: BTreeMap::new(),
            snapshot_every: Duration::from_millis(snapshot_interval_ms),
            last_snapshot: Instant::now(),
            dirty: true,
        })
    }

    fn changelog_path(&self) -> PathBuf {
        self.dir.join(format!("{}.changelog.jsonl", self.table))
    }

    fn commit_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.changelog.commit", self.table))
    }

    /// The committed prefix of the changelog, when a commit file exists.
    fn read_commit(&self) -> Result<Option<Commit>, SinkError> {
        let path = self.commit_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SinkError {
                    table: self.table.clone(),
                    what: format!("unreadable commit file {}: {e}", path.display()),
                    cause: None,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(
                &self.table,
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    fn write_commit(&self, commit: Commit) -> std::io::Result<()> {
        let path = self.commit_path();
        let tmp = self
            .dir
            .join(format!(".{}.changelog.commit.tmp", self.table));
        std::fs::write(&tmp, serde_json::to_vec(&commit).unwrap_or_default())?;
        std::fs::rename(&tmp, &path)
    }

    /// Opens the changelog: afresh, or (resuming) cut back to its committed prefix with the
    /// current rows rebuilt from it.
    fn start(&mut self, resume: bool) -> Result<(), SinkError> {
        let path = self.changelog_path();
        let table = self.table.clone();
        let commit = if resume { self.read_commit()? } else { None };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&table, format!("cannot open {}", path.display()), e))?;
        let keep = commit.map_or(0, |c| c.bytes);
        let len = file
            .metadata()
            .map_err(|e| io_err(&table, format!("cannot stat {}", path.display()), e))?
            .len();
        if len < keep {
            return Err(SinkError {
                table,
                what: format!(
                    "{} holds {len} bytes but {} bytes were committed: the changelog was truncated by something else; start afresh with --fresh",
                    path.display(),
                    keep
                ),
                cause: None,
            });
        }
        if keep > 0 {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(&mut file, keep), &mut text)
                .map_err(|e| io_err(&table, format!("cannot read {}", path.display()), e))?;
            for (i, line) in text.lines().enumerate() {
                let parsed: ChangelogLine<'_> =
                    serde_json::from_str(line).map_err(|e| SinkError {
                        table: table.clone(),
                        what: format!("{} line {}: {e}", path.display(), i + 1),
                        cause: None,
                    })?;
                let key = JsonKey(parsed.key.get().to_owned());
                match parsed.row.get() {
                    "null" => self.current.remove(&key),
                    row => self.current.insert(key, row.to_owned()),
                };
            }
        }
        if len > keep {
            tracing::info!(table = %self.table, dropped_bytes = len - keep, "file sink: dropping a half-written epoch from the changelog");
        }
        file.set_len(keep)
            .and_then(|_| std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(keep)))
            .map_err(|e| io_err(&table, format!("cannot truncate {}", path.display()), e))?;
        if !resume {
            let _ = std::fs::remove_file(self.commit_path());
        }
        self.bytes = keep;
        self.committed = commit.map(|c| c.epoch);
        self.changelog = Some(BufWriter::with_capacity(1 << 20, file));
        if resume {
            tracing::info!(table = %self.table, committed_epoch = ?self.committed, rows = self.current.len(), "file sink resumed");
        }
        Ok(())
    }

    fn write_snapshot(&mut self) -> Result<(), SinkError> {
        let path = self.dir.join(format!("{}.jsonl", self.table));
        let tmp = self.dir.join(format!(".{}.jsonl.tmp", self.table));
        let write = || -> std::io::Result<()> {
            let mut w = BufWriter::new(File::create(&tmp)?);
            for row in self.current.values() {
                w.write_all(row.as_bytes())?;
                w.write_all(b"\n")?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            io_err(
                &self.table,
                format!("cannot write snapshot {}", path.display()),
                e,
            )
        })?;
        self.last_snapshot = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

impl TableWriter for JsonLinesSink {
    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        self.start(resume)
    }

    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        if self.changelog.is_none() {
            self.start(false)?;
        }
        if self.committed.is_some_and(|c| epoch <= c) {
            // Replayed after a restore: already in the changelog, exactly so.
            return Ok(());
        }
        let table = self.table.clone();
        let Some(changelog) = self.changelog.as_mut() else {
            return Ok(());
        };
        let mut written = 0u64;
        let result = (|| -> std::io::Result<()> {
            for c in changes {
                let head = format!("{{\"epoch\":{epoch},\"key\":{},\"row\":", c.key);
                changelog.write_all(head.as_bytes())?;
                written += head.len() as u64;
                match &c.row {
                    Some(r) => {
                        changelog.write_all(r.as_bytes())?;
                        written += r.len() as u64;
                        self.current.insert(JsonKey(c.key.clone()), r.clone());
                    }
                    None => {
                        changelog.write_all(b"null")?;
                        written += 4;
                        self.current.remove(&JsonKey(c.key.clone()));
                    }
                }
                changelog.write_all(b"}\n")?;
                written += 2;
            }
            changelog.flush()
        })();
        result.map_err(|e| {
            io_err(
                &table,
                format!("cannot append epoch {epoch} to the changelog"),
                e,
            )
        })?;
        self.bytes += written;
        self.committed = Some(epoch);
        self.write_commit(Commit {
            epoch,
            bytes: self.bytes,
        })
        .map_err(|e| io_err(&table, format!("cannot commit epoch {epoch}"), e))?;
        self.dirty = true;
        if self.last_snapshot.elapsed() >= self.snapshot_every {
            self.write_snapshot()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let table = self.table.clone();
        if self.changelog.is_none() {
            self.start(false)?;
        }
        if let Some(changelog) = self.changelog.as_mut() {
            changelog
                .flush()
                .map_err(|e| io_err(&table, "cannot flush the changelog".into(), e))?;
        }
        if self.dirty {
            self.write_snapshot()?;
        }
        Ok(())
    }
}

/// Discards every change (for benchmarks); does not ask for rows to be serialized.
pub struct NullSink;

impl TableWriter for NullSink {
    fn wants_rows(&self) -> bool {
        false
    }
    fn write_epoch(&mut self, _epoch: u64, _changes: &[Change]) -> Result<(), SinkError> {
        Ok(())
    }
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes every change of a table to several sinks, in order (`kind = "kafka,parquet"`).
/// An epoch is published when every sink has published it; a failing sink does not keep
/// the others from writing.
pub struct Tee {
    writers: Vec<Box<dyn TableWriter>>,
}

impl Tee {
    /// Fans out to `writers`.
    pub fn new(writers: Vec<Box<dyn TableWriter>>) -> Tee {
        Tee { writers }
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut dyn TableWriter) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let mut first_error = None;
        for w in &mut self.writers {
            if let Err(e) = f(w.as_mut()) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl TableWriter for Tee {
    fn wants_rows(&self) -> bool {
        self.writers.iter().any(|w| w.wants_rows())
    }
    fn wants_packed(&self) -> bool {
        self.writers.iter().any(|w| w.wants_packed())
    }
    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        self.each(|w| w.begin(resume))
    }
    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        self.each(|w| w.write_epoch(epoch, changes))
    }
    fn unpublished(&mut self) -> Option<u64> {
        self.writers
            .iter_mut()
            .filter_map(|w| w.unpublished())
            .min()
    }
    fn close(&mut self) -> Result<(), SinkError> {
        self.each(|w| w.close())
    }
}

/// Opens sinks by `kind`: `file`, `null` or `kafka`.
pub struct FileAndNullSinks;

impl SinkFactory for FileAndNullSinks {
    fn open(&self, table: &str, config: &SinkConfig) -> Result<Box<dyn TableWriter>, SinkError> {
        match config.kind.as_str() {
            "file" => Ok(Box::new(JsonLinesSink::open(table, &config.dir, config.snapshot_interval_ms)?)),
            "null" => Ok(Box::new(NullSink)),
            "kafka" => Ok(Box::new(KafkaChangelogSink::open(table, &config.kafka)?)),
            "parquet" => Err(SinkError {
                table: table.to_owned(),
                what: "the parquet sink is opened with the table's columns (Connectors::open_bound)".into(),
                cause: None,
            }),
            other => Err(SinkError {
                table: table.to_owned(),
                what: format!("sinks.kind `{other}` is not a sink this build has (expected `file`, `null`, `kafka` or `parquet`, or several joined by commas)"),
                cause: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_and_snapshot_follow_the_changes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut s = JsonLinesSink::open("t", dir.path(), 0)?;
        s.write_epoch(
            0,
            &[
                Change {
                    key: "{\"k\":1}".into(),
                    row: Some("{\"k\":1,\"v\":1}".into()),
                    packed: None,
                },
                Change {
                    key: "{\"k\":2}".into(),
                    row: Some("{\"k\":2,\"v\":5}".into()),
                    packed: None,
                },
            ],
        )?;
        s.write_epoch(
            1,
            &[
                Change {
                    key: "{\"k\":1}".into(),
                    row: None,
                    packed: None,
                },
                Change {
                    key: "{\"k\":2}".into(),
                    row: Some("{\"k\":2,\"v\":6}".into()),
                    packed: None,
                },
            ],
        )?;
        s.close()?;
        let log = std::fs::read_to_string(dir.path().join("t.changelog.jsonl"))?;
        assert_eq!(log.lines().count(), 4);
        assert!(
            log.contains("{\"epoch\":1,\"key\":{\"k\":1},\"row\":null}"),
            "{log}"
        );
        let snap = std::fs::read_to_string(dir.path().join("t.jsonl"))?;
        assert_eq!(snap, "{\"k\":2,\"v\":6}\n");
        Ok(())
    }

    /// Epoch `e` of a table whose rows change with `e` (and whose key `e % 3` leaves).
    fn epoch_changes(e: u64) -> Vec<Change> {
        (0..4u64)
            .map(|k| Change {
                key: format!("{{\"k\":{k}}}"),
                row: (k != e % 3).then(|| format!("{{\"k\":{k},\"v\":{}}}", e * 10 + k)),
                packed: None,
            })
            .collect()
    }

    #[test]
    fn a_resumed_changelog_holds_every_epoch_once_after_a_crash_mid_epoch() -> anyhow::Result<()> {
        let straight = tempfile::tempdir()?;
        let mut s = JsonLinesSink::open("t", straight.path(), 0)?;
        s.begin(false)?;
        for e in 0..6 {
            s.write_epoch(e, &epoch_changes(e))?;
        }
        s.close()?;

        let dir = tempfile::tempdir()?;
        let mut s = JsonLinesSink::open("t", dir.path(), 0)?;
        s.begin(false)?;
        for e in 0..3 {
            s.write_epoch(e, &epoch_changes(e))?;
        }
        drop(s);
        // A crash halfway through epoch 3: part of a line, no commit.
        append(
            &dir.path().join("t.changelog.jsonl"),
            "{\"epoch\":3,\"key\":{\"k\":0},\"ro",
        )?;
        let mut s = JsonLinesSink::open("t", dir.path(), 0)?;
        s.begin(true)?;
        // The restored run replays from epoch 1 on.
        for e in 1..6 {
            s.write_epoch(e, &epoch_changes(e))?;
        }
        s.close()?;
        for file in ["t.changelog.jsonl", "t.jsonl"] {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(file))?,
                std::fs::read_to_string(straight.path().join(file))?,
                "{file}"
            );
        }
        // A fresh start discards it all.
        let mut s = JsonLinesSink::open("t", dir.path(), 0)?;
        s.begin(false)?;
        s.write_epoch(0, &epoch_changes(0))?;
        s.close()?;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("t.changelog.jsonl"))?
                .lines()
                .count(),
            4
        );
        Ok(())
    }

    fn append(path: &Path, text: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
        f.write_all(text.as_bytes())
    }

    #[test]
    fn unknown_sink_kind_is_a_clear_error() {
        let cfg = SinkConfig {
            kind: "kafak".into(),
            ..SinkConfig::default()
        };
        let err = FileAndNullSinks
            .open("t", &cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kafak"), "{err}");
    }
}
