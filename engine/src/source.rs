//! The source interface: partitioned, positioned, pollable streams of records.
//!
//! A source (a file, a generator, a Kafka topic set) is split into *partitions*, each an
//! ordered stream of records at increasing [`Position`]s (a line number, a byte offset, a
//! Kafka offset). Every process builds the same list of partitions from the same
//! configuration, so the assignment `partition i -> worker i % workers` is deterministic
//! and needs no coordination.
//!
//! The engine polls the partitions a worker owns, stamps what it reads with the current
//! ingest epoch, and when it closes an epoch records, per partition, the position up to
//! which the epoch covers the input (a [`LogRecord`](crate::checkpoint::log::LogRecord)). Replaying a partition from a
//! recorded position re-reads exactly the same records; that is what checkpoints and
//! exactly-once outputs are built on.
//!
//! Guarantees: a partition yields each position at most once per open, in increasing order.
//! Non-guarantees: positions need not be dense (a Kafka topic may skip offsets), and a
//! partition that is not [`seekable`](SourcePartition::seek) can only be read from the start.

use crate::dead_letter::DeadLetter;

/// Where a record sits in its partition (line number, byte offset, Kafka offset...).
pub type Position = u64;

/// One record read from a partition: decoded, or a dead letter with its reason.
#[derive(Debug)]
pub struct SourceRecord<T> {
    /// Where the record was read.
    pub position: Position,
    /// The decoded item, or why it could not be decoded.
    pub item: Result<T, DeadLetter>,
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// Records were appended to the output (possibly fewer than the budget).
    Records(usize),
    /// Nothing available right now (rate limit, pacing, no new data); poll again later.
    Idle,
    /// The partition has ended; it will never yield more records.
    Exhausted,
}

/// Progress of a finite partition, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units done (bytes read, records generated).
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
}

/// Errors a source can raise. Bad *records* are never errors (they are dead letters);
/// these are failures of the source itself.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O failure reading a partition.
    #[error("source `{source_name}` partition `{partition}`: {what}")]
    Io {
        /// Source name.
        source_name: String,
        /// Partition label.
        partition: String,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The source's configuration cannot be used.
    #[error("source `{source_name}`: {reason}")]
    Config {
        /// Source name.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// Seeking is not supported or the position does not exist.
    #[error("source `{source_name}` partition `{partition}`: cannot seek to {position}: {reason}")]
    Seek {
        /// Source name.
        source_name: String,
        /// Partition label.
        partition: String,
        /// The position asked for.
        position: Position,
        /// Why.
        reason: String,
    },
}

/// One partition of a source, owned by one worker.
pub trait SourcePartition<T>: Send {
    /// The partition's label, unique within its source (a file path, `topic/3`, `gen-2`).
    fn label(&self) -> &str;

    /// The position of the next record this partition will yield.
    fn position(&self) -> Position;

    /// Appends at most `budget` records to `out`.
    fn poll(
        &mut self,
        budget: usize,
        out: &mut Vec<SourceRecord<T>>,
    ) -> Result<Polled, SourceError>;

    /// Repositions the partition so that the next record read is the one at `position`.
    fn seek(&mut self, position: Position) -> Result<(), SourceError> {
        Err(SourceError::Seek {
            source_name: String::new(),
            partition: self.label().to_owned(),
            position,
            reason: "this partition kind cannot seek".into(),
        })
    }

    /// Progress through a finite partition, if known.
    fn progress(&self) -> Option<Progress> {
        None
    }

    /// Records available upstream but not read yet (a Kafka partition's high watermark
    /// minus its position), if the partition knows; exported as a lag gauge.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Backpressure: the engine calls `set_paused(true)` when the dataflow has fallen
    /// behind and it stops polling this partition, and `set_paused(false)` when it polls
    /// again. A partition that prefetches (Kafka) stops fetching while paused, so memory
    /// stays bounded however far the input runs ahead. The default does nothing: a file is
    /// read only when polled.
    fn set_paused(&mut self, _paused: bool) {}
}

/// A configured source: lists its partitions and opens any of them.
///
/// `partitions()` must return the same list on every process for the same configuration.
pub trait Source<T>: Send + Sync {
    /// The source's name (as the job declared it).
    fn name(&self) -> &str;

    /// Labels of all partitions, in a deterministic order.
    fn partitions(&self) -> Vec<String>;

    /// Opens partition `index` (an index into [`partitions`](Source::partitions)).
    fn open(&self, index: usize) -> Result<Box<dyn SourcePartition<T>>, SourceError>;

    /// Opens the partitions one worker owns, in the order of `indices`. The default opens
    /// each with [`open`](Source::open); a source whose partitions share a connection (one
    /// Kafka consumer per worker) overrides it.
    fn open_owned(
        &self,
        indices: &[usize],
    ) -> Result<Vec<Box<dyn SourcePartition<T>>>, SourceError> {
        indices.iter().map(|&i| self.open(i)).collect()
    }
}
