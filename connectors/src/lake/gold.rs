//! The gold tables: a table sink that writes each output table as Parquet, off the worker
//! threads.
//!
//! ```text
//!  worker (sink operator)                     writer thread (one per table)
//!  write_epoch(e, changes) --bounded queue--> apply to the current rows, queue changelog
//!  unpublished() <- published epoch ---------  lines; write the queued epochs as one
//!                                              changelog file; now and then the snapshot,
//!                                              and compact small changelog files
//! ```
//!
//! Objects, under the lake's root (see `docs/lakehouse.md`):
//! - `gold/<table>/changelog/part-<first>-<last>.parquet`: every change of epochs
//!   `first..=last` (20-digit, zero-padded, so names sort by epoch), sorted by
//!   `(epoch, seq)`: a changed key gives a `diff = -1` line with its old row, then a
//!   `diff = +1` line with its new one; a key leaving the table gives the `-1` line alone.
//!   `(epoch, seq)` is unique; summing `diff` per row over all files gives the table.
//! - `gold/<table>/snapshot/snapshot.parquet`: the current rows sorted by primary key, replaced
//!   atomically every `sinks.snapshot_interval_ms` and when the run ends; its metadata
//!   `cap.epoch` names the last epoch it holds.
//! - `gold/<table>/_schema.json`: the table's columns, key and schema version.
//!
//! Commit protocol: every object is written whole by one atomic put (rename on disk), so a
//! file is either complete or absent, and a changelog file's name says which epochs it
//! holds. An epoch is published (the sink's [`TableWriter::unpublished`] passes it, and a
//! checkpoint may then cover it) only once the file holding it is written. A restored run
//! lists the changelog, drops files whose epochs another file holds (an interrupted
//! compaction), rebuilds the current rows from it and skips the epochs it already holds
//! when they are replayed, so every epoch is in the changelog exactly once.
//!
//! Non-guarantees: a reader listing the changelog while small files are compacted may see
//! the merged file and the small ones for a moment (the same `(epoch, seq)` twice);
//! the snapshot lags the changelog by up to the snapshot interval; restoring reads the
//! whole changelog of the table.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::builder::{Int8Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_ord::sort::{lexsort_to_indices, SortColumn};
use arrow_schema::Schema;
use arrow_select::take::take_record_batch;
use bytes::Bytes;
use cap_engine::config::ParquetSinkConfig;
use cap_engine::sink::{Change, SinkError, TableSchema, TableWriter};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::columns::{RowCells, RowColumns};
use super::schema::{changelog_schema, snapshot_schema};
use super::store::Lake;

/// One changelog file: the epochs it holds and its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ChangelogFile {
    first: u64,
    last: u64,
    rows: u64,
}

impl ChangelogFile {
    fn name(&self) -> String {
        format!("part-{:020}-{:020}.parquet", self.first, self.last)
    }

    /// `part-<first>-<last>.parquet` back to its epochs.
    fn parse(name: &str) -> Option<(u64, u64)> {
        let body = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let (first, last) = body.split_once('-')?;
        let (first, last) = (first.parse().ok()?, last.parse().ok()?);
        (first <= last).then_some((first, last))
    }
}

/// What the sink hands its writer thread.
enum Msg {
    Epoch(u64, Vec<Change>),
    Close(SyncSender<Result<(), String>>),
}

/// What the writer thread tells the sink.
#[derive(Default)]
struct Shared {
    /// One past the last epoch durably written (0: none yet).
    published: AtomicU64,
    /// The writer's fatal error, if it stopped.
    failed: Mutex<Option<String>>,
}

/// The Parquet sink of one gold table.
pub struct ParquetTableSink {
    table: String,
    /// The writer, until [`TableWriter::begin`] moves it to its thread.
    writer: Option<Box<GoldWriter>>,
    tx: Option<SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Epochs handed to the thread and not yet known to be published, oldest first.
    handed: VecDeque<u64>,
    queue_epochs: usize,
}

impl ParquetTableSink {
    /// The sink of `table` with columns `schema` in the lake `config.url` (or, when that is
    /// empty, `default_dir`); `snapshot_interval_ms` paces the snapshot.
    pub fn open(
        table: &str,
        schema: Option<&TableSchema>,
        config: &ParquetSinkConfig,
        default_dir: &std::path::Path,
        snapshot_interval_ms: u64,
    ) -> Result<ParquetTableSink, SinkError> {
        let err = |what: String| SinkError {
            table: table.to_owned(),
            what,
            cause: None,
        };
        let schema = schema.ok_or_else(|| {
            err("the parquet sink needs the table's columns, and its rows declare none (TableRow::schema)".into())
        })?;
        super::schema::check(schema).map_err(|e| err(format!("schema: {e}")))?;
        if !(1..=22).contains(&config.zstd_level) {
            return Err(err(format!(
                "sinks.parquet.zstd_level is {}; expected 1..=22",
                config.zstd_level
            )));
        }
        for (key, value) in [
            ("file_rows", config.file_rows),
            ("row_group_rows", config.row_group_rows),
            ("queue_epochs", config.queue_epochs),
        ] {
            if value == 0 {
                return Err(err(format!(
                    "sinks.parquet.{key} is 0; expected at least 1"
                )));
            }
        }
        let url = if config.url.is_empty() {
            default_dir.join("lake").display().to_string()
        } else {
            config.url.clone()
        };
        let lake = Lake::open(&url, &config.options).map_err(|e| err(e.to_string()))?;
        let writer = GoldWriter::new(table, schema.clone(), lake, config, snapshot_interval_ms)
            .map_err(|e| err(e.to_string()))?;
        Ok(ParquetTableSink {
            table: table.to_owned(),
            writer: Some(Box::new(writer)),
            tx: None,
            thread: None,
            shared: Arc::new(Shared::default()),
            handed: VecDeque::new(),
            queue_epochs: config.queue_epochs,
        })
    }

    fn error(&self, what: String) -> SinkError {
        SinkError {
            table: self.table.clone(),
            what,
            cause: None,
        }
    }

    fn failure(&self) -> Option<String> {
        self.shared
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Prepares the writer (resuming or afresh) and starts its thread.
    fn start(&mut self, resume: bool) -> Result<(), SinkError> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(()); // already started
        };
        writer
            .prepare(resume)
            .map_err(|e| self.error(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(self.queue_epochs);
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("parquet-{}", self.table))
            .spawn(move || writer.run(rx, &shared))
            .map_err(|e| self.error(format!("cannot start the writer thread: {e}")))?;
        self.tx = Some(tx);
        self.thread = Some(thread);
        Ok(())
    }
}

impl TableWriter for ParquetTableSink {
    /// The rows come packed; the JSON of a row is read only when a change has no packed
    /// row (a writer fed by something other than the engine's sink operator).
    fn wants_rows(&self) -> bool {
        false
    }

    fn wants_packed(&self) -> bool {
        true
    }

    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        self.start(resume)
    }

    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        self.start(false)?;
        if let Some(reason) = self.failure() {
            return Err(self.error(format!("the writer stopped: {reason}")));
        }
        let sent = self
            .tx
            .as_ref()
            .map(|tx| tx.send(Msg::Epoch(epoch, changes.to_vec())).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(self.error(format!(
                "the writer thread is gone; epoch {epoch} is not written: {}",
                self.failure().unwrap_or_default()
            )));
        }
        self.handed.push_back(epoch);
        Ok(())
    }

    fn unpublished(&mut self) -> Option<u64> {
        let published = self.shared.published.load(Ordering::Acquire);
        while self.handed.front().is_some_and(|e| *e < published) {
            self.handed.pop_front();
        }
        self.handed.front().copied()
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.start(false)?;
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        let closed = match self.tx.take() {
            Some(tx) if tx.send(Msg::Close(ack_tx)).is_ok() => ack_rx.recv().unwrap_or_else(|_| {
                Err(self
                    .failure()
                    .unwrap_or_else(|| "the writer thread ended without closing".into()))
            }),
            _ => Err(self
                .failure()
                .unwrap_or_else(|| "the writer thread is gone".into())),
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.unpublished();
        closed.map_err(|e| self.error(e))
    }
}

impl Drop for ParquetTableSink {
    fn drop(&mut self) {
        // Without a close the thread ends when its queue does; what it had queued is written.
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A gold-table writer's errors.
#[derive(Debug, thiserror::Error)]
pub enum GoldError {
    /// Storage failed.
    #[error(transparent)]
    Lake(#[from] super::store::LakeError),
    /// Encoding or decoding Parquet / Arrow failed.
    #[error("{what}: {reason}")]
    Format {
        /// What was being done.
        what: String,
        /// The library's message.
        reason: String,
    },
    /// What the lake holds does not fit this run.
    #[error("{0}")]
    Incompatible(String),
}

fn format_err(what: impl Into<String>) -> impl FnOnce(String) -> GoldError {
    let what = what.into();
    move |reason| GoldError::Format { what, reason }
}

/// Writes one table's changelog, snapshot and schema (on the writer thread).
pub struct GoldWriter {
    table: String,
    schema: TableSchema,
    lake: Lake,
    changelog_schema: Arc<Schema>,
    snapshot_schema: Arc<Schema>,
    /// The current rows, packed, by primary key (the key's JSON).
    current: HashMap<String, Vec<u8>>,
    /// Epochs up to this one are in the changelog already (a restored run).
    committed: Option<u64>,
    /// Changelog lines not yet in a file, and the epochs they cover.
    pending: PendingLines,
    line_count: u64,
    first_epoch: Option<u64>,
    last_epoch: u64,
    files: Vec<ChangelogFile>,
    file_rows: usize,
    row_group_rows: usize,
    zstd: ZstdLevel,
    compact_files: usize,
    snapshot_every: Duration,
    last_snapshot: Instant,
    snapshot_dirty: bool,
}

impl GoldWriter {
    /// A writer of `table`; nothing is read or written before [`GoldWriter::prepare`].
    pub fn new(
        table: &str,
        schema: TableSchema,
        lake: Lake,
        config: &ParquetSinkConfig,
        snapshot_interval_ms: u64,
    ) -> Result<GoldWriter, GoldError> {
        let zstd = ZstdLevel::try_new(config.zstd_level).map_err(|e| GoldError::Format {
            what: "sinks.parquet.zstd_level".into(),
            reason: e.to_string(),
        })?;
        Ok(GoldWriter {
            table: table.to_owned(),
            changelog_schema: changelog_schema(&schema),
            snapshot_schema: snapshot_schema(&schema),
            pending: PendingLines::new(&schema),
            schema,
            lake,
            current: HashMap::new(),
            committed: None,
            line_count: 0,
            first_epoch: None,
            last_epoch: 0,
            files: Vec::new(),
            file_rows: config.file_rows,
            row_group_rows: config.row_group_rows,
            zstd,
            compact_files: config.compact_files,
            snapshot_every: Duration::from_millis(snapshot_interval_ms),
            last_snapshot: Instant::now(),
            snapshot_dirty: true,
        })
    }

    fn dir(&self) -> String {
        format!("gold/{}", self.table)
    }

    /// Afresh: removes what an earlier run left of the table. Resuming: checks the schema,
    /// reads the changelog back (dropping files an interrupted compaction left behind) and
    /// rebuilds the current rows.
    pub fn prepare(&mut self, resume: bool) -> Result<(), GoldError> {
        let dir = self.dir();
        let schema_path = format!("{dir}/_schema.json");
        if !resume {
            for (name, _) in self.lake.list(&dir)? {
                self.lake.delete(&format!("{dir}/{name}"))?;
            }
        } else if let Some(bytes) = self.lake.get(&schema_path)? {
            let stored: TableSchema = serde_json::from_slice(&bytes).map_err(|e| {
                GoldError::Incompatible(format!("{schema_path} is unreadable: {e}"))
            })?;
            if stored != self.schema {
                return Err(GoldError::Incompatible(format!(
                    "{schema_path} holds schema version {} and this job writes version {} with other columns; start afresh (--fresh) or move the table away",
                    stored.version, self.schema.version
                )));
            }
        }
        let json = serde_json::to_vec_pretty(&self.schema).unwrap_or_default();
        self.lake.put(&schema_path, Bytes::from(json))?;
        if resume {
            self.read_changelog()?;
            tracing::info!(table = %self.table, lake = %self.lake.url(), committed_epoch = ?self.committed, files = self.files.len(), rows = self.current.len(), "parquet sink resumed");
        }
        Ok(())
    }

    fn read_changelog(&mut self) -> Result<(), GoldError> {
        let dir = format!("{}/changelog", self.dir());
        let mut found: Vec<(u64, u64, String)> = Vec::new();
        for (name, _) in self.lake.list(&dir)? {
            match ChangelogFile::parse(&name) {
                Some((first, last)) => found.push((first, last, name)),
                None => {
                    tracing::warn!(table = %self.table, object = %name, "parquet sink: an object in the changelog directory is not a changelog file; left alone")
                }
            }
        }
        // Widest first at each start, so a merged file wins over the small ones it holds.
        found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut kept: Vec<(u64, u64, String)> = Vec::new();
        for (first, last, name) in found {
            match kept.last() {
                Some((_, kept_last, _)) if last <= *kept_last => {
                    tracing::info!(table = %self.table, object = %name, "parquet sink: removing a changelog file a compacted file already holds");
                    self.lake.delete(&format!("{dir}/{name}"))?;
                }
                Some((_, kept_last, kept_name)) if first <= *kept_last => {
                    return Err(GoldError::Incompatible(format!(
                        "changelog files {kept_name} and {name} overlap in part; the changelog was changed by something else"
                    )));
                }
                _ => kept.push((first, last, name)),
            }
        }
        let row_columns: Vec<usize> = (4..self.changelog_schema.fields().len()).collect();
        for (first, last, name) in kept {
            let path = format!("{dir}/{name}");
            let bytes = self.lake.get(&path)?.ok_or_else(|| {
                GoldError::Incompatible(format!("{path} vanished while it was read"))
            })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| format_err(format!("reading {path}"))(e.to_string()))?;
            let mut rows = 0u64;
            for batch in reader {
                let batch =
                    batch.map_err(|e| format_err(format!("reading {path}"))(e.to_string()))?;
                rows += batch.num_rows() as u64;
                self.apply_batch(&batch, &row_columns, &path)?;
            }
            self.files.push(ChangelogFile { first, last, rows });
            self.committed = Some(last);
        }
        Ok(())
    }

    /// Applies changelog lines read back to the current rows.
    fn apply_batch(
        &mut self,
        batch: &RecordBatch,
        row_columns: &[usize],
        path: &str,
    ) -> Result<(), GoldError> {
        use arrow_array::cast::AsArray;
        let diffs = batch
            .column(2)
            .as_primitive_opt::<arrow_array::types::Int8Type>()
            .ok_or_else(|| GoldError::Incompatible(format!("{path}: `diff` is not Int8")))?;
        let keys = batch
            .column(3)
            .as_string_opt::<i32>()
            .ok_or_else(|| GoldError::Incompatible(format!("{path}: `key` is not text")))?;
        let arrays: Vec<ArrayRef> = row_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let cells = RowCells::new(&self.schema, &arrays)
            .map_err(|e| GoldError::Incompatible(format!("{path}: {e}")))?;
        for i in 0..batch.num_rows() {
            let key = keys.value(i);
            if diffs.value(i) > 0 {
                let mut row = Vec::with_capacity(64);
                cells
                    .pack(i, &mut row)
                    .map_err(|e| GoldError::Incompatible(format!("{path}: line {i}: {e}")))?;
                self.current.insert(key.to_owned(), row);
            } else {
                self.current.remove(key);
            }
        }
        Ok(())
    }

    /// The packed row of a change that came with JSON only (or with neither: the engine
    /// could not pack the row). A row that does not fit the table's columns is a bug in
    /// the job, and stops the writer: the table's output stays at its last published epoch.
    fn pack_json(&self, key: &str, json: &str) -> Result<Vec<u8>, GoldError> {
        let packed = serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| e.to_string())
            .and_then(|value| {
                let mut row = Vec::with_capacity(64);
                cap_engine::packed::pack(&value, &self.schema, &mut row)
                    .map(|()| row)
                    .map_err(|e| e.to_string())
            });
        packed.map_err(|e| GoldError::Format {
            what: format!(
                "table `{}`: the row of key {key} does not fit the table's columns",
                self.table
            ),
            reason: e,
        })
    }

    /// Applies one epoch's changes to the current rows and queues its changelog lines.
    fn apply(&mut self, epoch: u64, changes: Vec<Change>) -> Result<(), GoldError> {
        if self.committed.is_some_and(|c| epoch <= c) {
            return Ok(()); // replayed after a restore: already in the changelog, exactly so
        }
        let unfit = |e: cap_engine::packed::PackError| GoldError::Format {
            what: "a packed row".into(),
            reason: e.to_string(),
        };
        let mut seq: u32 = 0;
        for Change { key, row, packed } in changes {
            let new = match (row, packed) {
                (None, _) => None,
                (Some(_), Some(packed)) => Some(packed),
                (Some(json), None) => Some(self.pack_json(&key, &json)?),
            };
            let pending = &mut self.pending;
            match (new, self.current.get_mut(&key)) {
                (Some(new), Some(old)) => {
                    pending.push(epoch, seq, -1, &key, old).map_err(unfit)?;
                    pending.push(epoch, seq + 1, 1, &key, &new).map_err(unfit)?;
                    seq += 2;
                    *old = new;
                }
                (Some(new), None) => {
                    pending.push(epoch, seq, 1, &key, &new).map_err(unfit)?;
                    seq += 1;
                    self.current.insert(key, new);
                }
                (None, Some(_)) => {
                    if let Some(old) = self.current.remove(&key) {
                        self.pending
                            .push(epoch, seq, -1, &key, &old)
                            .map_err(unfit)?;
                        seq += 1;
                    }
                }
                (None, None) => {}
            }
        }
        if seq > 0 {
            self.line_count += u64::from(seq);
            self.first_epoch.get_or_insert(epoch);
            self.last_epoch = epoch;
            self.snapshot_dirty = true;
        }
        Ok(())
    }

    fn properties(&self, sorting: Vec<SortingColumn>, epoch: u64) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(self.zstd))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_sorting_columns(Some(sorting))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("cap.table".into(), self.table.clone()),
                KeyValue::new("cap.epoch".into(), epoch.to_string()),
                KeyValue::new("cap.schema_version".into(), self.schema.version.to_string()),
            ]))
            .build()
    }

    /// Encodes `batch` as one Parquet file.
    fn encode(
        &self,
        batch: &RecordBatch,
        props: WriterProperties,
        what: &str,
    ) -> Result<Bytes, GoldError> {
        let fail = |e: String| GoldError::Format {
            what: format!("table `{}`: {what}", self.table),
            reason: e,
        };
        let mut writer = ArrowWriter::try_new(
            Vec::with_capacity(batch.num_rows() * 16),
            batch.schema(),
            Some(props),
        )
        .map_err(|e| fail(e.to_string()))?;
        writer.write(batch).map_err(|e| fail(e.to_string()))?;
        let bytes = writer.into_inner().map_err(|e| fail(e.to_string()))?;
        Ok(Bytes::from(bytes))
    }

    /// Writes the queued changelog lines as one file, retrying storage errors until they
    /// pass (the epochs stay unpublished meanwhile). Returns the last epoch written.
    fn flush_changelog(&mut self) -> Result<Option<u64>, GoldError> {
        let Some(first) = self.first_epoch else {
            return Ok(None);
        };
        let last = self.last_epoch;
        let props = self.properties(ascending(&[0, 1]), last);
        let batch = self
            .pending
            .finish(&self.changelog_schema)
            .map_err(|e| format_err("changelog")(e.to_string()))?;
        let bytes = self.encode(&batch, props, "changelog")?;
        let file = ChangelogFile {
            first,
            last,
            rows: self.line_count,
        };
        let path = format!("{}/changelog/{}", self.dir(), file.name());
        self.put_retrying(&path, bytes);
        self.files.push(file);
        self.line_count = 0;
        self.first_epoch = None;
        Ok(Some(last))
    }

    /// Puts `bytes` at `path`, retrying with backoff (capped at 5 s) while storage fails:
    /// an outage stalls the table (and, through backpressure, the job), never loses it.
    fn put_retrying(&self, path: &str, bytes: Bytes) {
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match self.lake.put(path, bytes.clone()) {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(table = %self.table, object = %path, attempt, "parquet sink: storage is back; written");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(table = %self.table, object = %path, attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "parquet sink: write failed; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
    }

    /// Rewrites the snapshot from the current rows, sorted by primary key.
    fn write_snapshot(&mut self) -> Result<(), GoldError> {
        let fail = |e: String| GoldError::Format {
            what: "snapshot".into(),
            reason: e,
        };
        let mut columns = RowColumns::new(&self.schema, self.current.len());
        for row in self.current.values() {
            columns.push(row).map_err(|e| fail(e.to_string()))?;
        }
        let batch = RecordBatch::try_new(self.snapshot_schema.clone(), columns.finish())
            .map_err(|e| fail(e.to_string()))?;
        let key: Vec<usize> = self
            .schema
            .key
            .iter()
            .filter_map(|k| self.schema.columns.iter().position(|c| &c.name == k))
            .collect();
        let batch = if batch.num_rows() > 1 {
            let sort: Vec<SortColumn> = key
                .iter()
                .map(|&i| SortColumn {
                    values: batch.column(i).clone(),
                    options: None,
                })
                .collect();
            let order = lexsort_to_indices(&sort, None).map_err(|e| fail(e.to_string()))?;
            take_record_batch(&batch, &order).map_err(|e| fail(e.to_string()))?
        } else {
            batch
        };
        let epoch = self
            .committed
            .into_iter()
            .chain(self.files.last().map(|f| f.last))
            .max();
        let props = self.properties(ascending(&key), epoch.unwrap_or(0));
        let bytes = self.encode(&batch, props, "snapshot")?;
        self.put_retrying(&format!("{}/snapshot/snapshot.parquet", self.dir()), bytes);
        self.last_snapshot = Instant::now();
        self.snapshot_dirty = false;
        Ok(())
    }

    /// Merges the oldest run of small changelog files into one once there are
    /// `compact_files` of them: the merged file is written first, then the small ones
    /// deleted (a restore that finds both keeps the merged one).
    fn compact(&mut self) -> Result<(), GoldError> {
        if self.compact_files < 2 {
            return Ok(());
        }
        let small = self
            .files
            .iter()
            .filter(|f| (f.rows as usize) < self.file_rows)
            .count();
        if small < self.compact_files {
            return Ok(());
        }
        // The oldest consecutive small files, up to file_rows rows together.
        let start = self
            .files
            .iter()
            .position(|f| (f.rows as usize) < self.file_rows)
            .unwrap_or(0);
        let mut end = start;
        let mut rows = 0u64;
        while end < self.files.len()
            && (self.files[end].rows as usize) < self.file_rows
            && (rows + self.files[end].rows) as usize <= self.file_rows.max(1)
        {
            rows += self.files[end].rows;
            end += 1;
        }
        if end - start < 2 {
            return Ok(());
        }
        let run: Vec<ChangelogFile> = self.files[start..end].to_vec();
        let dir = format!("{}/changelog", self.dir());
        let merged = ChangelogFile {
            first: run[0].first,
            last: run[run.len() - 1].last,
            rows,
        };
        let props = self.properties(ascending(&[0, 1]), merged.last);
        let mut writer =
            ArrowWriter::try_new(Vec::new(), self.changelog_schema.clone(), Some(props))
                .map_err(|e| format_err("compaction")(e.to_string()))?;
        for f in &run {
            let path = format!("{dir}/{}", f.name());
            let bytes = self.lake.get(&path)?.ok_or_else(|| {
                GoldError::Incompatible(format!("{path} vanished before it was compacted"))
            })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| format_err(format!("compacting {path}"))(e.to_string()))?;
            for batch in reader {
                let batch =
                    batch.map_err(|e| format_err(format!("compacting {path}"))(e.to_string()))?;
                writer
                    .write(&batch)
                    .map_err(|e| format_err("compaction")(e.to_string()))?;
            }
        }
        let bytes = writer
            .into_inner()
            .map_err(|e| format_err("compaction")(e.to_string()))?;
        self.put_retrying(&format!("{dir}/{}", merged.name()), Bytes::from(bytes));
        for f in &run {
            self.lake.delete(&format!("{dir}/{}", f.name()))?;
        }
        self.files.splice(start..end, [merged]);
        tracing::debug!(table = %self.table, files = run.len(), rows, first = merged.first, last = merged.last, "parquet sink: compacted changelog files");
        Ok(())
    }

    /// The writer thread: applies queued epochs, writes them, publishes them.
    fn run(mut self: Box<Self>, rx: Receiver<Msg>, shared: &Shared) {
        let table = self.table.clone();
        let fail = |e: GoldError| {
            tracing::error!(table = %table, error = %e, "parquet sink: the writer stopped; the table's output is held at its last published epoch");
            *shared.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        };
        let mut close: Option<SyncSender<Result<(), String>>> = None;
        loop {
            let wait = self
                .snapshot_every
                .saturating_sub(self.last_snapshot.elapsed())
                .max(Duration::from_millis(1));
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Everything queued now goes into one file (up to file_rows lines).
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Epoch(epoch, changes) => {
                        if let Err(e) = self.apply(epoch, changes) {
                            fail(e);
                            return;
                        }
                    }
                    Msg::Close(ack) => {
                        close = Some(ack);
                        break;
                    }
                }
                if self.line_count as usize >= self.file_rows {
                    break;
                }
                next = rx.try_recv().ok();
            }
            let step = (|| -> Result<(), GoldError> {
                if let Some(last) = self.flush_changelog()? {
                    shared.published.store(last + 1, Ordering::Release);
                }
                if self.snapshot_dirty
                    && (close.is_some() || self.last_snapshot.elapsed() >= self.snapshot_every)
                {
                    self.write_snapshot()?;
                }
                self.compact()
            })();
            if let Err(e) = step {
                let text = e.to_string();
                fail(e);
                if let Some(ack) = close.take() {
                    let _ = ack.send(Err(text));
                }
                return;
            }
            if let Some(ack) = close.take() {
                let _ = ack.send(Ok(()));
                return;
            }
        }
        // The sink went away without closing: write what was queued.
        let last = self.flush_changelog().and_then(|last| {
            if self.snapshot_dirty {
                self.write_snapshot()?;
            }
            Ok(last)
        });
        match last {
            Ok(Some(last)) => shared.published.store(last + 1, Ordering::Release),
            Ok(None) => {}
            Err(e) => fail(e),
        }
    }
}

/// The files' sort order: these columns, ascending (the changelog: `epoch`, `seq`; the
/// snapshot: the primary key's columns).
fn ascending(columns: &[usize]) -> Vec<SortingColumn> {
    columns
        .iter()
        .map(|&i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: false,
        })
        .collect()
}

/// Changelog lines not yet in a file: the changelog's own columns, then the row's.
struct PendingLines {
    epoch: UInt64Builder,
    seq: UInt32Builder,
    diff: Int8Builder,
    key: StringBuilder,
    row: RowColumns,
}

impl PendingLines {
    fn new(schema: &TableSchema) -> PendingLines {
        PendingLines {
            epoch: UInt64Builder::new(),
            seq: UInt32Builder::new(),
            diff: Int8Builder::new(),
            key: StringBuilder::new(),
            row: RowColumns::new(schema, 1024),
        }
    }

    /// Appends one line; on an error nothing is appended but the row's columns are unequal
    /// (see [`RowColumns::push`]): the writer stops.
    fn push(
        &mut self,
        epoch: u64,
        seq: u32,
        diff: i8,
        key: &str,
        row: &[u8],
    ) -> Result<(), cap_engine::packed::PackError> {
        self.row.push(row)?;
        self.epoch.append_value(epoch);
        self.seq.append_value(seq);
        self.diff.append_value(diff);
        self.key.append_value(key);
        Ok(())
    }

    /// The lines as one batch of `schema` (the changelog's); the builders start empty.
    fn finish(&mut self, schema: &Arc<Schema>) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.epoch.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.diff.finish()),
            Arc::new(self.key.finish()),
        ];
        columns.extend(self.row.finish());
        RecordBatch::try_new(schema.clone(), columns)
    }
}
