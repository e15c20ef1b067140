//! Table sinks: turn a differential collection of rows into per-epoch keyed changes.
//!
//! ```text
//!  rows (VecCollection<R>) --exchange to the table's writer worker--> buffer by epoch
//!      --frontier passes epoch e--> consolidate, group by primary key, sort by key
//!      --> [Change { key, row: Some(new) | None }] --> TableWriter::write_epoch(e, ..)
//! ```
//!
//! A table is a function from primary key to row. At each epoch the sink emits, in key
//! order, one change per key whose row changed: an upsert with the new row, or a delete
//! (tombstone) when the key left the result. This is exactly what a compacted Kafka topic
//! or a keyed changelog needs.
//!
//! Guarantees: epochs are written in increasing order, each exactly once per run, only
//! when complete (the frontier has passed them); within an epoch changes are sorted by key.
//! Non-guarantees: one writer per table (a single partition) in this version; a key with
//! more than one live row is a bug in the job, logged at ERROR (the last row wins).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use serde::Serialize;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;

use crate::config::{NotifyConfig, SinkConfig};
use crate::metrics::{Registry, SinkMetrics};

/// A row of an output table.
pub trait TableRow: ExchangeData + Serialize {
    /// The primary key.
    type Key: Ord + Serialize + Clone;
    /// This row's primary key.
    fn key(&self) -> Self::Key;
    /// The table's typed columns, for sinks that store columns (Parquet); `None` (the
    /// default) when the table declares none, which such a sink refuses with a clear error.
    fn schema() -> Option<TableSchema> {
        None
    }
}

/// The type of an output column, named by what its JSON form holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// `true` / `false`.
    Bool,
    /// An unsigned integer up to 255.
    UInt8,
    /// An unsigned 32-bit integer.
    UInt32,
    /// An unsigned 64-bit integer.
    UInt64,
    /// A signed 64-bit integer.
    Int64,
    /// A JSON number held as a 64-bit float (ratios, scores, 6-decimal fixed point).
    Float64,
    /// UTF-8 text.
    Text,
    /// A UTC day, `YYYY-MM-DD`.
    Date,
    /// An instant, RFC 3339 text in UTC (millisecond precision).
    Timestamp,
    /// Money: a JSON number with two decimals (exact decimal, 18 digits).
    Money,
}

/// One column of an output table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    /// The column's name: the row's JSON field.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub ty: ColumnType,
    /// Whether the field may be JSON `null` (or absent).
    pub nullable: bool,
}

/// The typed columns of an output table, in the row's field order, with its primary key
/// and a version that changes whenever the columns do (readers and restores compare it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    /// Bumped by the job whenever a column is added, removed, renamed or retyped.
    pub version: u32,
    /// The primary key's columns, in key order.
    pub key: Vec<String>,
    /// Every column, in the row's field order.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// A schema of non-null columns; `key` names the primary key's columns.
    pub fn new(version: u32, key: &[&str], columns: &[(&str, ColumnType)]) -> TableSchema {
        TableSchema {
            version,
            key: key.iter().map(|k| (*k).to_owned()).collect(),
            columns: columns
                .iter()
                .map(|(name, ty)| Column {
                    name: (*name).to_owned(),
                    ty: *ty,
                    nullable: false,
                })
                .collect(),
        }
    }

    /// The same schema with `column` nullable.
    pub fn nullable(mut self, column: &str) -> TableSchema {
        for c in &mut self.columns {
            if c.name == column {
                c.nullable = true;
            }
        }
        self
    }

    /// What is wrong with this schema, if anything: duplicate or empty names, or a key
    /// column that is not a column.
    pub fn check(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.columns {
            if c.name.is_empty() || !seen.insert(c.name.as_str()) {
                return Err(format!("column `{}` is empty or named twice", c.name));
            }
        }
        if self.key.is_empty() {
            return Err("the primary key names no column".into());
        }
        for k in &self.key {
            if !seen.contains(k.as_str()) {
                return Err(format!("key column `{k}` is not a column"));
            }
        }
        Ok(())
    }
}

/// One keyed change of a table at an epoch: `row` is the new row, or `None` when the key
/// left the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Primary key as a JSON object.
    pub key: String,
    /// The row as a JSON object, or `None` for a delete. Empty text when no writer of the
    /// table reads JSON ([`TableWriter::wants_rows`]).
    pub row: Option<String>,
    /// The new row packed by the table's columns ([`crate::packed`]), when a writer of the
    /// table asks for it ([`TableWriter::wants_packed`]); `None` for a delete, and for a
    /// row that does not fit its columns (logged at ERROR; the columnar writer then packs
    /// the JSON if it has it, and stops when that fails too).
    pub packed: Option<Vec<u8>>,
}

/// An error writing a sink.
#[derive(Debug, thiserror::Error)]
#[error("sink for table `{table}`: {what}")]
pub struct SinkError {
    /// The table.
    pub table: String,
    /// What failed.
    pub what: String,
    /// The cause.
    #[source]
    pub cause: Option<std::io::Error>,
}

/// Where one table's changes go. Implemented by connectors (files, Kafka, Parquet, null).
pub trait TableWriter {
    /// Whether this writer reads the JSON of changes (a null sink does not, which saves
    /// serializing rows nobody reads).
    fn wants_rows(&self) -> bool {
        true
    }
    /// Whether this writer reads the rows packed by the table's columns
    /// ([`Change::packed`]; a columnar sink does, and then needs no JSON of rows).
    fn wants_packed(&self) -> bool {
        false
    }
    /// Called once before any write. `resume` is true when the run continues earlier runs
    /// (a restore): the writer keeps what they published, and skips the epochs (or the part
    /// of an epoch) it already holds when they are written again, since a replayed epoch
    /// comes out exactly as before. False: a fresh start, the writer may discard what an
    /// earlier run left. A writer that is never begun behaves as begun with `false`.
    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        let _ = resume;
        Ok(())
    }
    /// Writes all changes of `epoch`, sorted by key. Called once per completed epoch that
    /// has changes, in increasing epoch order.
    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError>;
    /// The earliest epoch handed to [`TableWriter::write_epoch`] that is not yet durably
    /// published, or `None` when every epoch handed is. A writer that publishes in the
    /// background (the Parquet sink) answers until its writes land; the sink holds the
    /// table's output frontier (and so checkpoints, which follow it) at that epoch and polls
    /// again. The default: `write_epoch` returns only once published.
    fn unpublished(&mut self) -> Option<u64> {
        None
    }
    /// Called when the input is complete (end of input or graceful stop).
    fn close(&mut self) -> Result<(), SinkError>;
}

/// Opens table writers from configuration. Implemented by the connectors crate.
pub trait SinkFactory: Send + Sync {
    /// Opens the writer for `table` bound to `config`.
    fn open(&self, table: &str, config: &SinkConfig) -> Result<Box<dyn TableWriter>, SinkError>;

    /// Opens the writer for `table` with everything the engine binds to it: its sink
    /// configuration, its notification channels (the `[[sinks.notify]]` entries naming
    /// it) and the process's metrics registry, for writers with counters of their own.
    /// The engine calls this one, with the table's typed columns when its rows declare
    /// them ([`TableRow::schema`]). The default opens [`SinkFactory::open`] and refuses
    /// notification channels, which such a factory cannot deliver: a configured channel
    /// is never ignored in silence.
    //
    // A second method rather than a `notify` field resolved into `SinkConfig`: a
    // `SinkConfig` is what one `[sinks]` / `[sinks.tables.NAME]` table holds, and the
    // channels are configured beside those tables, not in them; the registry is not
    // configuration at all. Factories with no use for either implement `open` alone.
    fn open_bound(
        &self,
        table: &str,
        config: &SinkConfig,
        notify: &[NotifyConfig],
        registry: &Registry,
        schema: Option<&TableSchema>,
    ) -> Result<Box<dyn TableWriter>, SinkError> {
        let _ = (registry, schema);
        if !notify.is_empty() {
            return Err(SinkError {
                table: table.to_owned(),
                what: "sinks.notify: this build's sinks cannot deliver notifications".into(),
                cause: None,
            });
        }
        self.open(table, config)
    }
}

/// The current rows of a table, kept for the live console (small tables only).
pub type LiveView = Arc<Mutex<BTreeMap<String, String>>>;

/// Which worker writes `table`: a stable hash of the name, so every process agrees.
pub fn writer_worker(table: &str, peers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in table.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % peers as u64) as usize
}

/// Attaches a table sink to `rows`. `writer` is opened only on the table's writer worker
/// (the closure runs there and nowhere else). Returns after wiring; the probe handle is
/// advanced once an epoch is written. The changes of epochs up to `published_through` (a
/// restored checkpoint's epoch: its outputs were published by an earlier run) reach the live
/// view but not the writer.
pub fn sink_table<'s, R>(
    rows: VecCollection<'s, u64, R>,
    table: &str,
    writer: Option<Box<dyn TableWriter>>,
    live: Option<LiveView>,
    metrics: SinkMetrics,
    probe: &ProbeHandle<u64>,
    published_through: Option<u64>,
) where
    R: TableRow + Hashable,
{
    let scope = rows.inner.scope();
    let peers = scope.peers();
    let target = writer_worker(table, peers) as u64;
    let table_name = table.to_owned();
    let mut writer = writer;
    let serialize = writer.as_ref().map(|w| w.wants_rows()).unwrap_or(false) || live.is_some();
    let pack_by = writer
        .as_ref()
        .filter(|w| w.wants_packed())
        .and_then(|_| R::schema());
    let mut pending: BTreeMap<u64, Vec<(R, isize)>> = BTreeMap::new();
    let mut closed = false;
    // Held while epochs are buffered, so that the probe only passes an epoch once written.
    let mut held: Option<timely::dataflow::operators::Capability<u64>> = None;

    rows.inner
        .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(move |_update: &(R, u64, isize)| target),
            &format!("Sink({table})"),
            move |_cap, info| {
                let activator = scope.activator_for(info.address);
                move |(input, frontier), _output| {
                    input.for_each(|cap, data| {
                        if let Some(c) = cap.retain_least(0) {
                            if held.as_ref().map(|h| c.time() < h.time()).unwrap_or(true) {
                                held = Some(c);
                            }
                        }
                        for (row, time, diff) in data.drain(..) {
                            pending.entry(time).or_default().push((row, diff));
                        }
                    });
                    // Write every epoch the frontier has passed, in order.
                    while let Some(epoch) = pending.keys().next().copied() {
                        if frontier.less_equal(&epoch) {
                            break;
                        }
                        let updates = pending.remove(&epoch).unwrap_or_default();
                        let changes =
                            to_changes(&table_name, updates, serialize, pack_by.as_ref());
                        if changes.is_empty() {
                            continue;
                        }
                        let published = published_through.is_some_and(|p| epoch <= p);
                        if !published {
                            metrics.changes.add(changes.len() as u64);
                        }
                        if let Some(view) = &live {
                            let mut view = view.lock().unwrap_or_else(|p| p.into_inner());
                            for c in &changes {
                                match &c.row {
                                    Some(r) => {
                                        view.insert(c.key.clone(), r.clone());
                                    }
                                    None => {
                                        view.remove(&c.key);
                                    }
                                }
                            }
                        }
                        if let Some(w) = writer.as_mut().filter(|_| !published) {
                            if let Err(e) = w.write_epoch(epoch, &changes) {
                                // Losing output is a broken guarantee: say so loudly.
                                tracing::error!(table = %table_name, epoch, error = %e, "sink write failed; output for this epoch is incomplete");
                            }
                        }
                    }
                    if frontier.is_empty() && !closed {
                        closed = true;
                        if let Some(w) = writer.as_mut() {
                            if let Err(e) = w.close() {
                                tracing::error!(table = %table_name, error = %e, "sink close failed");
                            }
                        }
                    }
                    // Hold the output at the first epoch not yet published: one still
                    // buffered here, or one the writer is still writing in the background.
                    let unpublished = writer.as_mut().and_then(|w| w.unpublished());
                    if unpublished.is_some() {
                        activator.activate_after(UNPUBLISHED_POLL);
                    }
                    match pending.keys().next().copied().into_iter().chain(unpublished).min() {
                        None => held = None,
                        Some(first) => {
                            if let Some(h) = held.as_mut() {
                                if *h.time() < first {
                                    h.downgrade(&first);
                                }
                            }
                        }
                    }
                }
            },
        )
        .probe_with(probe);
}

/// How often a sink whose writer publishes in the background asks it again.
const UNPUBLISHED_POLL: std::time::Duration = std::time::Duration::from_millis(2);

/// Groups consolidated updates by key into changes sorted by key: with the rows' JSON when
/// `serialize`, packed by `pack_by` when given (and the keys' JSON when either).
fn to_changes<R: TableRow>(
    table: &str,
    mut updates: Vec<(R, isize)>,
    serialize: bool,
    pack_by: Option<&TableSchema>,
) -> Vec<Change> {
    differential_dataflow::consolidation::consolidate(&mut updates);
    let mut by_key: BTreeMap<R::Key, (Option<R>, bool)> = BTreeMap::new();
    for (row, diff) in updates {
        let entry = by_key.entry(row.key()).or_insert((None, false));
        if diff > 0 {
            if diff != 1 || entry.0.is_some() {
                tracing::error!(
                    table,
                    diff,
                    "more than one row per key: the job broke the table's key invariant"
                );
            }
            entry.0 = Some(row);
        } else {
            entry.1 = true; // a retraction: the key may be leaving
        }
    }
    let to_json = |what: &str, value: &dyn erased::Json, wanted: bool| -> String {
        if !wanted {
            return String::new();
        }
        value.json().unwrap_or_else(|e| {
            tracing::error!(table, what, error = %e, "cannot serialize an output value; it is written as null");
            "null".to_owned()
        })
    };
    let mut out = Vec::with_capacity(by_key.len());
    for (key, (row, _retracted)) in by_key {
        let key_json = to_json("key", &key, serialize || pack_by.is_some());
        let packed = match (pack_by, &row) {
            (Some(schema), Some(r)) => {
                let mut bytes = Vec::with_capacity(64);
                match crate::packed::pack(r, schema, &mut bytes) {
                    Ok(()) => Some(bytes),
                    Err(e) => {
                        tracing::error!(table, key = %key_json, error = %e, "a row does not fit the table's declared columns; the table's columnar writer stops at this epoch");
                        None
                    }
                }
            }
            _ => None,
        };
        let row_json = row.map(|r| to_json("row", &r, serialize));
        out.push(Change {
            key: key_json,
            row: row_json,
            packed,
        });
    }
    out
}

mod erased {
    /// Object-safe JSON serialization, so one closure serializes keys and rows.
    pub trait Json {
        fn json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}
