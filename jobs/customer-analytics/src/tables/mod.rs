//! One module per output table (or family of tables): each builds its rows from the
//! decoded clicks and nothing else, so tables can be read, tested and changed alone.

pub mod abandonment;
pub mod alerts;
pub mod brands;
pub mod categories;
pub mod clusters;
pub mod counters;
pub mod customers;
pub mod funnels;
pub mod recommendations;
pub mod visitors;
