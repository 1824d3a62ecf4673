//! Ethernet, IPv4, IPv6 and UDP header layouts and constants: what every front's packets are
//! wrapped in. Each protocol front defines its own payload format beside this module
//! ([`crate::geneve`] for the session protocol).
//!
//! The header structs are what the XDP program overlays on packet memory. They contain only `u8`
//! and `u16` fields (alignment 2) because the IP header follows a 14-byte Ethernet header and is
//! therefore only 2-byte aligned; multi-byte fields hold raw network-order bytes.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length without options (IHL = 5), the only form the fast path parses.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header length.
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// How much a frame grows going from an IPv4 leg to an IPv6 leg (and shrinks the other way).
pub const V4_V6_HEADER_DELTA: usize = IPV6_HLEN - IPV4_HLEN;

/// EtherType IPv4, as it appears in memory (network order) read into a native little-endian u16.
pub const ETH_P_IPV4_RAW: u16 = u16::from_ne_bytes([0x08, 0x00]);
/// EtherType IPv6, raw network-order bytes as a native u16.
pub const ETH_P_IPV6_RAW: u16 = u16::from_ne_bytes([0x86, 0xdd]);
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv4 "more fragments" flag and fragment offset mask, as a raw network-order u16.
pub const IPV4_FRAG_MASK_RAW: u16 = u16::from_ne_bytes([0x3f, 0xff]);
/// IPv4 "don't fragment" flag, raw network-order u16.
pub const IPV4_DF_RAW: u16 = u16::from_ne_bytes([0x40, 0x00]);

/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthHdr {
    /// Destination MAC.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType, raw network order (compare with [`ETH_P_IPV4_RAW`], [`ETH_P_IPV6_RAW`]).
    pub ether_type: u16,
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length, network order.
    pub tot_len: u16,
    /// Identification.
    pub id: u16,
    /// Flags and fragment offset, network order.
    pub frag_off: u16,
    /// Time to live.
    pub ttl: u8,
    /// Payload protocol.
    pub protocol: u8,
    /// Header checksum, network order.
    pub check: u16,
    /// Source address, network order.
    pub saddr: [u16; 2],
    /// Destination address, network order.
    pub daddr: [u16; 2],
}

/// IPv6 fixed header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label, network order.
    pub vtc_flow: [u16; 2],
    /// Payload length, network order.
    pub payload_len: u16,
    /// Next header (17 = UDP when there is no extension header).
    pub nexthdr: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address, network order.
    pub saddr: [u16; 8],
    /// Destination address, network order.
    pub daddr: [u16; 8],
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpHdr {
    /// Source port, network order.
    pub source: u16,
    /// Destination port, network order.
    pub dest: u16,
    /// Length of header and payload, network order.
    pub len: u16,
    /// Checksum, network order (0 = none, IPv4 only).
    pub check: u16,
}

/// Whether two address word arrays are equal, as explicit word compares (a BPF program has no
/// `memcmp`).
#[inline(always)]
pub fn words_eq<const N: usize>(a: &[u16; N], b: &[u16; N]) -> bool {
    let mut i = 0;
    while i < N {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn header_sizes_match_the_wire() {
        assert_eq!(size_of::<EthHdr>(), ETH_HLEN);
        assert_eq!(size_of::<Ipv4Hdr>(), IPV4_HLEN);
        assert_eq!(size_of::<Ipv6Hdr>(), IPV6_HLEN);
        assert_eq!(size_of::<UdpHdr>(), UDP_HLEN);
    }

    #[test]
    fn raw_constants_are_network_order() {
        assert_eq!(ETH_P_IPV4_RAW.to_ne_bytes(), [0x08, 0x00]);
        assert_eq!(ETH_P_IPV6_RAW.to_ne_bytes(), [0x86, 0xdd]);
        assert_eq!(IPV4_FRAG_MASK_RAW.to_ne_bytes(), [0x3f, 0xff]);
    }
}
