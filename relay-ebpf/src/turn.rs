//! TURN's part of the program (RFC 8656 §12): the bulk of a TURN relay's traffic, ChannelData
//! between a client and a peer on a bound channel, crosses in the kernel.
//!
//! * Client → peer ([`from_client`], the TURN port): ChannelData from a client's 5-tuple on a
//!   channel the daemon installed (it does so only while the channel and its peer's permission
//!   live) loses its 4-byte header and any padding and leaves from the allocation's relayed
//!   port to the peer.
//! * Peer → client ([`from_peer`], an allocation's relayed port): a datagram from a peer
//!   address with a channel gains a ChannelData header and leaves from the TURN port to the
//!   client's 5-tuple.
//!
//! Everything else goes up, counted: STUN (requests, Send indications), a peer with a
//! permission but no channel (userspace sends a Data indication), clients over TCP or TLS,
//! malformed ChannelData (userspace drops it), a peer that is the relay itself, and whatever
//! the rewrite cannot produce. Only two cases are dropped here, with the reasons userspace
//! gives them: ChannelData on a channel nobody bound, and a peer without a permission.
//! Nothing here refreshes anything (data does not keep TURN state alive); the daemon removes
//! entries the moment they expire.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use relay_common::{
    checksum::{UdpCovered, fold, udp_checksum_relayed},
    maps::{Leg, RelayConfig},
    turn::{
        CHANNEL_DATA_HLEN, CLIENT_UDP, ChannelDataHdr, ChannelKey, MAX_FAST_PATH_TRAILER, PeerKey,
        PermissionKey, TO_CLIENT, TO_PEER, ToClient, TurnAllocation, TurnDatagram, to_client,
        trailer_sum,
    },
    verdict::Reason,
    wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, UDP_HLEN},
};

use crate::{
    Verdict,
    counters::{admit, count_forwarded, jiffies},
    forward::{route, transmit},
    maps::{TURN_ALLOCATIONS, TURN_CHANNELS, TURN_PEERS, TURN_PERMISSIONS, TURN_STATS},
    packet::ptr_at,
    parse::{Packet, udp_payload_len},
    rewrite::{Incoming, Outgoing, emit},
};

/// The sender and the UDP payload's length of a TURN datagram.
#[inline(always)]
fn sender(ctx: &XdpContext, packet: &Packet) -> Result<(Leg, usize), Reason> {
    match packet {
        Packet::V4 { ip, udp, .. } => {
            let ip_len = u16::from_be(ip.tot_len) as usize;
            if ip_len < IPV4_HLEN {
                return Err(Reason::DroppedMalformed);
            }
            let len = udp_payload_len(ctx, IPV4_HLEN, ip_len - IPV4_HLEN, udp, 0)?;
            Ok((Leg::from_v4_source(ip.saddr, udp.source), len))
        }
        Packet::V6 { ip, udp, .. } => {
            let len = udp_payload_len(
                ctx,
                IPV6_HLEN,
                u16::from_be(ip.payload_len) as usize,
                udp,
                0,
            )?;
            // A zero checksum is invalid over IPv6 (RFC 8200); the stack decides.
            if udp.check == 0 {
                return Err(Reason::PassedChecksumUnsupported);
            }
            Ok((Leg::from_v6_source(&ip.saddr, udp.source), len))
        }
    }
}

/// The headers' fields a rewrite keeps, read just before it (so they do not occupy the stack
/// across the lookups before).
#[inline(always)]
fn incoming(packet: &Packet) -> Incoming {
    match packet {
        Packet::V4 { ip, udp, .. } => Incoming::v4(ip, udp),
        Packet::V6 { ip, udp, .. } => Incoming::v6(ip, udp),
    }
}

/// The UDP checksum of the incoming datagram.
#[inline(always)]
fn udp_check(packet: &Packet) -> u16 {
    match packet {
        Packet::V4 { udp, .. } | Packet::V6 { udp, .. } => udp.check,
    }
}

/// Length of the incoming IP header.
#[inline(always)]
fn ip_hlen(packet: &Packet) -> usize {
    match packet {
        Packet::V4 { .. } => IPV4_HLEN,
        Packet::V6 { .. } => IPV6_HLEN,
    }
}

/// The UDP datagram from the relay's address of `to`'s family, port `sport`, to `to`, of
/// `udp_len` bytes.
#[inline(always)]
fn towards(cfg: &RelayConfig, to: &Leg, sport: u16, udp_len: usize) -> UdpCovered<8> {
    UdpCovered {
        src: if to.is_v6() {
            cfg.addr_v6
        } else {
            [cfg.addr_v4[0], cfg.addr_v4[1], 0, 0, 0, 0, 0, 0]
        },
        dst: to.addr,
        sport,
        dport: to.port,
        len: (udp_len as u16).to_be(),
    }
}

/// The outgoing UDP checksum; an IPv4 datagram without one (0) stays without (`route` already
/// passed those headed for IPv6, where a checksum is mandatory).
///
/// Not inlined, like [`emit`]: summing 32 address words spills registers, and BPF gives the
/// whole call chain 512 bytes of stack; out of line, the spills live in a frame of their own.
#[inline(never)]
fn relayed_checksum(inc: &Incoming, out: &UdpCovered<8>, removed: u16, added: u16) -> u16 {
    if inc.check == 0 {
        0
    } else {
        udp_checksum_relayed(inc.check, &inc.covered, out, removed, added)
    }
}

/// A datagram on the TURN port, from a client.
#[inline(always)]
pub fn from_client(ctx: &XdpContext, cfg: &RelayConfig, packet: Packet) -> Verdict {
    let (client, payload_len) = sender(ctx, &packet)?;
    let payload_at = ETH_HLEN + ip_hlen(&packet) + UDP_HLEN;
    if payload_len < CHANNEL_DATA_HLEN {
        return Err(Reason::PassedTurnMalformed);
    }
    let header =
        ptr_at::<[u8; CHANNEL_DATA_HLEN]>(ctx, payload_at).ok_or(Reason::PassedTurnMalformed)?;
    // SAFETY: bounds-checked by ptr_at.
    let header = unsafe { *header };
    let (channel, len) = match TurnDatagram::from_header(header, payload_len) {
        TurnDatagram::ChannelData { channel, len } => (channel, len),
        TurnDatagram::Stun => return Err(Reason::PassedTurnStun),
        TurnDatagram::Malformed => return Err(Reason::PassedTurnMalformed),
    };
    let key = ChannelKey {
        client,
        channel: channel.to_be(),
        transport: CLIENT_UDP,
        reserved: 0,
    };
    let binding = TURN_CHANNELS
        .get_ptr(&key)
        .ok_or(Reason::DroppedTurnUnknownChannel)?;
    // SAFETY: map values stay valid for the whole program run (RCU).
    let binding = unsafe { &*binding };
    let allocation = allocation(binding.slot)?;
    let trailer = payload_len - CHANNEL_DATA_HLEN - len;
    if trailer > MAX_FAST_PATH_TRAILER {
        return Err(Reason::PassedTurnTrailer);
    }
    let peer = &binding.peer;
    let udp_len = UDP_HLEN + len;
    let now = jiffies();
    let hop = route(ctx, cfg, peer, udp_len as u16, udp_check(&packet), now)?;
    if !admit(
        cfg,
        &TURN_STATS,
        allocation.slot,
        &allocation.limits,
        TO_PEER,
        len,
        now,
    ) {
        return Err(Reason::DroppedRateLimited);
    }
    // What leaves the checksum: the ChannelData header and the padding's bytes.
    let mut removed = fold(
        u16::from_ne_bytes([header[0], header[1]]) as u32
            + u16::from_ne_bytes([header[2], header[3]]) as u32,
    );
    if trailer > 0 {
        let mut window = [0u8; 4];
        let at = payload_at + payload_len - 4;
        // SAFETY: the helper checks the offset against the frame; `window` is 4 bytes.
        let read =
            unsafe { bpf_xdp_load_bytes(ctx.ctx, at as u32, window.as_mut_ptr() as *mut _, 4) };
        if read != 0 {
            return Err(Reason::PassedTurnMalformed);
        }
        removed = fold(removed as u32 + trailer_sum(window, trailer, payload_len - 4) as u32);
    }
    let inc = incoming(&packet);
    let covered = towards(cfg, peer, allocation.relay_port, udp_len);
    let out = Outgoing {
        check: relayed_checksum(&inc, &covered, removed, 0),
        covered,
        v6: peer.is_v6(),
        ttl: if peer.is_v6() { cfg.hop_limit } else { cfg.ttl },
        channel: None,
    };
    let before = inc.ip_hlen() + UDP_HLEN + CHANNEL_DATA_HLEN;
    emit(ctx, before, &inc, &out, &hop)?;
    count_forwarded(&TURN_STATS, allocation.slot, TO_PEER, len, now);
    Ok((transmit(ctx, &hop), Reason::ForwardedTurnToPeer))
}

/// A datagram to the relayed port of the allocation in `slot`, from a peer.
#[inline(always)]
pub fn from_peer(ctx: &XdpContext, cfg: &RelayConfig, packet: Packet, slot: u32) -> Verdict {
    let (peer, len) = sender(ctx, &packet)?;
    let allocation = allocation(slot)?;
    if allocation.transport != CLIENT_UDP {
        return Err(Reason::PassedTurnStream);
    }
    let channel = TURN_PEERS
        .get_ptr(&PeerKey { peer, slot })
        // SAFETY: map values stay valid for the whole program run (RCU).
        .map(|c| u16::from_be(unsafe { (*c).channel }));
    let permitted = channel.is_none()
        && TURN_PERMISSIONS
            .get_ptr(&PermissionKey {
                addr: peer.addr,
                family: peer.family,
                reserved: [0; 3],
                slot,
            })
            .is_some();
    let channel = match to_client(channel, permitted)? {
        ToClient::Channel(c) => c,
        ToClient::Indication => return Err(Reason::PassedTurnNoChannel),
    };
    let client = &allocation.client;
    let udp_len = UDP_HLEN + CHANNEL_DATA_HLEN + len;
    let now = jiffies();
    let hop = route(ctx, cfg, client, udp_len as u16, udp_check(&packet), now)?;
    if !admit(
        cfg,
        &TURN_STATS,
        slot,
        &allocation.limits,
        TO_CLIENT,
        len,
        now,
    ) {
        return Err(Reason::DroppedRateLimited);
    }
    let header = ChannelDataHdr::new(channel, len as u16);
    let added = fold(header.channel as u32 + header.len as u32);
    let inc = incoming(&packet);
    let covered = towards(cfg, client, allocation.server_port, udp_len);
    let out = Outgoing {
        check: relayed_checksum(&inc, &covered, 0, added),
        covered,
        v6: client.is_v6(),
        ttl: if client.is_v6() {
            cfg.hop_limit
        } else {
            cfg.ttl
        },
        channel: Some(header),
    };
    emit(ctx, inc.ip_hlen() + UDP_HLEN, &inc, &out, &hop)?;
    count_forwarded(&TURN_STATS, slot, TO_CLIENT, len, now);
    Ok((transmit(ctx, &hop), Reason::ForwardedTurnToClient))
}

/// The allocation in `slot`.
#[inline(always)]
fn allocation(slot: u32) -> Result<&'static TurnAllocation, Reason> {
    let allocation = TURN_ALLOCATIONS
        .get_ptr(&slot)
        .ok_or(Reason::DroppedTurnNoAllocation)?;
    // SAFETY: map values stay valid for the whole program run (RCU).
    Ok(unsafe { &*allocation })
}
