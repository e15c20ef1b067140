//! Flagship job.
