//! Stock WireGuard's part of the program: transport data that arrives on one side's port of a
//! pair, from that side's bound leg, goes to the other side's leg from the other side's port
//! (`relay_common::wireguard::decide`, the rule userspace applies too). Handshake messages and
//! data from anyone else go up to the daemon, which learns and moves legs from them; anything
//! that is not a WireGuard message is dropped.

use aya_ebpf::programs::XdpContext;
use relay_common::{
    forward::Direction,
    maps::{RelayConfig, RelayPort},
    verdict::Reason,
    wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, UdpHdr},
    wireguard::{DATA_HLEN, Message, WireGuardPair, classify_header, decide},
};

use crate::{
    Verdict,
    forward::{self, Crossing},
    maps::{SESSION_STATS, WIREGUARD_PAIRS},
    packet::ptr_at,
    parse::{Packet, udp_payload_len},
};

/// Relays `packet`, which arrived on `owner`'s port (a side of a pair).
#[inline(always)]
pub fn relay(ctx: &XdpContext, cfg: &RelayConfig, packet: Packet, owner: &RelayPort) -> Verdict {
    let side = (owner.side & 1) as usize;
    let pair = WIREGUARD_PAIRS
        .get_ptr(owner.slot)
        .ok_or(Reason::PassedNotOurPort)?;
    // SAFETY: array values live as long as the map. Userspace rewrites a pair only while its
    // `id` is 0 and changes `id` alone otherwise: a read with a nonzero id sees one version.
    let pair = unsafe { &*pair };
    if pair.id == 0 {
        // Being rewritten (for microseconds) or gone: userspace applies the same rule.
        return Err(Reason::PassedWireGuardUnbound);
    }
    match packet {
        Packet::V4 { eth, ip, udp } => {
            let ip_len = u16::from_be(ip.tot_len) as usize;
            if ip_len < IPV4_HLEN {
                return Err(Reason::DroppedWireGuardInvalid);
            }
            let message = message_of(ctx, IPV4_HLEN, ip_len - IPV4_HLEN, udp)?;
            let to = decide(pair, side, &message, |leg| {
                leg.is_v4_source(ip.saddr, udp.source)
            })?;
            let (action, _) = forward::from_v4(
                ctx,
                cfg,
                &crossing(pair, to),
                Direction { from: side, to },
                eth,
                ip,
                udp,
            )?;
            Ok((action, Reason::ForwardedWireGuard))
        }
        Packet::V6 { eth, ip, udp } => {
            let message = message_of(ctx, IPV6_HLEN, u16::from_be(ip.payload_len) as usize, udp)?;
            let to = decide(pair, side, &message, |leg| {
                leg.is_v6_source(&ip.saddr, udp.source)
            })?;
            // A zero checksum is invalid over IPv6 (RFC 8200); the stack decides.
            if udp.check == 0 {
                return Err(Reason::PassedChecksumUnsupported);
            }
            let (action, _) = forward::from_v6(
                ctx,
                cfg,
                &crossing(pair, to),
                Direction { from: side, to },
                eth,
                ip,
                udp,
            )?;
            Ok((action, Reason::ForwardedWireGuard))
        }
    }
}

/// The pair as a two-leg crossing towards side `to`: it leaves from that side's port.
#[inline(always)]
fn crossing(pair: &WireGuardPair, to: usize) -> Crossing<'_> {
    Crossing {
        legs: &pair.legs,
        slot: pair.slot,
        limits: &pair.limits,
        from_port: pair.ports[to & 1],
        stats: &SESSION_STATS,
        deltas: None,
    }
}

/// Checks the UDP length and classifies the payload by its first 16 bytes and its length.
#[inline(always)]
fn message_of(
    ctx: &XdpContext,
    ip_hlen: usize,
    ip_payload_len: usize,
    udp: &UdpHdr,
) -> Result<Message, Reason> {
    let len = udp_payload_len(ctx, ip_hlen, ip_payload_len, udp, DATA_HLEN)
        .map_err(|_| Reason::DroppedWireGuardInvalid)?;
    let head = ptr_at::<[u8; DATA_HLEN]>(ctx, ETH_HLEN + ip_hlen + UDP_HLEN)
        .ok_or(Reason::DroppedWireGuardInvalid)?;
    // SAFETY: bounds-checked by ptr_at.
    Ok(classify_header(unsafe { &*head }, len))
}
