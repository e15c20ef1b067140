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
//! Non-guarantees (this version): a rerun truncates the changelog (exactly-once replay
//! across crashes arrives with checkpoints); the snapshot may lag the changelog by up to
//! the snapshot interval while running.

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
    changelog: BufWriter<File>,
    /// Current rows by key, in the typed key order (see [`JsonKey`]).
    current: BTreeMap<JsonKey, String>,
    snapshot_every: Duration,
    last_snapshot: Instant,
    dirty: bool,
}

impl JsonLinesSink {
    /// Opens (truncating) the changelog of `table` under `dir`.
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
        let path = dir.join(format!("{table}.changelog.jsonl"));
        let file = File::create(&path)
            .map_err(|e| io_err(table, format!("cannot create {}", path.display()), e))?;
        let sink = JsonLinesSink {
            table: table.to_owned(),
            dir: dir.to_owned(),
            changelog: BufWriter::with_capacity(1 << 20, file),
            current: BTreeMap::new(),
            snapshot_every: Duration::from_millis(snapshot_interval_ms),
            last_snapshot: Instant::now(),
            dirty: true,
        };
        Ok(sink)
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
    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        let table = self.table.clone();
        let result = (|| -> std::io::Result<()> {
            for c in changes {
                write!(
                    self.changelog,
                    "{{\"epoch\":{epoch},\"key\":{},\"row\":",
                    c.key
                )?;
                match &c.row {
                    Some(r) => {
                        self.changelog.write_all(r.as_bytes())?;
                        self.current.insert(JsonKey(c.key.clone()), r.clone());
                    }
                    None => {
                        self.changelog.write_all(b"null")?;
                        self.current.remove(&JsonKey(c.key.clone()));
                    }
                }
                self.changelog.write_all(b"}\n")?;
            }
            self.changelog.flush()
        })();
        result.map_err(|e| {
            io_err(
                &table,
                format!("cannot append epoch {epoch} to the changelog"),
                e,
            )
        })?;
        self.dirty = true;
        if self.last_snapshot.elapsed() >= self.snapshot_every {
            self.write_snapshot()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let table = self.table.clone();
        self.changelog
            .flush()
            .map_err(|e| io_err(&table, "cannot flush the changelog".into(), e))?;
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

/// Opens sinks by `kind`: `file`, `null` or `kafka`.
pub struct FileAndNullSinks;

impl SinkFactory for FileAndNullSinks {
    fn open(&self, table: &str, config: &SinkConfig) -> Result<Box<dyn TableWriter>, SinkError> {
        match config.kind.as_str() {
            "file" => Ok(Box::new(JsonLinesSink::open(table, &config.dir, config.snapshot_interval_ms)?)),
            "null" => Ok(Box::new(NullSink)),
            "kafka" => Ok(Box::new(KafkaChangelogSink::open(table, &config.kafka)?)),
            other => Err(SinkError {
                table: table.to_owned(),
                what: format!("sinks.kind `{other}` is not a sink this build has (expected `file`, `null` or `kafka`; parquet arrives with its own connector)"),
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
                },
                Change {
                    key: "{\"k\":2}".into(),
                    row: Some("{\"k\":2,\"v\":5}".into()),
                },
            ],
        )?;
        s.write_epoch(
            1,
            &[
                Change {
                    key: "{\"k\":1}".into(),
                    row: None,
                },
                Change {
                    key: "{\"k\":2}".into(),
                    row: Some("{\"k\":2,\"v\":6}".into()),
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
