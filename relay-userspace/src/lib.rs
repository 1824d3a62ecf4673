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
pub mod fleet;
pub mod forwarder;
pub mod fronts;
pub mod inspect;
pub mod logging;
pub mod metrics;

/// What `relay --version` prints after the name, and the daemon logs at start: the package
/// version (the workspace's), the commit and the embedded XDP object's SHA-256 — the object is
/// what a restarted daemon compares to decide whether to swap the attached program.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RELAY_GIT_COMMIT"),
    ", xdp ",
    env!("RELAY_EBPF_SHA256"),
    ")"
);
