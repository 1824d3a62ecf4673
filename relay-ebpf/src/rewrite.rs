//! Header rewrites: a forwarded packet leaves as if the relay had sent it — source = the relay's
//! address and port, destination = the other leg, fresh TTL / hop limit, MACs of the next hop.
//! Checksums are updated incrementally from the changed words only. A session's payload
//! (Geneve header included) is never touched, so its headers are rewritten in place (or moved
//! by 20 bytes across families). TURN adds or strips a 4-byte ChannelData header, so its
//! headers are written afresh ([`emit_v4`], [`emit_v6`]) after the frame's head moves.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use relay_common::{
    checksum::{ForwardDelta, Incremental, UdpCovered, ipv4_header_checksum, ttl_protocol_word},
    maps::{Leg, RelayConfig},
    turn::{CHANNEL_DATA_HLEN, ChannelDataHdr},
    verdict::Reason,
    wire::{
        ETH_HLEN, ETH_P_IPV4_RAW, ETH_P_IPV6_RAW, EthHdr, IPPROTO_UDP, IPV4_DF_RAW, IPV4_HLEN,
        IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, UDP_HLEN, UdpHdr, V4_V6_HEADER_DELTA,
    },
};

use crate::{
    fib::NextHop,
    packet::{frame_len, ptr_at},
};

/// The fields of an incoming header that a cross-family rewrite still needs after the old header
/// is overwritten.
pub struct Original<const N: usize> {
    /// Source address words.
    pub saddr: [u16; N],
    /// Destination address words.
    pub daddr: [u16; N],
    /// UDP source port (raw).
    pub sport: u16,
    /// UDP destination port (raw).
    pub dport: u16,
    /// UDP checksum (raw, never 0 here).
    pub check: u16,
    /// UDP length (raw).
    pub udp_len: u16,
    /// IPv4 TOS / IPv6 traffic class, carried over (DSCP and ECN survive the relay).
    pub traffic_class: u8,
}

#[inline(always)]
fn set_macs(eth: &mut EthHdr, hop: &NextHop) {
    eth.dst = hop.dst_mac;
    eth.src = hop.src_mac;
}

#[inline(always)]
fn copy8(dst: &mut [u16; 8], src: &[u16; 8]) {
    let mut i = 0;
    while i < 8 {
        dst[i] = src[i];
        i += 1;
    }
}

/// IPv4 leg → IPv4 leg, in place. A zero UDP checksum ("none") stays zero. With a `delta`
/// (a session's, from its slot entry) the checksums take it whole; without, the changed words
/// are summed here. Both give the same bytes (`ForwardDelta`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn v4_to_v4(
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    udp: &mut UdpHdr,
    cfg: &RelayConfig,
    to: &Leg,
    hop: &NextHop,
    from_port: u16,
    delta: ForwardDelta,
) {
    let new_src = cfg.addr_v4;
    let new_dst = to.v4_words();
    let old_ttl = ttl_protocol_word(ip.ttl, ip.protocol);
    let new_ttl = ttl_protocol_word(cfg.ttl, ip.protocol);
    if delta.is_some() {
        ip.check = delta.ipv4_checksum(ip.check, old_ttl, new_ttl);
        if udp.check != 0 {
            udp.check = delta.udp_checksum(udp.check);
        }
    } else {
        ip.check = Incremental::new(ip.check)
            .replace_words(&ip.saddr, &new_src)
            .replace_words(&ip.daddr, &new_dst)
            .replace(old_ttl, new_ttl)
            .finish();
        if udp.check != 0 {
            udp.check = Incremental::new(udp.check)
                .replace_words(&ip.saddr, &new_src)
                .replace_words(&ip.daddr, &new_dst)
                .replace(udp.source, from_port)
                .replace(udp.dest, to.port)
                .finish_udp();
        }
    }
    ip.saddr = new_src;
    ip.daddr = new_dst;
    ip.ttl = cfg.ttl;
    udp.source = from_port;
    udp.dest = to.port;
    set_macs(eth, hop);
}

/// IPv6 leg → IPv6 leg, in place; `delta` as for [`v4_to_v4`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn v6_to_v6(
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    udp: &mut UdpHdr,
    cfg: &RelayConfig,
    to: &Leg,
    hop: &NextHop,
    from_port: u16,
    delta: ForwardDelta,
) {
    udp.check = if delta.is_some() {
        delta.udp_checksum(udp.check)
    } else {
        Incremental::new(udp.check)
            .replace_words(&ip.saddr, &cfg.addr_v6)
            .replace_words(&ip.daddr, &to.addr)
            .replace(udp.source, from_port)
            .replace(udp.dest, to.port)
            .finish_udp()
    };
    copy8(&mut ip.saddr, &cfg.addr_v6);
    copy8(&mut ip.daddr, &to.addr);
    ip.hop_limit = cfg.hop_limit;
    udp.source = from_port;
    udp.dest = to.port;
    set_macs(eth, hop);
}

/// Re-derives the three headers after the frame's head moved.
#[inline(always)]
fn headers_at<IP>(ctx: &XdpContext) -> Option<(*mut EthHdr, *mut IP, *mut UdpHdr)> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<IP>(ctx, ETH_HLEN)?;
    let udp = ptr_at::<UdpHdr>(ctx, ETH_HLEN + core::mem::size_of::<IP>())?;
    Some((eth, ip, udp))
}

/// Rewrites the UDP header of a packet that changed family: ports, and the checksum moved from
/// the old pseudo-header's addresses to the new ones. Lengths and protocol weigh the same in both
/// pseudo-headers (RFC 768 and RFC 8200 §8.1), so only addresses and ports change the sum.
#[inline(always)]
fn translate_udp<const N: usize, const M: usize>(
    udp: &mut UdpHdr,
    old: &Original<N>,
    new_src: &[u16; M],
    new_dst: &[u16; M],
    to: &Leg,
    from_port: u16,
) {
    udp.check = Incremental::new(old.check)
        .remove_words(&old.saddr)
        .remove_words(&old.daddr)
        .add_words(new_src)
        .add_words(new_dst)
        .replace(old.sport, from_port)
        .replace(old.dport, to.port)
        .finish_udp();
    udp.source = from_port;
    udp.dest = to.port;
}

/// IPv4 leg → IPv6 leg: grows the frame by 20 bytes at the front and writes a new Ethernet and
/// IPv6 header before the untouched UDP header. The caller has ruled out a zero UDP checksum.
#[inline(always)]
pub fn v4_to_v6(
    ctx: &XdpContext,
    old: &Original<2>,
    cfg: &RelayConfig,
    to: &Leg,
    hop: &NextHop,
    from_port: u16,
) -> Result<(), Reason> {
    // SAFETY: plain helper call; on failure nothing changed.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(V4_V6_HEADER_DELTA as i32)) } != 0 {
        return Err(Reason::PassedAdjustFailed);
    }
    // The head moved: every old pointer is invalid. A frame that just grew is long enough, so
    // this cannot fail, but the verifier needs the check.
    let (eth, ip, udp) = headers_at::<Ipv6Hdr>(ctx).ok_or(Reason::DroppedMalformed)?;
    // SAFETY: bounds-checked above.
    let (eth, ip, udp) = unsafe { (&mut *eth, &mut *ip, &mut *udp) };
    set_macs(eth, hop);
    eth.ether_type = ETH_P_IPV6_RAW;
    let tc = old.traffic_class;
    ip.vtc_flow = [u16::from_ne_bytes([0x60 | (tc >> 4), tc << 4]), 0];
    ip.payload_len = old.udp_len;
    ip.nexthdr = IPPROTO_UDP;
    ip.hop_limit = cfg.hop_limit;
    copy8(&mut ip.saddr, &cfg.addr_v6);
    copy8(&mut ip.daddr, &to.addr);
    translate_udp(udp, old, &cfg.addr_v6, &to.addr, to, from_port);
    Ok(())
}

/// IPv6 leg → IPv4 leg: shrinks the frame by 20 bytes at the front and writes a new Ethernet
/// and IPv4 header (with a full header checksum, it is only 20 bytes).
#[inline(always)]
pub fn v6_to_v4(
    ctx: &XdpContext,
    old: &Original<8>,
    cfg: &RelayConfig,
    to: &Leg,
    hop: &NextHop,
    from_port: u16,
) -> Result<(), Reason> {
    // SAFETY: plain helper call; on failure nothing changed.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, V4_V6_HEADER_DELTA as i32) } != 0 {
        return Err(Reason::PassedAdjustFailed);
    }
    let (eth, ip, udp) = headers_at::<Ipv4Hdr>(ctx).ok_or(Reason::DroppedMalformed)?;
    // SAFETY: bounds-checked above.
    let (eth, ip, udp) = unsafe { (&mut *eth, &mut *ip, &mut *udp) };
    set_macs(eth, hop);
    eth.ether_type = ETH_P_IPV4_RAW;
    let mut header = Ipv4Hdr {
        version_ihl: 0x45,
        tos: old.traffic_class,
        tot_len: (u16::from_be(old.udp_len) + IPV4_HLEN as u16).to_be(),
        id: 0,
        frag_off: IPV4_DF_RAW,
        ttl: cfg.ttl,
        protocol: IPPROTO_UDP,
        check: 0,
        saddr: cfg.addr_v4,
        daddr: to.v4_words(),
    };
    // SAFETY: Ipv4Hdr is 20 bytes of u8/u16 fields without padding: exactly ten words.
    header.check =
        ipv4_header_checksum(unsafe { &*(&header as *const Ipv4Hdr as *const [u16; 10]) });
    *ip = header;
    translate_udp(udp, old, &cfg.addr_v4, &to.v4_words(), to, from_port);
    Ok(())
}

/// The IPv4 length a packet has after moving between families (for the route MTU check).
#[inline(always)]
pub fn ip_len_towards(to: &Leg, udp_len: u16) -> u16 {
    udp_len + if to.is_v6() { IPV6_HLEN } else { IPV4_HLEN } as u16
}

/// What a rewrite that builds fresh headers keeps of the incoming ones (read before the frame's
/// head moves, which invalidates every pointer into it). Addresses are eight words in either
/// family, IPv4 in the first two: zero words add nothing to a checksum, so one form serves both.
pub struct Incoming {
    /// What the incoming UDP checksum covers besides the payload.
    pub covered: UdpCovered<8>,
    /// The incoming UDP checksum (raw; 0 = none, IPv4 only).
    pub check: u16,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN survive the relay).
    pub traffic_class: u8,
    /// Whether it came over IPv6.
    pub v6: bool,
    /// IPv4: identification and flags/fragment word, kept when IPv4 goes out. IPv6: the
    /// version/class/flow words, kept when IPv6 goes out.
    pub kept: [u16; 2],
}

impl Incoming {
    /// The fields of an IPv4 packet.
    #[inline(always)]
    pub fn v4(ip: &Ipv4Hdr, udp: &UdpHdr) -> Self {
        Incoming {
            covered: UdpCovered {
                src: [ip.saddr[0], ip.saddr[1], 0, 0, 0, 0, 0, 0],
                dst: [ip.daddr[0], ip.daddr[1], 0, 0, 0, 0, 0, 0],
                sport: udp.source,
                dport: udp.dest,
                len: udp.len,
            },
            check: udp.check,
            traffic_class: ip.tos,
            v6: false,
            kept: [ip.id, ip.frag_off],
        }
    }

    /// The fields of an IPv6 packet.
    #[inline(always)]
    pub fn v6(ip: &Ipv6Hdr, udp: &UdpHdr) -> Self {
        let tc_bytes = ip.vtc_flow[0].to_ne_bytes();
        Incoming {
            covered: UdpCovered {
                src: ip.saddr,
                dst: ip.daddr,
                sport: udp.source,
                dport: udp.dest,
                len: udp.len,
            },
            check: udp.check,
            traffic_class: (tc_bytes[0] << 4) | (tc_bytes[1] >> 4),
            v6: true,
            kept: ip.vtc_flow,
        }
    }

    /// Length of the incoming IP header.
    #[inline(always)]
    pub fn ip_hlen(&self) -> usize {
        if self.v6 { IPV6_HLEN } else { IPV4_HLEN }
    }
}

/// The headers a TURN rewrite writes: the UDP datagram (addresses in the [`Incoming`] form),
/// its final checksum and the ChannelData header, if one goes in front of the payload.
pub struct Outgoing {
    /// Addresses, ports and UDP length.
    pub covered: UdpCovered<8>,
    /// Whether it leaves over IPv6.
    pub v6: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// UDP checksum, final.
    pub check: u16,
    /// ChannelData header to write after the UDP header.
    pub channel: Option<ChannelDataHdr>,
}

impl Outgoing {
    /// Length of the outgoing headers after Ethernet: IP, UDP and ChannelData if any.
    #[inline(always)]
    pub fn headers_len(&self) -> usize {
        let ip = if self.v6 { IPV6_HLEN } else { IPV4_HLEN };
        ip + UDP_HLEN
            + if self.channel.is_some() {
                CHANNEL_DATA_HLEN
            } else {
                0
            }
    }
}

/// Replaces the headers of a frame whose current headers after Ethernet are `headers_before`
/// bytes long with those of `out`: moves the frame's head, writes fresh Ethernet, IP and UDP
/// headers (and ChannelData), then cuts the frame to the end of the new IP packet. On `Err`
/// the frame is unchanged.
///
/// Not inlined: its spills get a stack frame of their own (BPF gives a whole call chain 512
/// bytes, and the TURN paths that call it are large).
#[inline(never)]
pub fn emit(
    ctx: &XdpContext,
    headers_before: usize,
    inc: &Incoming,
    out: &Outgoing,
    hop: &NextHop,
) -> Result<(), Reason> {
    let delta = headers_before as i32 - out.headers_len() as i32;
    // SAFETY: plain helper call; on failure nothing changed.
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Reason::PassedAdjustFailed);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::DroppedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    set_macs(eth, hop);
    let c = &out.covered;
    let udp_at = if out.v6 {
        eth.ether_type = ETH_P_IPV6_RAW;
        let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(Reason::DroppedMalformed)?;
        // SAFETY: bounds-checked by ptr_at.
        let ip = unsafe { &mut *ip };
        // IPv6 in: version, class and flow label carry over; IPv4 in: the TOS, no flow label.
        ip.vtc_flow = if inc.v6 {
            inc.kept
        } else {
            let tc = inc.traffic_class;
            [u16::from_ne_bytes([0x60 | (tc >> 4), tc << 4]), 0]
        };
        ip.payload_len = c.len;
        ip.nexthdr = IPPROTO_UDP;
        ip.hop_limit = out.ttl;
        copy8(&mut ip.saddr, &c.src);
        copy8(&mut ip.daddr, &c.dst);
        ETH_HLEN + IPV6_HLEN
    } else {
        eth.ether_type = ETH_P_IPV4_RAW;
        let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(Reason::DroppedMalformed)?;
        // IPv4 in: identification and flags carry over; IPv6 in: id 0, don't fragment.
        let (id, frag_off) = if inc.v6 {
            (0, IPV4_DF_RAW)
        } else {
            (inc.kept[0], inc.kept[1])
        };
        let mut header = Ipv4Hdr {
            version_ihl: 0x45,
            tos: inc.traffic_class,
            tot_len: (u16::from_be(c.len) + IPV4_HLEN as u16).to_be(),
            id,
            frag_off,
            ttl: out.ttl,
            protocol: IPPROTO_UDP,
            check: 0,
            saddr: [c.src[0], c.src[1]],
            daddr: [c.dst[0], c.dst[1]],
        };
        // SAFETY: Ipv4Hdr is 20 bytes of u8/u16 fields without padding: exactly ten words.
        header.check =
            ipv4_header_checksum(unsafe { &*(&header as *const Ipv4Hdr as *const [u16; 10]) });
        // SAFETY: bounds-checked by ptr_at.
        unsafe { *ip = header };
        ETH_HLEN + IPV4_HLEN
    };
    let udp = ptr_at::<UdpHdr>(ctx, udp_at).ok_or(Reason::DroppedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    unsafe {
        *udp = UdpHdr {
            source: c.sport,
            dest: c.dport,
            len: c.len,
            check: out.check,
        };
    }
    if let Some(header) = out.channel {
        let at =
            ptr_at::<ChannelDataHdr>(ctx, udp_at + UDP_HLEN).ok_or(Reason::DroppedMalformed)?;
        // SAFETY: bounds-checked by ptr_at.
        unsafe { at.write_unaligned(header) };
    }
    trim_to(ctx, udp_at + u16::from_be(c.len) as usize);
    Ok(())
}

/// Cuts the frame to `len` bytes (what follows the IP packet: stripped padding, an Ethernet
/// trailer). The headers are already final, so a driver that cannot shrink the tail only
/// leaves bytes past the IP length, which receivers ignore.
#[inline(always)]
fn trim_to(ctx: &XdpContext, len: usize) {
    let excess = frame_len(ctx) as i64 - len as i64;
    if excess > 0 {
        // SAFETY: plain helper call; shrinking by less than the frame's length.
        let _ = unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) };
    }
}
