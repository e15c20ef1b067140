//! CAP engine: the runtime that job crates hand their dataflow to.
//!
//! Mental model: a job is a differential dataflow over *ingest epochs*. Sources read
//! partitioned, positioned input; every record is stamped with the epoch it was read in
//! (event time is data, carried in the record). When an epoch closes, its source positions
//! are recorded, and once every operator has processed it, each sink writes the epoch's
//! keyed changes. Outputs are therefore, after each epoch, exactly the query over all input
//! read so far.
//!
//! A job implements [`job::Job`] and hands itself to [`cli::main`], which provides the CLI
//! (`run`, `config`, connector commands), layered configuration, workers and processes,
//! signals, metrics and the live console.
//!
//! ```
//! use cap_engine::source::{Polled, Position, Source, SourceError, SourcePartition, SourceRecord};
//!
//! // A tiny source: one partition yielding 0..n.
//! struct Count(u64);
//! struct Part { next: u64, end: u64 }
//! impl SourcePartition<u64> for Part {
//!     fn label(&self) -> &str { "count-0" }
//!     fn position(&self) -> Position { self.next }
//!     fn poll(&mut self, budget: usize, out: &mut Vec<SourceRecord<u64>>) -> Result<Polled, SourceError> {
//!         if self.next == self.end { return Ok(Polled::Exhausted); }
//!         let stop = self.end.min(self.next + budget as u64);
//!         for p in self.next..stop { out.push(SourceRecord { position: p, item: Ok(p) }); }
//!         let n = (stop - self.next) as usize;
//!         self.next = stop;
//!         Ok(Polled::Records(n))
//!     }
//! }
//! impl Source<u64> for Count {
//!     fn name(&self) -> &str { "count" }
//!     fn partitions(&self) -> Vec<String> { vec!["count-0".into()] }
//!     fn open(&self, _i: usize) -> Result<Box<dyn SourcePartition<u64>>, SourceError> {
//!         Ok(Box::new(Part { next: 0, end: self.0 }))
//!     }
//! }
//! let mut part = Count(10).open(0).unwrap();
//! let mut out = Vec::new();
//! assert_eq!(part.poll(4, &mut out).unwrap(), Polled::Records(4));
//! assert_eq!(part.position(), 4);
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod input;
pub mod job;
pub mod metrics;
pub mod packed;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod supervise;
pub mod time;
pub mod values;

pub use differential_dataflow;
pub use timely;
