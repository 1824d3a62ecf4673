//! Forwarding a packet of a two-leg session to its other leg, shared by the fronts whose
//! payload crosses the relay unchanged: check the destination is reachable from here, apply the
//! session's rate limits, rewrite the headers (same family or across families) and transmit,
//! counting the packet against the session.

use aya_ebpf::maps::PerCpuArray;
use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use relay_common::{
    checksum::ForwardDelta,
    forward::Direction,
    maps::{CONFIG_HAS_V4, CONFIG_HAS_V6, Leg, RelayConfig, Session, SessionLimits, SessionStats},
    verdict::Reason,
    wire::{EthHdr, Ipv4Hdr, Ipv6Hdr, UDP_HLEN, UdpHdr},
};

use crate::{
    Verdict,
    counters::{admit, count_forwarded, jiffies},
    fib::{NextHop, next_hop},
    maps::{REDIRECT, SESSION_STATS},
    rewrite::{self, Original, ip_len_towards},
};

/// A two-leg record a packet crosses: a session, or a WireGuard pair (whose packets leave from
/// the other side's port rather than the session port, and count in the pair's own map).
pub struct Crossing<'a> {
    /// Both legs.
    pub legs: &'a [Leg; 2],
    /// The record's counter slot in `stats`.
    pub slot: u32,
    /// Its rate limits per direction.
    pub limits: &'a SessionLimits,
    /// Source port of the forwarded packet, raw network order.
    pub from_port: u16,
    /// Its fast-path counters.
    pub stats: &'static PerCpuArray<SessionStats>,
    /// The checksum deltas of forwarding towards each leg, where the record has them (a
    /// session's slot entry of this build); else the changed words are summed per packet.
    pub deltas: Option<&'a [ForwardDelta; 2]>,
}

impl<'a> Crossing<'a> {
    /// A session of the session protocol: packets leave from the session port. Its checksum
    /// deltas, if any, are the slot entry's (they assume exactly that: the packet arrived at
    /// the relay's address and session port and leaves from them).
    #[inline(always)]
    pub fn session(
        session: &'a Session,
        deltas: Option<&'a [ForwardDelta; 2]>,
        cfg: &RelayConfig,
    ) -> Crossing<'a> {
        Crossing {
            legs: &session.legs,
            slot: session.slot,
            limits: &session.limits,
            from_port: cfg.port,
            stats: &SESSION_STATS,
            deltas,
        }
    }

    /// The checksum delta of forwarding in direction `dir`, or zeros.
    #[inline(always)]
    fn delta(&self, dir: Direction) -> ForwardDelta {
        match self.deltas {
            Some(deltas) => deltas[dir.to & 1],
            None => ForwardDelta::default(),
        }
    }
}

/// Forwards an IPv4 packet of `session` in direction `dir`.
#[inline(always)]
pub fn from_v4(
    ctx: &XdpContext,
    cfg: &RelayConfig,
    session: &Crossing,
    dir: Direction,
    eth: &mut EthHdr,
    ip: &mut Ipv4Hdr,
    udp: &mut UdpHdr,
) -> Verdict {
    let to = &session.legs[dir.to & 1];
    let udp_len = udp.len;
    let now = jiffies();
    let hop = route(ctx, cfg, to, u16::from_be(udp_len), udp.check, now)?;
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
        rewrite::v4_to_v6(ctx, &old, cfg, to, &hop, session.from_port)?;
    } else {
        rewrite::v4_to_v4(
            eth,
            ip,
            udp,
            cfg,
            to,
            &hop,
            session.from_port,
            session.delta(dir),
        );
    }
    forwarded(session, dir, to, &hop, udp_len, false, now)
}

/// Forwards an IPv6 packet of `session` in direction `dir`.
#[inline(always)]
pub fn from_v6(
    ctx: &XdpContext,
    cfg: &RelayConfig,
    session: &Crossing,
    dir: Direction,
    eth: &mut EthHdr,
    ip: &mut Ipv6Hdr,
    udp: &mut UdpHdr,
) -> Verdict {
    let to = &session.legs[dir.to & 1];
    let udp_len = udp.len;
    let now = jiffies();
    let hop = route(ctx, cfg, to, u16::from_be(udp_len), udp.check, now)?;
    within_limits(cfg, session, dir, udp_len, now)?;
    if to.is_v6() {
        rewrite::v6_to_v6(
            eth,
            ip,
            udp,
            cfg,
            to,
            &hop,
            session.from_port,
            session.delta(dir),
        );
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
        rewrite::v6_to_v4(ctx, &old, cfg, to, &hop, session.from_port)?;
    }
    forwarded(session, dir, to, &hop, udp_len, true, now)
}

/// Checks the destination leg is reachable by the fast path (its family configured, a
/// checksum it can carry, not the relay itself: that last when the route is looked up) and
/// finds its next hop for an outgoing UDP
/// length `udp_len` (host order).
#[inline(always)]
pub fn route(
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
    } else {
        if !cfg.has(CONFIG_HAS_V4) {
            return Err(Reason::PassedFibFailed);
        }
    }
    let hop = next_hop(ctx, cfg, to, ip_len_towards(to, udp_len), now)?;
    if !hop.back_out && REDIRECT.get_ifindex(hop.ifindex).is_none() {
        return Err(Reason::PassedRedirectFailed);
    }
    Ok(hop)
}

/// XDP_TX back out of the ingress interface, or XDP_REDIRECT to the egress one.
#[inline(always)]
pub fn transmit(hop: &NextHop) -> u32 {
    if hop.back_out {
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
    session: &Crossing,
    dir: Direction,
    to: &Leg,
    hop: &NextHop,
    udp_len: u16,
    from_v6: bool,
    now: u64,
) -> Verdict {
    count_forwarded(
        session.stats,
        session.slot,
        dir.from,
        u16::from_be(udp_len) as usize - UDP_HLEN,
        now,
    );
    Ok((transmit(hop), Reason::forwarded(from_v6, to.is_v6())))
}

/// The session's rate limits for a packet of UDP length `udp_len` (network order) from
/// `dir.from`.
#[inline(always)]
fn within_limits(
    cfg: &RelayConfig,
    session: &Crossing,
    dir: Direction,
    udp_len: u16,
    now: u64,
) -> Result<(), Reason> {
    let payload_len = (u16::from_be(udp_len) as usize).saturating_sub(UDP_HLEN);
    if admit(
        cfg,
        session.stats,
        session.slot,
        session.limits,
        dir.from,
        payload_len,
        now,
    ) {
        Ok(())
    } else {
        Err(Reason::DroppedRateLimited)
    }
}
