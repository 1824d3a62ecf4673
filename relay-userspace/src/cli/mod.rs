//! The `relay` command line: argument parsing and dispatch to the library's modules.

pub mod check;
pub mod client;
pub mod down;
pub mod drain;
pub mod explain;
pub mod sessions;
pub mod stats;
pub mod top;
pub mod turn;
