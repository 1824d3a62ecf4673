//! The relay's userspace: the daemon (control plane and fallback forwarder), the CLI that
//! inspects the pinned maps, and the client sidecar. `main.rs` only parses arguments and calls
//! into these modules.

pub mod api;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod descriptors;
pub mod explain;
pub mod forwarder;
pub mod fronts;
pub mod inspect;
pub mod logging;
pub mod metrics;
