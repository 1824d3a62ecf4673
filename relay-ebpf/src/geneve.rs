//! The session protocol's part of the program: a Geneve data packet from one bound leg of a
//! session goes to the session's other leg; a control packet (the bind handshake) goes to the
//! daemon; anything else on the session port is dropped with its reason.

use aya_ebpf::programs::XdpContext;
use relay_common::{
    checksum::ForwardDelta,
    forward::{decide_v4, decide_v6},
    geneve::{GENEVE_HLEN, GeneveHdr},
    maps::{RelayConfig, Session, vni_slot},
    verdict::Reason,
    wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, UdpHdr},
};

use crate::{
    Verdict,
    forward::{self, Crossing},
    maps::{SESSION_SLOTS, SESSIONS},
    packet::ptr_at,
    parse::{Packet, udp_payload_len},
};

/// Relays `packet`, which arrived on the session port.
#[inline(always)]
pub fn relay(ctx: &XdpContext, cfg: &RelayConfig, packet: Packet) -> Verdict {
    match packet {
        Packet::V4 { eth, ip, udp } => {
            let ip_len = u16::from_be(ip.tot_len) as usize;
            if ip_len < IPV4_HLEN {
                return Err(Reason::DroppedMalformed);
            }
            let vni = vni_of(ctx, IPV4_HLEN, ip_len - IPV4_HLEN, udp)?;
            let (session, deltas) = session_of(cfg, vni)?;
            let dir = decide_v4(session, ip.saddr, udp.source)?;
            forward::from_v4(
                ctx,
                cfg,
                &Crossing::session(session, deltas, cfg),
                dir,
                eth,
                ip,
                udp,
            )
        }
        Packet::V6 { eth, ip, udp } => {
            let vni = vni_of(ctx, IPV6_HLEN, u16::from_be(ip.payload_len) as usize, udp)?;
            // A zero checksum is invalid over IPv6 (RFC 8200); the stack decides (and normally
            // drops).
            if udp.check == 0 {
                return Err(Reason::PassedChecksumUnsupported);
            }
            let (session, deltas) = session_of(cfg, vni)?;
            let dir = decide_v6(session, &ip.saddr, udp.source)?;
            forward::from_v6(
                ctx,
                cfg,
                &Crossing::session(session, deltas, cfg),
                dir,
                eth,
                ip,
                udp,
            )
        }
    }
}

/// Checks the UDP length, then reads the Geneve header: the VNI of a data packet.
#[inline(always)]
fn vni_of(
    ctx: &XdpContext,
    ip_hlen: usize,
    ip_payload_len: usize,
    udp: &UdpHdr,
) -> Result<u32, Reason> {
    udp_payload_len(ctx, ip_hlen, ip_payload_len, udp, GENEVE_HLEN)?;
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

/// A session and, where its record has them, its checksum deltas.
type Found = (&'static Session, Option<&'static [ForwardDelta; 2]>);

/// The session a VNI names: the record in the slot its low bits index, if it serves this VNI,
/// else (a session adopted from an earlier build, whose VNI names no slot) the hash map's.
#[inline(always)]
fn session_of(cfg: &RelayConfig, vni: u32) -> Result<Found, Reason> {
    if let Some(entry) = SESSION_SLOTS.get_ptr(vni_slot(vni, cfg.session_slot_bits)) {
        // SAFETY: array values live as long as the map. Userspace may rewrite the slot while
        // this runs; it does so in steps (`dataplane::slot_writes`) such that whatever mix of
        // two consecutive steps is read forwards only where one of them would, or nowhere —
        // and with the deltas of the legs it forwards between (they change with the legs).
        let entry = unsafe { &*entry };
        // A free slot's record has VNI 0, which is never allocated: it must not match.
        if entry.session.vni == vni && vni != 0 {
            return Ok((&entry.session, Some(&entry.deltas)));
        }
    }
    let session = SESSIONS.get_ptr(vni).ok_or(Reason::DroppedUnknownVni)?;
    // SAFETY: hash map values stay valid for the whole program run (RCU).
    Ok((unsafe { &*session }, None))
}
