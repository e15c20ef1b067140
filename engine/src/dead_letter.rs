//! Dead letters: records that could not be decoded, kept with where they came from and why.
//!
//! Bad input never stops a job and is never dropped silently: each undecodable record
//! becomes a [`DeadLetter`] carrying its source and partition, its position (line or
//! offset), its raw bytes (at most [`MAX_RAW_BYTES`]) and a reason that names the field and
//! what was wrong. Jobs route dead letters to the `dead_letters` output and the engine
//! counts them per source in its metrics.

use serde::{Deserialize, Serialize};

/// Raw bytes kept per dead letter; longer records are truncated (and marked so).
pub const MAX_RAW_BYTES: usize = 4096;

/// A record that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The source name and partition, e.g. `clickstream:events.csv`.
    pub source: String,
    /// Position within the partition (1-based line number for files, offset for Kafka).
    pub position: u64,
    /// Why the record was rejected: what was expected, what was found, which field.
    pub reason: String,
    /// The raw bytes, truncated to [`MAX_RAW_BYTES`].
    pub raw: Vec<u8>,
    /// Whether `raw` was truncated.
    pub truncated: bool,
}

impl DeadLetter {
    /// A dead letter for `raw` at `position` of `source`, truncating the bytes as needed.
    pub fn new(
        source: impl Into<String>,
        position: u64,
        raw: &[u8],
        reason: impl Into<String>,
    ) -> DeadLetter {
        let truncated = raw.len() > MAX_RAW_BYTES;
        DeadLetter {
            source: source.into(),
            position,
            reason: reason.into(),
            raw: raw[..raw.len().min(MAX_RAW_BYTES)].to_vec(),
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_are_truncated_to_4_kib() {
        let big = vec![b'x'; 10_000];
        let d = DeadLetter::new("s:f", 7, &big, "too long");
        assert_eq!(d.raw.len(), MAX_RAW_BYTES);
        assert!(d.truncated);
        let small = DeadLetter::new("s:f", 8, b"abc", "bad");
        assert_eq!(small.raw, b"abc");
        assert!(!small.truncated);
    }
}
