//! Parsing up to UDP, shared by every front: Ethernet, then IPv4 (no options, no fragments) or
//! IPv6 (no extension headers), then a UDP header addressed to one of the relay's addresses.
//! Anything else is the stack's business and is passed with the reason it was not ours.

use aya_ebpf::programs::XdpContext;
use relay_common::{
    maps::{CONFIG_HAS_V4, CONFIG_HAS_V6, RelayConfig},
    verdict::Reason,
    wire::{
        ETH_HLEN, ETH_P_IPV4_RAW, ETH_P_IPV6_RAW, EthHdr, IPPROTO_UDP, IPV4_FRAG_MASK_RAW,
        IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, UDP_HLEN, UdpHdr, words_eq,
    },
};

use crate::packet::{frame_len, ptr_at};

/// A UDP packet to one of the relay's addresses, its headers in place in the frame (a front
/// rewrites them there).
pub enum Packet<'a> {
    /// Over IPv4.
    V4 {
        /// Ethernet header.
        eth: &'a mut EthHdr,
        /// IPv4 header (no options).
        ip: &'a mut Ipv4Hdr,
        /// UDP header.
        udp: &'a mut UdpHdr,
    },
    /// Over IPv6.
    V6 {
        /// Ethernet header.
        eth: &'a mut EthHdr,
        /// IPv6 header (UDP follows directly).
        ip: &'a mut Ipv6Hdr,
        /// UDP header.
        udp: &'a mut UdpHdr,
    },
}

impl Packet<'_> {
    /// The UDP destination port, raw network order: which front the packet is for.
    #[inline(always)]
    pub fn dest_port(&self) -> u16 {
        match self {
            Packet::V4 { udp, .. } | Packet::V6 { udp, .. } => udp.dest,
        }
    }
}

/// The frame's UDP packet, if it is addressed to one of the relay's addresses.
#[inline(always)]
pub fn udp_to_relay<'a>(ctx: &'a XdpContext, cfg: &RelayConfig) -> Result<Packet<'a>, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    if eth.ether_type == ETH_P_IPV4_RAW {
        udp_v4(ctx, cfg, eth)
    } else if eth.ether_type == ETH_P_IPV6_RAW {
        udp_v6(ctx, cfg, eth)
    } else {
        Err(Reason::PassedNotIp)
    }
}

#[inline(always)]
fn udp_v4<'a>(
    ctx: &'a XdpContext,
    cfg: &RelayConfig,
    eth: &'a mut EthHdr,
) -> Result<Packet<'a>, Reason> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &mut *ip };
    if ip.version_ihl != 0x45 {
        return Err(if ip.version_ihl >> 4 == 4 && ip.version_ihl & 0x0f > 5 {
            Reason::PassedIpv4Options
        } else {
            Reason::PassedMalformed
        });
    }
    if ip.protocol != IPPROTO_UDP {
        return Err(Reason::PassedNotUdp);
    }
    if ip.frag_off & IPV4_FRAG_MASK_RAW != 0 {
        return Err(Reason::PassedFragment);
    }
    if !cfg.has(CONFIG_HAS_V4) || !words_eq(&ip.daddr, &cfg.addr_v4) {
        return Err(Reason::PassedNotOurAddress);
    }
    let udp = ptr_at::<UdpHdr>(ctx, ETH_HLEN + IPV4_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let udp = unsafe { &mut *udp };
    Ok(Packet::V4 { eth, ip, udp })
}

/// IPv6 next-header values that are extension headers (RFC 8200 and the IANA registry).
#[inline(always)]
fn is_extension_header(nexthdr: u8) -> bool {
    matches!(
        nexthdr,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

const IPV6_NEXTHDR_FRAGMENT: u8 = 44;

#[inline(always)]
fn udp_v6<'a>(
    ctx: &'a XdpContext,
    cfg: &RelayConfig,
    eth: &'a mut EthHdr,
) -> Result<Packet<'a>, Reason> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &mut *ip };
    let first = ip.vtc_flow[0].to_ne_bytes();
    if first[0] >> 4 != 6 {
        return Err(Reason::PassedMalformed);
    }
    if ip.nexthdr != IPPROTO_UDP {
        return Err(if ip.nexthdr == IPV6_NEXTHDR_FRAGMENT {
            Reason::PassedFragment
        } else if is_extension_header(ip.nexthdr) {
            Reason::PassedIpv6ExtHeader
        } else {
            Reason::PassedNotUdp
        });
    }
    if !cfg.has(CONFIG_HAS_V6) || !words_eq(&ip.daddr, &cfg.addr_v6) {
        return Err(Reason::PassedNotOurAddress);
    }
    let udp = ptr_at::<UdpHdr>(ctx, ETH_HLEN + IPV6_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let udp = unsafe { &mut *udp };
    Ok(Packet::V6 { eth, ip, udp })
}

/// Checks the UDP length against the IP payload length and the frame, and that at least
/// `min_payload` bytes of UDP payload (the front's own header) follow; returns the UDP payload
/// length. Called once a front owns the packet, so an inconsistent one is dropped, not passed.
#[inline(always)]
pub fn udp_payload_len(
    ctx: &XdpContext,
    ip_hlen: usize,
    ip_payload_len: usize,
    udp: &UdpHdr,
    min_payload: usize,
) -> Result<usize, Reason> {
    let udp_len = u16::from_be(udp.len) as usize;
    if udp_len != ip_payload_len
        || udp_len < UDP_HLEN + min_payload
        || ETH_HLEN + ip_hlen + udp_len > frame_len(ctx)
    {
        return Err(Reason::DroppedMalformed);
    }
    Ok(udp_len - UDP_HLEN)
}
