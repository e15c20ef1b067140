//! CAP engine: the runtime that job crates hand their dataflow to.
#![warn(missing_docs)]

pub mod dead_letter;
pub mod source;
pub mod time;
