//! CAP connectors: where data comes from and where results go.
//!
//! - [`clickstream`]: the event model of the output contract and its CSV/JSON codecs.
//! - [`generator`]: a deterministic, calibrated synthetic clickstream (a source and a CLI).
//! - [`file`]: replays CSV/JSON files (plain or gzip) as a partitioned source.
//! - [`sinks`]: JSON-lines file sink (changelog + snapshot) and the null sink.
#![warn(missing_docs)]

pub mod clickstream;
pub mod generator;
