//! The relay's XDP programs.
//!
//! * `relay_xdp` forwards data packets of bound sessions between their legs in the kernel and
//!   hands everything else to the stack (and so to the userspace daemon), counting every packet
//!   under one `relay_common::verdict::Reason`.
//! * `clock_probe` reports the kernel's jiffies to userspace (timestamps in the maps are jiffies).
//! * `xdp_pass` passes everything: attached to the peer of a veth so XDP_TX/REDIRECT frames
//!   towards it are not dropped (a veth requirement, see docs/operations.md).
#![no_std]
#![no_main]

mod counters;
mod fib;
mod log;
mod maps;
mod packet;
mod rewrite;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use relay_common::{
    forward::{Direction, decide_v4, decide_v6},
    geneve::{GENEVE_HLEN, GeneveHdr},
    maps::{CONFIG_HAS_V4, CONFIG_HAS_V6, Leg, RelayConfig, Session},
    verdict::{Outcome, Reason},
    wire::{
        ETH_HLEN, ETH_P_IPV4_RAW, ETH_P_IPV6_RAW, EthHdr, IPPROTO_UDP, IPV4_FRAG_MASK_RAW,
        IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, UDP_HLEN, UdpHdr, words_eq,
    },
};

use crate::{
    counters::{admit, count_session, count_verdict, jiffies},
    fib::{NextHop, next_hop},
    maps::{CONFIG, REDIRECT, SESSIONS},
    packet::{frame_len, ptr_at},
    rewrite::{Original, ip_len_towards},
};

/// A forwarded packet's XDP action and reason; `Err` carries the reason it was not forwarded.
type Verdict = Result<(u32, Reason), Reason>;

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let (action, reason) = match relay(&ctx) {
        Ok(forwarded) => forwarded,
        Err(reason) => match reason.outcome() {
            Outcome::Dropped => (XDP_DROP, reason),
            _ => (XDP_PASS, reason),
        },
    };
    count_verdict(reason, len);
    if action == XDP_PASS {
        log::note(&ctx, reason);
    }
    action
}

#[inline(always)]
fn relay(ctx: &XdpContext) -> Verdict {
    let cfg = CONFIG.get(0).ok_or(Reason::PassedNotConfigured)?;
    if !cfg.is_enabled() {
        return Err(Reason::PassedNotConfigured);
    }
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_IPV4_RAW {
        relay_v4(ctx, cfg)
    } else if ether_type == ETH_P_IPV6_RAW {
        relay_v6(ctx, cfg)
    } else {
        Err(Reason::PassedNotIp)
    }
}

/// Checks the UDP length against the IP length and the frame, then reads the Geneve header.
/// From here on the packet is addressed to the relay port, so anything wrong is dropped.
#[inline(always)]
fn geneve_of(
    ctx: &XdpContext,
    ip_hlen: usize,
    ip_payload_len: usize,
    udp: &UdpHdr,
) -> Result<u32, Reason> {
    let udp_len = u16::from_be(udp.len) as usize;
    if udp_len != ip_payload_len
        || udp_len < UDP_HLEN + GENEVE_HLEN
        || ETH_HLEN + ip_hlen + udp_len > frame_len(ctx)
    {
        return Err(Reason::DroppedMalformed);
    }
    let geneve =
        ptr_at::<GeneveHdr>(ctx, ETH_HLEN + ip_hlen + UDP_HLEN).ok_or(Reason::DroppedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let geneve = unsafe { &*geneve };
    if !geneve.is_supported() {
        return Err(Reason::DroppedMalformed);
    }
    if geneve.is_control() {
        return Err(Reason::PassedControl);
    }
    Ok(geneve.vni())
}

/// The session a VNI names.
#[inline(always)]
fn session_of(vni: u32) -> Result<&'static Session, Reason> {
    let session = SESSIONS.get_ptr(vni).ok_or(Reason::DroppedUnknownVni)?;
    // SAFETY: map values stay valid for the whole program run (RCU), even if userspace replaces
    // or deletes the entry meanwhile.
    Ok(unsafe { &*session })
}

/// Checks the destination leg is reachable by the fast path and finds its next hop.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    cfg: &RelayConfig,
    to: &Leg,
    udp_len: u16,
    udp_check: u16,
    now: u64,
) -> Result<NextHop, Reason> {
    if to.is_v6() {
        if !cfg.has(CONFIG_HAS_V6) {
            return Err(Reason::PassedFibFailed);
        }
        // IPv6 requires a UDP checksum; a zero (absent) IPv4 one would need a full sum.
        if udp_check == 0 {
            return Err(Reason::PassedChecksumUnsupported);
        }
        if to.is_v6_source(&cfg.addr_v6, to.port) {
            return Err(Reason::PassedHairpin);
        }
    } else {
        if !cfg.has(CONFIG_HAS_V4) {
            return Err(Reason::PassedFibFailed);
        }
        if to.is_v4_source(cfg.addr_v4, to.port) {
            return Err(Reason::PassedHairpin);
        }
    }
    let hop = next_hop(ctx, cfg, to, ip_len_towards(to, udp_len), now)?;
    if hop.ifindex != ctx.ingress_ifindex() as u32 && REDIRECT.get_ifindex(hop.ifindex).is_none() {
        return Err(Reason::PassedRedirectFailed);
    }
    Ok(hop)
}

/// XDP_TX back out of the ingress interface, or XDP_REDIRECT to the egress one.
#[inline(always)]
fn transmit(ctx: &XdpContext, hop: &NextHop) -> u32 {
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        XDP_TX
    } else {
        // Membership was checked before rewriting; should the interface vanish in between, the
        // fallback action lets the stack have the frame rather than silently losing it.
        REDIRECT
            .redirect(hop.ifindex, XDP_PASS as u64)
            .unwrap_or(XDP_PASS)
    }
}

#[inline(always)]
fn forwarded(
    ctx: &XdpContext,
    session: &Session,
    dir: Direction,
    to: &Leg,
    hop: &NextHop,
    udp_len: u16,
    from_v6: bool,
    now: u64,
) -> Verdict {
    count_session(
        session.slot,
        dir.from,
        u16::from_be(udp_len) as usize - UDP_HLEN,
        now,
    );
    Ok((transmit(ctx, hop), Reason::forwarded(from_v6, to.is_v6())))
}

/// The session's rate limits for a packet of UDP length `udp_len` (network order) from
/// `dir.from`.
#[inline(always)]
fn within_limits(
    cfg: &RelayConfig,
    session: &Session,
    dir: Direction,
    udp_len: u16,
    now: u64,
) -> Result<(), Reason> {
    let payload_len = (u16::from_be(udp_len) as usize).saturating_sub(UDP_HLEN);
    if admit(
        cfg,
        session.slot,
        &session.limits,
        dir.from,
        payload_len,
        now,
    ) {
        Ok(())
    } else {
        Err(Reason::DroppedRateLimited)
    }
}

#[inline(always)]
fn relay_v4(ctx: &XdpContext, cfg: &RelayConfig) -> Verdict {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassedMalformed)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
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
    if udp.dest != cfg.port {
        return Err(Reason::PassedNotOurPort);
    }
    let ip_len = u16::from_be(ip.tot_len) as usize;
    if ip_len < IPV4_HLEN {
        return Err(Reason::DroppedMalformed);
    }
    let vni = geneve_of(ctx, IPV4_HLEN, ip_len - IPV4_HLEN, udp)?;
    let session = session_of(vni)?;
    let dir = decide_v4(session, ip.saddr, udp.source)?;
    let to = session.legs[dir.to & 1];
    let udp_len = udp.len;
    let now = jiffies();
    let hop = route(ctx, cfg, &to, u16::from_be(udp_len), udp.check, now)?;
    within_limits(cfg, session, dir, udp_len, now)?;
    if to.is_v6() {
        let old = Original {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport: udp.source,
            dport: udp.dest,
            check: udp.check,
            udp_len,
            traffic_class: ip.tos,
        };
        rewrite::v4_to_v6(ctx, &old, cfg, &to, &hop)?;
    } else {
        rewrite::v4_to_v4(eth, ip, udp, cfg, &to, &hop);
    }
    forwarded(ctx, session, dir, &to, &hop, udp_len, false, now)
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
fn relay_v6(ctx: &XdpContext, cfg: &RelayConfig) -> Verdict {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PassedMalformed)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN).ok_or(Reason::PassedMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
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
    if udp.dest != cfg.port {
        return Err(Reason::PassedNotOurPort);
    }
    let vni = geneve_of(ctx, IPV6_HLEN, u16::from_be(ip.payload_len) as usize, udp)?;
    // A zero checksum is invalid over IPv6 (RFC 8200); the stack decides (and normally drops).
    if udp.check == 0 {
        return Err(Reason::PassedChecksumUnsupported);
    }
    let session = session_of(vni)?;
    let dir = decide_v6(session, &ip.saddr, udp.source)?;
    let to = session.legs[dir.to & 1];
    let udp_len = udp.len;
    let now = jiffies();
    let hop = route(ctx, cfg, &to, u16::from_be(udp_len), udp.check, now)?;
    within_limits(cfg, session, dir, udp_len, now)?;
    if to.is_v6() {
        rewrite::v6_to_v6(eth, ip, udp, cfg, &to, &hop);
    } else {
        let tc_bytes = ip.vtc_flow[0].to_ne_bytes();
        let old = Original {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport: udp.source,
            dport: udp.dest,
            check: udp.check,
            udp_len,
            traffic_class: (tc_bytes[0] << 4) | (tc_bytes[1] >> 4),
        };
        rewrite::v6_to_v4(ctx, &old, cfg, &to, &hop)?;
    }
    forwarded(ctx, session, dir, &to, &hop, udp_len, true, now)
}

/// Writes the kernel's jiffies into the first 8 bytes of the frame (native byte order). Userspace
/// runs it with BPF_PROG_TEST_RUN to convert the jiffies timestamps in the maps.
#[xdp]
pub fn clock_probe(ctx: XdpContext) -> u32 {
    if let Some(slot) = ptr_at::<u64>(&ctx, 0) {
        // SAFETY: bounds-checked by ptr_at; unaligned write of plain bytes.
        unsafe { slot.write_unaligned(jiffies()) };
    }
    XDP_PASS
}

/// Passes every frame. Attached to veth peers so frames sent to them with XDP_TX are received.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
