//! The XDP object compiled by `cargo xtask build-ebpf` and embedded at build time.

/// The ELF object with every program and map (see `relay-ebpf`).
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(env!("RELAY_EBPF_OBJECT"))
}

/// The relay's forwarding program.
pub const PROGRAM_RELAY: &str = "relay_xdp";
/// MAC-swap XDP_TX reflector, the benchmark baseline.
pub const PROGRAM_REFLECTOR: &str = "reflector";
/// Pass-everything program for veth peers in labs.
pub const PROGRAM_PASS: &str = "xdp_pass";
/// Reports the kernel's jiffies (see `clock`).
pub const PROGRAM_CLOCK_PROBE: &str = relay_common::maps::CLOCK_PROBE_PROGRAM;
