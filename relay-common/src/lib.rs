//! The contract between the relay's XDP program and its userspace control plane.
//!
//! Everything both sides must agree on lives here and nowhere else: the packet headers every
//! front shares ([`wire`]), each protocol front's wire format ([`geneve`]: the session protocol's
//! framing and its bind-handshake control messages; [`turn`]: ChannelData and the TURN
//! allocation maps; [`wireguard`]: stock WireGuard's messages as a keyless relay reads them),
//! the BPF map names, keys and values, the verdict reasons both forwarders count, the forwarding
//! decision itself and the checksum math the kernel uses to rewrite headers. The crate is
//! `no_std` so the XDP program can use it; with the `user` feature it also implements `aya::Pod`
//! for the map types.
//!
//! Byte order convention: fields that are copied to or from packets (addresses, ports) are kept in
//! network byte order exactly as they appear on the wire, so the kernel never swaps bytes on the
//! fast path. Userspace converts at its edges (see the `from_*`/`to_*` helpers).
#![no_std]

pub mod bench;
pub mod checksum;
pub mod forward;
pub mod geneve;
pub mod maps;
pub mod ratelimit;
pub mod turn;
pub mod verdict;
pub mod wire;
pub mod wireguard;

#[cfg(test)]
extern crate std;
