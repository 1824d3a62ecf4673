//! The relay's lab: network namespaces and veth pairs standing in for hosts, NATs and the
//! internet; the relay daemon, its CLI and real clients (`relay client` sidecars, wireguard-go,
//! iperf3) run in them as users and operators would run them. The demo, the benchmarks and the
//! end-to-end tests (`tests/`) are built on it. Nothing here ever touches the host's own
//! namespace beyond creating and deleting namespaces.
//!
//! The product crates (`relay-userspace`, `relay-common`) never depend on this one.

pub mod container;
pub mod control_bench;
pub mod demo;
pub mod lab_xdp;
pub mod load;
pub mod nat_lab;
pub mod netns;
pub mod sandbox;
pub mod scenario;
pub mod tap;
pub mod throughput;
pub mod turn_bench;
pub mod turn_clients;
pub mod turn_probe;
pub mod turn_records;
pub mod turn_stream_bench;
pub mod wireguard;
pub mod wireguard_bench;
pub mod xdp_bench;

use std::path::PathBuf;

pub use netns::Netns;

/// The workspace's root directory (scripts and the lab's Python venv live under it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("relay-lab sits in the workspace")
        .to_path_buf()
}

/// The `relay` binary of the same build: next to the running executable (`relay-lab`), or one
/// directory up (a test binary in `target/<profile>/deps/`). Cargo builds it with the
/// workspace's tests (`cargo xtask test`); alone, `cargo build -p relay-userspace` does.
pub fn relay_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().ok_or_else(|| anyhow::anyhow!("no directory"))?;
    for candidate in [dir.join("relay"), dir.join("../relay")] {
        if candidate.is_file() {
            return Ok(candidate.canonicalize()?);
        }
    }
    anyhow::bail!(
        "the `relay` binary is not next to {}: build it (cargo build -p relay-userspace)",
        me.display()
    )
}
