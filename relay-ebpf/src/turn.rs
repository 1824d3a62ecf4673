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
    checksum::{UdpCovered, fold, ipv4_header_valid, udp_checksum_relayed},
    maps::{Leg, RelayConfig},
    turn::{
        CHANNEL_DATA_HLEN, CLIENT_UDP, ChannelDataHdr, ChannelKey, FRONT_TURN,
        MAX_FAST_PATH_TRAILER, PeerKey, PermissionKey, TO_CLIENT, TO_PEER, ToClient,
        TurnAllocation, TurnDatagram, port_owner_index, to_client, trailer_sum,
    },
    verdict::Reason,
    wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, UDP_HLEN},
};

use crate::{
    Verdict,
    counters::{admit, count_forwarded, jiffies},
    forward::{route, transmit},
    maps::{
        PORT_OWNERS, TURN_ALLOCATIONS, TURN_CHANNELS, TURN_PEERS, TURN_PERMISSIONS, TURN_SCRATCH,
        TURN_STATS,
    },
    packet::ptr_at,
    parse::{Packet, udp_payload_len},
    rewrite::{Incoming, Outgoing, emit},
};

/// Per-CPU working memory of the TURN paths ([`TURN_SCRATCH`]): their map keys and the headers
/// they write. On the stack these would not fit beside the spills of a path this long (BPF
/// allows 512 bytes); in a map value they cost one lookup.
pub struct TurnScratch {
    channel_key: ChannelKey,
    peer_key: PeerKey,
    permission_key: PermissionKey,
    inc: Incoming,
    out: Outgoing,
}

/// This CPU's [`TurnScratch`].
#[inline(always)]
fn scratch() -> Result<&'static mut TurnScratch, Reason> {
    let scratch = TURN_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Reason::PassedNotConfigured)?;
    // SAFETY: per-CPU value; nothing else runs on this CPU while the program does.
    Ok(unsafe { &mut *scratch })
}

/// The UDP payload's length of a TURN datagram; its sender goes into `from`, which is part of
/// a map key: written to memory in each arm, the address words are not carried in registers
/// past the branch (where they would spill into the 512-byte stack).
#[inline(always)]
fn sender(ctx: &XdpContext, packet: &Packet, from: &mut Leg) -> Result<usize, Reason> {
    match packet {
        Packet::V4 { ip, udp, .. } => {
            let ip_len = u16::from_be(ip.tot_len) as usize;
            if ip_len < IPV4_HLEN {
                return Err(Reason::DroppedMalformed);
            }
            // The header is rebuilt, not updated: a damaged one must not come out repaired.
            // SAFETY: Ipv4Hdr is 20 bytes of u8/u16 fields without padding: ten words.
            if !ipv4_header_valid(unsafe { &*(&**ip as *const Ipv4Hdr as *const [u16; 10]) }) {
                return Err(Reason::PassedMalformed);
            }
            let len = udp_payload_len(ctx, IPV4_HLEN, ip_len - IPV4_HLEN, udp, 0)?;
            *from = Leg::from_v4_source(ip.saddr, udp.source);
            Ok(len)
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
            *from = Leg::from_v6_source(&ip.saddr, udp.source);
            Ok(len)
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
    let scratch = scratch()?;
    let key = &mut scratch.channel_key;
    key.transport = CLIENT_UDP;
    key.reserved = 0;
    let payload_len = sender(ctx, &packet, &mut key.client)?;
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
    key.channel = channel.to_be();
    let binding = TURN_CHANNELS
        .get_ptr(&*key)
        .ok_or(Reason::DroppedTurnUnknownChannel)?;
    // SAFETY: map values stay valid for the whole program run (RCU).
    let binding = unsafe { &*binding };
    let allocation = allocation(binding.slot)?;
    let trailer = payload_len - CHANNEL_DATA_HLEN - len;
    if trailer > MAX_FAST_PATH_TRAILER {
        return Err(Reason::PassedTurnTrailer);
    }
    // Both clients on this relay (WebRTC does this often): the peer is another allocation's
    // relayed address. XDP cannot hand the frame to its own host, so when that allocation has
    // a channel for this one, the frame goes straight to its client; otherwise userspace
    // relays it through the sockets.
    let peer = &binding.peer;
    let between = if is_own(cfg, peer) {
        Some(between_clients(
            peer,
            allocation.relay_port,
            len,
            &mut scratch.peer_key,
        )?)
    } else {
        None
    };
    let (to, sport, channel_out) = match &between {
        Some((other, header)) => (&other.client, other.server_port, Some(*header)),
        None => (peer, allocation.relay_port, None),
    };
    let udp_len = UDP_HLEN
        + len
        + if between.is_some() {
            CHANNEL_DATA_HLEN
        } else {
            0
        };
    let now = jiffies();
    let hop = route(ctx, cfg, to, udp_len as u16, udp_check(&packet), now)?;
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
    if let Some((other, _)) = &between
        && !admit(
            cfg,
            &TURN_STATS,
            other.slot,
            &other.limits,
            TO_CLIENT,
            len,
            now,
        )
    {
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
    let added = channel_out.map_or(0, |h| fold(h.channel as u32 + h.len as u32));
    scratch.inc = incoming(&packet);
    scratch.out = Outgoing {
        covered: towards(cfg, to, sport, udp_len),
        v6: to.is_v6(),
        ttl: if to.is_v6() { cfg.hop_limit } else { cfg.ttl },
        check: 0,
        channel: channel_out,
    };
    scratch.out.check = relayed_checksum(&scratch.inc, &scratch.out.covered, removed, added);
    let before = scratch.inc.ip_hlen() + UDP_HLEN + CHANNEL_DATA_HLEN;
    emit(ctx, before, &scratch.inc, &scratch.out, &hop)?;
    count_forwarded(&TURN_STATS, allocation.slot, TO_PEER, len, now);
    let reason = match &between {
        Some((other, _)) => {
            count_forwarded(&TURN_STATS, other.slot, TO_CLIENT, len, now);
            Reason::ForwardedTurnBetweenClients
        }
        None => Reason::ForwardedTurnToPeer,
    };
    Ok((transmit(&hop), reason))
}

/// Whether `peer` is the relay's own address (of its family).
#[inline(always)]
fn is_own(cfg: &RelayConfig, peer: &Leg) -> bool {
    if peer.is_v6() {
        peer.is_v6_source(&cfg.addr_v6, peer.port)
    } else {
        peer.is_v4_source(cfg.addr_v4, peer.port)
    }
}

/// The allocation whose relayed address `peer` is, when it has a channel for data sent from
/// relayed port `from_port` (of the same address): that allocation and the ChannelData header
/// for `len` bytes to its client. Any other case (a port that is no allocation's, a stream
/// client, only a permission, none) is userspace's.
#[inline(always)]
fn between_clients(
    peer: &Leg,
    from_port: u16,
    len: usize,
    key: &mut PeerKey,
) -> Result<(&'static TurnAllocation, ChannelDataHdr), Reason> {
    let owner = PORT_OWNERS
        .get_ptr(port_owner_index(peer.port))
        .ok_or(Reason::PassedHairpin)?;
    // SAFETY: array values live as long as the map; see `port_owner` for torn reads.
    let owner = unsafe { &*owner };
    if owner.front != FRONT_TURN {
        return Err(Reason::PassedHairpin);
    }
    let other = allocation(owner.slot).map_err(|_| Reason::PassedHairpin)?;
    if other.transport != CLIENT_UDP {
        return Err(Reason::PassedHairpin);
    }
    key.peer = Leg {
        port: from_port,
        ..*peer
    };
    key.slot = owner.slot;
    let channel = TURN_PEERS.get_ptr(key).ok_or(Reason::PassedHairpin)?;
    // SAFETY: map values stay valid for the whole program run (RCU).
    let channel = u16::from_be(unsafe { (*channel).channel });
    Ok((other, ChannelDataHdr::new(channel, len as u16)))
}

/// A datagram to the relayed port of the allocation in `slot`, from a peer.
#[inline(always)]
pub fn from_peer(ctx: &XdpContext, cfg: &RelayConfig, packet: Packet, slot: u32) -> Verdict {
    let scratch = scratch()?;
    let key = &mut scratch.peer_key;
    key.slot = slot;
    let len = sender(ctx, &packet, &mut key.peer)?;
    let allocation = allocation(slot)?;
    if allocation.transport != CLIENT_UDP {
        return Err(Reason::PassedTurnStream);
    }
    let channel = TURN_PEERS
        .get_ptr(&*key)
        // SAFETY: map values stay valid for the whole program run (RCU).
        .map(|c| u16::from_be(unsafe { (*c).channel }));
    let permitted = channel.is_none() && {
        let permission = &mut scratch.permission_key;
        permission.addr = key.peer.addr;
        permission.family = key.peer.family;
        permission.reserved = [0; 3];
        permission.slot = slot;
        TURN_PERMISSIONS.get_ptr(permission).is_some()
    };
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
    scratch.inc = incoming(&packet);
    scratch.out = Outgoing {
        covered: towards(cfg, client, allocation.server_port, udp_len),
        v6: client.is_v6(),
        ttl: if client.is_v6() {
            cfg.hop_limit
        } else {
            cfg.ttl
        },
        check: 0,
        channel: Some(header),
    };
    scratch.out.check = relayed_checksum(&scratch.inc, &scratch.out.covered, 0, added);
    let before = scratch.inc.ip_hlen() + UDP_HLEN;
    emit(ctx, before, &scratch.inc, &scratch.out, &hop)?;
    count_forwarded(&TURN_STATS, slot, TO_CLIENT, len, now);
    Ok((transmit(&hop), Reason::ForwardedTurnToClient))
}

/// The allocation in `slot`.
#[inline(always)]
fn allocation(slot: u32) -> Result<&'static TurnAllocation, Reason> {
    let allocation = TURN_ALLOCATIONS
        .get_ptr(slot)
        .ok_or(Reason::DroppedTurnNoAllocation)?;
    // SAFETY: array values live as long as the map. Userspace changes a record only while its
    // `live` is 0, and `live` alone otherwise: a read sees one allocation, or none.
    let allocation = unsafe { &*allocation };
    if allocation.live == 0 {
        return Err(Reason::DroppedTurnNoAllocation);
    }
    Ok(allocation)
}
