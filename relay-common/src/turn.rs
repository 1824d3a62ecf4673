//! TURN (RFC 8656, RFC 5766 before it) as the XDP program and the daemon share it: the
//! ChannelData framing, channel-number ranges, how a datagram on the TURN port is told apart
//! (STUN message or ChannelData), and the maps that describe allocations, their permissions and
//! channels. The daemon is the only writer of these maps; they are also what a restarted daemon
//! adopts allocations from.
//!
//! ```text
//! ChannelData:  0                   1                   2                   3
//!               0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//!              +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!              |         Channel Number        |            Length             |
//!              +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!              /                 Application Data (Length bytes)               /
//!              +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Over UDP the datagram may carry padding after the data (up to a multiple of 4, as RFC 5766
//! clients such as coturn's do with `-D`): `Length` bytes are relayed and the rest ignored.
//! Over TCP the padding is mandatory, since it frames the next message.

pub use crate::maps::{
    PORT_OWNER_ENTRIES, PORT_OWNERS, RELAY_PORTS, RelayPort, RelayPortKey, port_owner_index,
};
use crate::{
    maps::{Leg, SessionLimits},
    verdict::Reason,
};

/// STUN message header length.
pub const STUN_HLEN: usize = 20;
/// STUN magic cookie (bytes 4..8 of every RFC 5389+ message).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
/// ChannelData header length.
pub const CHANNEL_DATA_HLEN: usize = 4;
/// Lowest channel number.
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest channel number a client may bind under RFC 5766 (coturn's test client picks from the
/// whole range).
pub const CHANNEL_MAX_RFC5766: u16 = 0x7FFF;
/// Highest channel number a client may bind under RFC 8656 (the strict option).
pub const CHANNEL_MAX_RFC8656: u16 = 0x4FFF;

/// ChannelData header, overlaid on packet memory by the XDP program (raw network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelDataHdr {
    /// Channel number, network order.
    pub channel: u16,
    /// Length of the application data, network order (padding excluded).
    pub len: u16,
}

impl ChannelDataHdr {
    /// A header for `len` bytes on `channel`.
    pub const fn new(channel: u16, len: u16) -> ChannelDataHdr {
        ChannelDataHdr {
            channel: channel.to_be(),
            len: len.to_be(),
        }
    }

    /// The channel number.
    #[inline(always)]
    pub const fn channel(&self) -> u16 {
        u16::from_be(self.channel)
    }

    /// The application data's length.
    #[inline(always)]
    pub const fn len(&self) -> usize {
        u16::from_be(self.len) as usize
    }

    /// Whether no application data follows.
    #[inline(always)]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 4 bytes as they go on the wire.
    pub const fn to_bytes(&self) -> [u8; CHANNEL_DATA_HLEN] {
        let c = self.channel().to_be_bytes();
        let l = (self.len() as u16).to_be_bytes();
        [c[0], c[1], l[0], l[1]]
    }
}

/// `len` rounded up to a multiple of 4 (ChannelData padding over TCP).
#[inline(always)]
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// How a datagram received on the TURN port classifies, before any lookup. Both paths use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnDatagram {
    /// A STUN message (the two top bits are 0): requests and indications for the server.
    Stun,
    /// ChannelData on `channel` carrying `len` bytes (which fit the datagram).
    ChannelData {
        /// Channel number (0x4000–0x7FFF).
        channel: u16,
        /// Application data length.
        len: usize,
    },
    /// Too short, a length that does not fit the datagram, or neither STUN nor ChannelData.
    Malformed,
}

impl TurnDatagram {
    /// Classifies a UDP payload received on the TURN port.
    pub fn classify(payload: &[u8]) -> TurnDatagram {
        match payload {
            [a, b, c, d, ..] => TurnDatagram::from_header([*a, *b, *c, *d], payload.len()),
            _ => TurnDatagram::Malformed,
        }
    }

    /// Classifies a UDP payload of `payload_len` bytes (at least 4) from its first four bytes:
    /// what the XDP program reads.
    #[inline(always)]
    pub const fn from_header(first: [u8; CHANNEL_DATA_HLEN], payload_len: usize) -> TurnDatagram {
        match first[0] >> 6 {
            0 if payload_len >= STUN_HLEN => TurnDatagram::Stun,
            1 => {
                let channel = u16::from_be_bytes([first[0], first[1]]);
                let len = u16::from_be_bytes([first[2], first[3]]) as usize;
                if CHANNEL_DATA_HLEN + len > payload_len {
                    TurnDatagram::Malformed
                } else {
                    TurnDatagram::ChannelData { channel, len }
                }
            }
            _ => TurnDatagram::Malformed,
        }
    }
}

/// How a peer's datagram to an allocation's relayed port reaches the client, on both paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToClient {
    /// As ChannelData on this channel (the fast path's case).
    Channel(u16),
    /// In a Data indication: the peer has a permission but no channel. Userspace builds it
    /// (the kernel passes the datagram up as `passed_turn_no_channel`).
    Indication,
}

/// Decides a peer's datagram from the peer's channel (if its address has one) and whether its
/// IP has a permission. Nothing else about the peer matters, and nothing is refreshed.
#[inline(always)]
pub const fn to_client(channel: Option<u16>, permitted: bool) -> Result<ToClient, Reason> {
    match (channel, permitted) {
        (Some(c), _) => Ok(ToClient::Channel(c)),
        (None, true) => Ok(ToClient::Indication),
        (None, false) => Err(Reason::DroppedTurnNoPermission),
    }
}

/// Most bytes after a ChannelData's data (padding) the fast path strips; it passes a datagram
/// with more to userspace (which relays it just the same).
pub const MAX_FAST_PATH_TRAILER: usize = 3;

/// The one's complement sum (raw) of the last `trailer` bytes of `window`, the four bytes that
/// end a UDP payload and start at payload offset `window_offset`: what removing those bytes
/// takes out of the UDP checksum. A byte at an even offset is the high byte of its 16-bit word,
/// one at an odd offset the low byte (network order, raw).
#[inline(always)]
pub const fn trailer_sum(window: [u8; 4], trailer: usize, window_offset: usize) -> u16 {
    let mut acc = 0u32;
    let mut j = 0;
    while j < 4 {
        if j + trailer >= 4 {
            let b = window[j];
            acc += if (window_offset + j) & 1 == 0 {
                u16::from_ne_bytes([b, 0])
            } else {
                u16::from_ne_bytes([0, b])
            } as u32;
        }
        j += 1;
    }
    crate::checksum::fold(acc)
}

/// `ARRAY` allocation slot → [`TurnAllocation`]: what the fast path needs; a free slot's record
/// has [`TurnAllocation::live`] 0. An array (the program indexes it by the slot its port or
/// channel names, where a hash lookup cost it as much as a rewrite), written only by userspace
/// in steps (`live` cleared first, set last) so no torn read mixes two allocations.
pub const TURN_ALLOCATIONS: &str = "turn_slots";
/// `HASH` allocation slot → [`TurnAllocation`]: what [`TURN_ALLOCATIONS`] holds, as builds
/// before it kept it. A daemon that finds it pinned copies it over and removes it.
pub const LEGACY_TURN_ALLOCATIONS: &str = "turn_allocs";
/// `HASH` allocation slot → [`TurnAllocationMeta`]: the rest of the daemon's record (userspace
/// only; kept in bpffs so a restarted daemon adopts allocations).
pub const TURN_ALLOCATION_META: &str = "turn_alloc_meta";
/// `HASH` [`ChannelKey`] → [`ChannelBinding`]: a channel as ChannelData from its client names
/// it. Present only while both the channel and its peer's permission are live.
pub const TURN_CHANNELS: &str = "turn_channels";
/// `HASH` [`PeerKey`] → [`PeerChannel`]: the channel of a peer address, for its datagrams to the
/// relayed port. Present exactly when the [`TURN_CHANNELS`] entry is.
pub const TURN_PEERS: &str = "turn_peers";
/// `HASH` [`PermissionKey`] → [`Permission`]: installed permissions.
pub const TURN_PERMISSIONS: &str = "turn_perms";
/// `PERCPU_ARRAY` allocation slot → [`crate::maps::SessionStats`] of the fast path (index 0:
/// client → peer, 1: peer → client).
pub const TURN_STATS: &str = "turn_stats";
/// `ARRAY` allocation slot → [`crate::maps::SessionStats`] of the userspace path, flushed by
/// the daemon.
pub const TURN_USERSPACE_STATS: &str = "turn_user_stats";
/// `ARRAY` with one [`TurnKeys`]: secrets that must outlive a daemon (userspace only).
pub const TURN_KEYS: &str = "turn_keys";

/// Default number of TURN allocations (and of allocation slots).
pub const DEFAULT_MAX_ALLOCATIONS: u32 = 16_384;
/// Capacity of [`TURN_CHANNELS`], [`TURN_PEERS`] and [`TURN_PERMISSIONS`] for the default
/// allocation count (the daemon sizes them from its configuration).
pub const DEFAULT_MAX_TURN_BINDINGS: u32 = 65_536;

/// [`RelayPort::front`]: a TURN allocation's relayed port (peers' datagrams; the slot names
/// the allocation).
pub const FRONT_TURN: u8 = 1;
/// [`RelayPort::front`]: the TURN server's own port (clients' ChannelData and STUN; the slot
/// is 0).
pub const FRONT_TURN_SERVER: u8 = 2;

/// Direction index in TURN counters: client → peer.
pub const TO_PEER: usize = 0;
/// Direction index in TURN counters: peer → client.
pub const TO_CLIENT: usize = 1;

/// [`TurnAllocation::families`]: relays over IPv4.
pub const RELAYED_V4: u8 = 1 << 0;
/// [`TurnAllocation::families`]: relays over IPv6.
pub const RELAYED_V6: u8 = 1 << 1;

/// [`TurnAllocation::transport`] of a client over UDP (the only one the fast path serves).
pub const CLIENT_UDP: u8 = 17;
/// [`TurnAllocation::transport`] of a client over TCP.
pub const CLIENT_TCP: u8 = 6;
/// [`TurnAllocation::transport`] of a client over TLS.
pub const CLIENT_TLS: u8 = 56;

/// A TURN allocation as the fast path sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnAllocation {
    /// The client's address and port (its 5-tuple with the TURN port of its family).
    pub client: Leg,
    /// Relayed port (the same on both families), raw network order.
    pub relay_port: u16,
    /// [`RELAYED_V4`] | [`RELAYED_V6`].
    pub families: u8,
    /// [`CLIENT_UDP`], [`CLIENT_TCP`] or [`CLIENT_TLS`].
    pub transport: u8,
    /// Index into [`TURN_STATS`] and [`TURN_USERSPACE_STATS`]; also the map key.
    pub slot: u32,
    /// Rate limits per direction.
    pub limits: SessionLimits,
    /// The TURN port the client talks to (its 5-tuple's server side; the relay's address of
    /// the client's family is the other half), raw network order: where ChannelData to the
    /// client comes from.
    pub server_port: u16,
    /// 1 while this is an allocation's record, 0 in a free slot of [`TURN_ALLOCATIONS`] (the
    /// program ignores the rest of the record then). Was reserved (0) in the hash map of
    /// earlier builds.
    pub live: u16,
}

/// Longest username an allocation's record keeps (longer ones are refused at Allocate).
pub const META_USERNAME_LEN: usize = 128;

/// The daemon's record of an allocation beyond the fast path's view. Strings are UTF-8,
/// zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnAllocationMeta {
    /// When it was allocated, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it expires unless refreshed, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// The username that authenticated it (its requests must keep using it).
    pub username: [u8; META_USERNAME_LEN],
    /// Whether the key of `username` is SHA-256 (1) or MD5 (0): the integrity it authenticated
    /// with.
    pub sha256: u8,
    /// Reserved, zero.
    pub reserved: [u8; 7],
}

impl Default for TurnAllocationMeta {
    fn default() -> Self {
        TurnAllocationMeta {
            created_unix_ms: 0,
            expires_unix_ms: 0,
            username: [0; META_USERNAME_LEN],
            sha256: 0,
            reserved: [0; 7],
        }
    }
}

/// Key of [`TURN_CHANNELS`]: the client's address and transport, and the channel number in its
/// ChannelData. The transport keeps a UDP datagram from a TCP client's address from matching
/// that client's channels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The client (its `bound` byte is 1).
    pub client: Leg,
    /// Channel number, raw network order.
    pub channel: u16,
    /// The client's transport: [`CLIENT_UDP`], [`CLIENT_TCP`] or [`CLIENT_TLS`].
    pub transport: u8,
    /// Reserved, zero.
    pub reserved: u8,
}

/// Value of [`TURN_CHANNELS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelBinding {
    /// The peer the channel is bound to (its `bound` byte is 1).
    pub peer: Leg,
    /// The allocation's slot.
    pub slot: u32,
    /// When the channel expires unless refreshed, milliseconds since the Unix epoch (the
    /// daemon's bookkeeping: it removes the entry then).
    pub expires_unix_ms: u64,
}

/// Key of [`TURN_PEERS`]: a peer's address as it sends to an allocation's relayed port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The peer (its `bound` byte is 1).
    pub peer: Leg,
    /// The allocation's slot.
    pub slot: u32,
}

/// Value of [`TURN_PEERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerChannel {
    /// Channel number, raw network order.
    pub channel: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

/// Key of [`TURN_PERMISSIONS`]: a peer IP address (the port is not part of a permission).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PermissionKey {
    /// Peer address, raw network order (IPv4 in words 0 and 1).
    pub addr: [u16; 8],
    /// [`crate::maps::FAMILY_V4`] or [`crate::maps::FAMILY_V6`].
    pub family: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// The allocation's slot.
    pub slot: u32,
}

/// Value of [`TURN_PERMISSIONS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permission {
    /// When it expires unless refreshed, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// Value of [`TURN_KEYS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnKeys {
    /// Key of the stateless nonces' MAC: kept with the allocations, so a restarted daemon
    /// accepts the nonces its predecessor handed out.
    pub nonce_key: [u8; 32],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for TurnAllocation {}
    unsafe impl aya::Pod for TurnAllocationMeta {}
    unsafe impl aya::Pod for ChannelKey {}
    unsafe impl aya::Pod for ChannelBinding {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PeerChannel {}
    unsafe impl aya::Pod for PermissionKey {}
    unsafe impl aya::Pod for Permission {}
    unsafe impl aya::Pod for TurnKeys {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ChannelDataHdr>(), CHANNEL_DATA_HLEN);
        assert_eq!(size_of::<RelayPortKey>(), 4);
        assert_eq!(size_of::<RelayPort>(), 8);
        assert_eq!(size_of::<TurnAllocation>(), 20 + 2 + 1 + 1 + 4 + 8 + 2 + 2);
        assert_eq!(
            size_of::<TurnAllocationMeta>(),
            8 + 8 + META_USERNAME_LEN + 1 + 7
        );
        assert_eq!(size_of::<ChannelKey>(), 20 + 2 + 1 + 1);
        assert_eq!(size_of::<ChannelBinding>(), 20 + 4 + 8);
        assert_eq!(size_of::<PeerKey>(), 20 + 4);
        assert_eq!(size_of::<PeerChannel>(), 4);
        assert_eq!(size_of::<PermissionKey>(), 16 + 1 + 3 + 4);
        assert_eq!(size_of::<Permission>(), 8);
        assert_eq!(size_of::<TurnKeys>(), 32);
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in [
            PORT_OWNERS,
            RELAY_PORTS,
            TURN_ALLOCATIONS,
            LEGACY_TURN_ALLOCATIONS,
            TURN_ALLOCATION_META,
            TURN_CHANNELS,
            TURN_PEERS,
            TURN_PERMISSIONS,
            TURN_STATS,
            TURN_USERSPACE_STATS,
            TURN_KEYS,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn classify_tells_stun_channel_data_and_garbage_apart() {
        let mut stun = [0u8; 20];
        stun[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        assert_eq!(TurnDatagram::classify(&stun), TurnDatagram::Stun);
        assert_eq!(TurnDatagram::classify(&stun[..19]), TurnDatagram::Malformed);
        let mut cd = [0u8; 12];
        cd[..4].copy_from_slice(&ChannelDataHdr::new(0x4001, 5).to_bytes());
        assert_eq!(
            TurnDatagram::classify(&cd[..9]),
            TurnDatagram::ChannelData {
                channel: 0x4001,
                len: 5
            }
        );
        // Padded to 12: still 5 bytes of data.
        assert_eq!(
            TurnDatagram::classify(&cd),
            TurnDatagram::ChannelData {
                channel: 0x4001,
                len: 5
            }
        );
        // A length past the datagram.
        assert_eq!(TurnDatagram::classify(&cd[..8]), TurnDatagram::Malformed);
        for first in [0x80u8, 0xc0] {
            cd[0] = first;
            assert_eq!(TurnDatagram::classify(&cd), TurnDatagram::Malformed);
        }
        assert_eq!(
            TurnDatagram::classify(&[0x40, 0, 0]),
            TurnDatagram::Malformed
        );
    }

    #[test]
    fn a_peer_needs_a_channel_or_a_permission() {
        assert_eq!(to_client(Some(0x4001), true), Ok(ToClient::Channel(0x4001)));
        // The channel entry exists only while its permission lives (the daemon's rule).
        assert_eq!(
            to_client(Some(0x4001), false),
            Ok(ToClient::Channel(0x4001))
        );
        assert_eq!(to_client(None, true), Ok(ToClient::Indication));
        assert_eq!(to_client(None, false), Err(Reason::DroppedTurnNoPermission));
    }

    #[test]
    fn trailer_sum_places_each_byte_at_its_offset() {
        let w = [0x11, 0x22, 0x33, 0x44];
        let word = |a: u8, b: u8| u16::from_ne_bytes([a, b]);
        assert_eq!(trailer_sum(w, 0, 8), 0);
        // Window at an even offset: bytes 2 and 3 form one whole word.
        assert_eq!(trailer_sum(w, 2, 8), word(0x33, 0x44));
        assert_eq!(trailer_sum(w, 1, 8), word(0, 0x44));
        assert_eq!(
            trailer_sum(w, 3, 8),
            crate::checksum::fold(word(0, 0x22) as u32 + word(0x33, 0x44) as u32)
        );
        // At an odd offset the pairing shifts by one.
        assert_eq!(trailer_sum(w, 1, 9), word(0x44, 0));
        assert_eq!(
            trailer_sum(w, 2, 9),
            crate::checksum::fold(word(0, 0x33) as u32 + word(0x44, 0) as u32)
        );
    }

    #[test]
    fn header_round_trip_and_padding() {
        let h = ChannelDataHdr::new(0x7fff, 1200);
        assert_eq!(h.to_bytes(), [0x7f, 0xff, 0x04, 0xb0]);
        assert_eq!((h.channel(), h.len()), (0x7fff, 1200));
        assert_eq!([padded(0), padded(1), padded(4), padded(5)], [0, 4, 4, 8]);
    }
}
