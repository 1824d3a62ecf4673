//! The `relay` command line: argument parsing and dispatch to the library's modules.

pub mod client;
pub mod explain;
pub mod sessions;
pub mod stats;
pub mod top;
