//! Synthetic clickstream generator.
