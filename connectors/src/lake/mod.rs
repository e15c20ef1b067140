//! The lakehouse: output tables as Parquet on local disk, S3 (and S3-compatible stores),
//! Azure Data Lake Storage Gen2 / Blob, Google Cloud Storage or HDFS.
//!
//! ```text
//!  <root>/                              sinks.parquet.url (default <sinks.dir>/lake)
//!    gold/<table>/_schema.json          columns, primary key, schema version
//!    gold/<table>/snapshot/snapshot.parquet
//!                                       current rows, sorted by key, replaced atomically
//!    gold/<table>/changelog/part-<first epoch>-<last epoch>.parquet
//!                                       every change: epoch, seq, diff (+1/-1), key, row
//! ```
//!
//! - [`store`]: the object store under a root (one atomic put per object).
//! - [`schema`]: the tables' Arrow schemas from their declared columns.
//! - [`columns`]: packed rows into Arrow columns and back.
//! - [`gold`]: the table sink, its background writer and its commit protocol.
//!
//! Guarantees: a reader sees whole files only; the snapshot is a consistent table as of
//! the epoch in its metadata; the changelog holds every epoch of the run exactly once,
//! also across crashes and restores (the sink skips what a replay writes again); a table's
//! output, and so a checkpoint, passes an epoch only once its file is written; storage
//! outages are retried until they pass (the table, and through backpressure the job,
//! waits). Pages are zstd-compressed, and every row group and page carries min/max
//! statistics for pruning. Non-guarantees: see [`gold`].

pub mod columns;
pub mod gold;
pub mod schema;
pub mod store;
#[cfg(test)]
mod tests;

pub use gold::ParquetTableSink;
pub use store::{Lake, LakeError, Location};
