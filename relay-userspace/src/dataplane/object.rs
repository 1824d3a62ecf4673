//! The XDP object compiled by `cargo xtask build-ebpf` and embedded at build time.

/// The ELF object with every program and map (see `relay-ebpf`).
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"))
}

/// The relay's forwarding program.
pub const PROGRAM_RELAY: &str = "relay_xdp";
/// TURN's part of the fast path as a program of its own, tail-called by earlier builds' relay
/// program (this build's runs TURN inline): installed for the window of an upgrade.
pub const PROGRAM_TURN: &str = relay_common::maps::TURN_PROGRAM;
/// Pass-everything program for veth peers in labs.
pub const PROGRAM_PASS: &str = "xdp_pass";
/// Reports the kernel's jiffies (see `clock`).
pub const PROGRAM_CLOCK_PROBE: &str = relay_common::maps::CLOCK_PROBE_PROGRAM;

/// SHA-256 of the embedded object, which identifies the program build.
pub fn sha256() -> [u8; 32] {
    let hex = env!("RELAY_EBPF_SHA256");
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).expect("build.rs writes 64 hex digits");
    out
}
