//! One module per output table (or family of tables): each builds its rows from the
//! decoded clicks and nothing else, so tables can be read, tested and changed alone.

pub mod funnels;
pub mod recommendations;
pub mod visitors;
