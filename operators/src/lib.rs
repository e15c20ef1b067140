//! Incremental analytics operators.
