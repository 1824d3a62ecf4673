//! Labs built from network namespaces and veth pairs: the hosts that tests, the demo and the
//! benchmarks send between. Nothing here ever touches the host's own namespace beyond creating
//! and deleting namespaces.

pub mod control_bench;
pub mod demo;
pub mod lab_xdp;
pub mod nat_lab;
pub mod netns;
pub mod sandbox;
pub mod scenario;
pub mod throughput;
pub mod wireguard;
pub mod xdp_bench;

pub use netns::Netns;
