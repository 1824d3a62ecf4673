//! Stock WireGuard's messages as the relay sees them: it holds no key, so it reads only the
//! cleartext fields — the message type, the sender and receiver indices — and checks only the
//! length of each kind. The XDP program and the daemon classify with the same function
//! ([`classify`]), so a datagram is the same kind of message on both paths.
//!
//! ```text
//! type 1  handshake initiation  148 B: type, 3×0, sender(4), ephemeral(32), static(48),
//!                                      timestamp(28), mac1(16), mac2(16)
//! type 2  handshake response     92 B: type, 3×0, sender(4), receiver(4), ephemeral(32),
//!                                      empty(16), mac1(16), mac2(16)
//! type 3  cookie reply           64 B: type, 3×0, receiver(4), nonce(24), cookie(32)
//! type 4  transport data    ≥ 32 B: type, 3×0, receiver(4), counter(8), data(n), tag(16)
//! ```
//!
//! A data message's plaintext is padded to a multiple of 16 bytes *but never beyond the
//! tunnel's MTU* (whitepaper §5.4.6), so a full-size packet's length is any value — 1452 bytes
//! for a 1420-byte MTU — and the only length rule the relay can apply is the minimum.
//!
//! Indices are little-endian on the wire (WireGuard's own convention); the relay keeps them as
//! the four raw bytes read as a little-endian `u32`, which is what `wg` and wireguard-go log.
//! `mac1` of a handshake message is keyed by the receiver's public key (whitepaper §5.4.4):
//! the one field the relay can verify, with the two public keys the allocation names
//! (`relay-userspace`'s `fronts::wireguard::mac`).

use crate::{
    maps::{Leg, SessionLimits},
    verdict::Reason,
};

/// [`crate::maps::RelayPort::front`] of a WireGuard pair's port; its `side` says whose (0: peer
/// A's, which A sends to; 1: peer B's) and its `slot` names the pair.
pub const FRONT_WIREGUARD: u8 = 3;

/// `ARRAY` pair slot → [`WireGuardPair`]: what the fast path needs (written by the daemon when
/// a pair is allocated and when its legs are learnt or move); a free slot's record has `id` 0.
/// A pair is a kind of session: its slot is a session slot, so its counters are the sessions'
/// (`session_stats`, `user_stats`: index 0 from peer A, 1 from peer B, whose last-seen times
/// idle expiry reads) and the array has as many entries as the session table
/// ([`crate::maps::DEFAULT_MAX_SESSIONS`] unless configured). An array: the program indexes it
/// by the slot the port owner names. Userspace rewrites a record only while its `id` is 0 (the
/// program passes the pair's packets up meanwhile, to the same rules in userspace), so no torn
/// read mixes two versions of a pair.
pub const WIREGUARD_PAIRS: &str = "wg_slots";
/// `HASH` pair slot → [`WireGuardPair`]: what [`WIREGUARD_PAIRS`] holds, as builds before it
/// kept it. A daemon that finds it pinned copies it over and removes it.
pub const LEGACY_WIREGUARD_PAIRS: &str = "wg_pairs";

/// A pair of stock WireGuard peers as the fast path sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireGuardPair {
    /// Peer A's leg and peer B's leg (`bound` once learnt from their handshakes).
    pub legs: [Leg; 2],
    /// The relay port of each side, raw network order: what arrives on side A's port goes to
    /// leg B from side B's port, and the reverse.
    pub ports: [u16; 2],
    /// The pair's slot (its key, and its counters' index).
    pub slot: u32,
    /// Rate limits per direction.
    pub limits: SessionLimits,
    /// While a leg is moving: the receiver index of the data the move needs from a bound leg
    /// (`fronts::wireguard::legs`) — the bound responder's first data on the new session,
    /// which completes a move of the initiator (rule 5), or the bound initiator's data on a
    /// session made with a roaming peer, which goes to that peer only (rule 9). The kernel
    /// hands that data up instead of forwarding it to the moving leg's old address.
    /// Meaningful when `confirm_side` is set.
    pub confirm_index: u32,
    /// 0: no move pending; 1 + the side whose port that data arrives on.
    pub confirm_side: u8,
    /// 1 if both peers may be behind one IP address (leg learning's policy; the control
    /// plane's, the kernel ignores it).
    pub shared_address: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// The pair's id in the API (a session id, never 0), whose `session_meta` record holds the
    /// peers' public keys and its owner: how a restarted daemon finds them. 0 while userspace
    /// rewrites the record or after the pair ended: the program then leaves the pair's packets
    /// to userspace.
    pub id: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for WireGuardPair {}

impl WireGuardPair {
    /// Whether `receiver` on `side`'s port is data a pending move needs from a bound leg.
    #[inline(always)]
    pub fn confirms_move(&self, side: usize, receiver: u32) -> bool {
        self.confirm_side != 0
            && usize::from(self.confirm_side - 1) == side
            && self.confirm_index == receiver
    }
}

/// What the kernel does with a datagram to side `side`'s port of `pair` (`is_source` tells
/// whether a leg is the datagram's source): transport data from that side's bound leg, with
/// the other leg bound, goes to the other side (`Ok(other side)`); handshake messages, the data
/// that completes a pending move and data from anyone else go to userspace, which learns and
/// moves legs; anything else is dropped. Userspace
/// applies the same rule before its own (`fronts::wireguard`), so the paths agree.
#[inline(always)]
pub fn decide(
    pair: &WireGuardPair,
    side: usize,
    message: &Message,
    is_source: impl Fn(&Leg) -> bool,
) -> Result<usize, Reason> {
    let other = 1 - (side & 1);
    match message {
        Message::Data { receiver } => {
            if pair.confirms_move(side & 1, *receiver) {
                return Err(Reason::PassedWireGuardHandshake);
            }
            let from = &pair.legs[side & 1];
            if from.is_bound() && pair.legs[other].is_bound() && is_source(from) {
                Ok(other)
            } else {
                Err(Reason::PassedWireGuardUnbound)
            }
        }
        Message::Initiation { .. } | Message::Response { .. } | Message::CookieReply { .. } => {
            Err(Reason::PassedWireGuardHandshake)
        }
        Message::Invalid => Err(Reason::DroppedWireGuardInvalid),
    }
}

/// Message type of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of transport data.
pub const TYPE_DATA: u8 = 4;

/// Length of a handshake initiation.
pub const INITIATION_LEN: usize = 148;
/// Length of a handshake response.
pub const RESPONSE_LEN: usize = 92;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Shortest transport-data message: the header and an empty (keepalive) payload's tag.
pub const DATA_MIN_LEN: usize = 32;
/// Transport data's header (type, reserved, receiver, counter) before the encrypted payload.
pub const DATA_HLEN: usize = 16;
/// Length of a MAC (`mac1`, `mac2`).
pub const MAC_LEN: usize = 16;

/// Offset of `mac1` in a handshake initiation (it covers the bytes before it).
pub const INITIATION_MAC1: usize = 116;
/// Offset of `mac1` in a handshake response.
pub const RESPONSE_MAC1: usize = 60;

/// Offset of the sender index in handshake messages.
const SENDER_AT: usize = 4;
/// Offset of the receiver index in a response.
const RESPONSE_RECEIVER_AT: usize = 8;
/// Offset of the receiver index in a cookie reply and in transport data.
const RECEIVER_AT: usize = 4;

/// What a datagram on a WireGuard relay port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// Handshake initiation; `sender` is the initiator's index for this handshake.
    Initiation {
        /// The initiator's sender index.
        sender: u32,
    },
    /// Handshake response; `receiver` is the initiation's sender index it answers.
    Response {
        /// The responder's sender index (the initiator's data then carries it).
        sender: u32,
        /// The initiation's sender index.
        receiver: u32,
    },
    /// Cookie reply to a handshake message whose sender index is `receiver`.
    CookieReply {
        /// The sender index of the message it answers.
        receiver: u32,
    },
    /// Transport data for the session whose receiver index is `receiver`.
    Data {
        /// The receiving peer's index of the session.
        receiver: u32,
    },
    /// Anything else: an unknown type, a non-zero reserved field, a wrong length.
    Invalid,
}

impl Message {
    /// Whether this is a handshake message (initiation, response, cookie reply), which the
    /// kernel hands to userspace.
    pub const fn is_handshake(&self) -> bool {
        matches!(
            self,
            Message::Initiation { .. } | Message::Response { .. } | Message::CookieReply { .. }
        )
    }
}

/// Reads the little-endian index at `at` (callers have checked the length).
#[inline(always)]
fn index(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Whether `len` is a valid transport-data length: the header and the tag at least (the
/// padding rule cannot be checked: padding stops at the tunnel's MTU, which the relay does not
/// know; see the module doc).
#[inline(always)]
pub const fn data_len_valid(len: usize) -> bool {
    len >= DATA_MIN_LEN
}

/// Classifies a datagram's payload by its type byte, reserved bytes and length — everything
/// the relay can check without keys. The XDP program calls it on the first 16 bytes plus the
/// length ([`classify_header`]); this is the same rule over a whole payload.
pub fn classify(payload: &[u8]) -> Message {
    if payload.len() < DATA_HLEN {
        return Message::Invalid;
    }
    let mut head = [0u8; DATA_HLEN];
    head.copy_from_slice(&payload[..DATA_HLEN]);
    classify_header(&head, payload.len())
}

/// [`classify`] over the first [`DATA_HLEN`] bytes and the payload's length (what the kernel
/// reads without touching the rest).
#[inline(always)]
pub fn classify_header(head: &[u8; DATA_HLEN], len: usize) -> Message {
    if head[1] != 0 || head[2] != 0 || head[3] != 0 {
        return Message::Invalid;
    }
    match head[0] {
        TYPE_INITIATION if len == INITIATION_LEN => Message::Initiation {
            sender: index(head, SENDER_AT),
        },
        TYPE_RESPONSE if len == RESPONSE_LEN => Message::Response {
            sender: index(head, SENDER_AT),
            receiver: index(head, RESPONSE_RECEIVER_AT),
        },
        TYPE_COOKIE_REPLY if len == COOKIE_REPLY_LEN => Message::CookieReply {
            receiver: index(head, RECEIVER_AT),
        },
        TYPE_DATA if data_len_valid(len) => Message::Data {
            receiver: index(head, RECEIVER_AT),
        },
        _ => Message::Invalid,
    }
}

/// A transport data message's counter (its nonce, little-endian after the receiver index: 0 for
/// the first message of a session); 0 for anything shorter.
pub fn data_counter(payload: &[u8]) -> u64 {
    payload
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The bytes `mac1` covers and `mac1` itself, for a handshake initiation or response
/// (`None` for other messages or lengths).
pub fn mac1_parts(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = match (payload.first(), payload.len()) {
        (Some(&TYPE_INITIATION), INITIATION_LEN) => INITIATION_MAC1,
        (Some(&TYPE_RESPONSE), RESPONSE_LEN) => RESPONSE_MAC1,
        _ => return None,
    };
    Some((&payload[..at], &payload[at..at + MAC_LEN]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u8) -> [u8; 256] {
        let mut m = [0u8; 256];
        m[0] = kind;
        m[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        m[8..12].copy_from_slice(&0xA0B0_C0D0u32.to_le_bytes());
        m
    }

    #[test]
    fn each_kind_is_told_by_type_and_exact_length() {
        let i = message(TYPE_INITIATION);
        assert_eq!(
            classify(&i[..INITIATION_LEN]),
            Message::Initiation {
                sender: 0x0102_0304
            }
        );
        let r = message(TYPE_RESPONSE);
        assert_eq!(
            classify(&r[..RESPONSE_LEN]),
            Message::Response {
                sender: 0x0102_0304,
                receiver: 0xA0B0_C0D0
            }
        );
        let c = message(TYPE_COOKIE_REPLY);
        assert_eq!(
            classify(&c[..COOKIE_REPLY_LEN]),
            Message::CookieReply {
                receiver: 0x0102_0304
            }
        );
        let d = message(TYPE_DATA);
        for len in [32, 48, 64, 1440] {
            let mut big = [0u8; 1440];
            big[..16].copy_from_slice(&d[..16]);
            assert_eq!(
                classify(&big[..len]),
                Message::Data {
                    receiver: 0x0102_0304
                },
                "{len}"
            );
        }
    }

    #[test]
    fn wrong_lengths_reserved_bytes_and_types_are_invalid() {
        let i = message(TYPE_INITIATION);
        for len in [0, 15, 16, 147, 149, 200] {
            assert_eq!(classify(&i[..len]), Message::Invalid, "initiation {len}");
        }
        let r = message(TYPE_RESPONSE);
        for len in [91, 93, 148] {
            assert_eq!(classify(&r[..len]), Message::Invalid, "response {len}");
        }
        let d = message(TYPE_DATA);
        for len in [16, 31] {
            assert_eq!(classify(&d[..len]), Message::Invalid, "data {len}");
        }
        // A full-MTU packet is padded only up to the MTU: 1420 bytes of plaintext (not a
        // multiple of 16) make a 1452-byte message, which wireguard-go sends.
        let mut full = [0u8; 1452];
        full[0] = TYPE_DATA;
        for len in [32, 33, 47, 1452] {
            assert!(
                matches!(classify(&full[..len]), Message::Data { .. }),
                "data {len}"
            );
        }
        for kind in [0u8, 5, 0x40, 0xFF] {
            assert_eq!(classify(&message(kind)[..64]), Message::Invalid);
        }
        let mut reserved = message(TYPE_DATA);
        reserved[2] = 1;
        assert_eq!(classify(&reserved[..32]), Message::Invalid);
    }

    #[test]
    fn only_data_from_the_ports_own_bound_leg_crosses_and_only_to_the_other_side() {
        let a = Leg::bound_v4([198, 51, 100, 1], 40_000);
        let b = Leg::bound_v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            50_000,
        );
        let pair = WireGuardPair {
            legs: [a, b],
            ..Default::default()
        };
        let data = Message::Data { receiver: 1 };
        let from = |leg: Leg| move |l: &Leg| *l == leg;
        assert_eq!(decide(&pair, 0, &data, from(a)), Ok(1));
        assert_eq!(decide(&pair, 1, &data, from(b)), Ok(0));
        // A's address on B's port, B's on A's: not that port's leg.
        assert_eq!(
            decide(&pair, 1, &data, from(a)),
            Err(Reason::PassedWireGuardUnbound)
        );
        assert_eq!(
            decide(&pair, 0, &data, from(b)),
            Err(Reason::PassedWireGuardUnbound)
        );
        let stranger = Leg::bound_v4([203, 0, 113, 9], 40_000);
        assert_eq!(
            decide(&pair, 0, &data, from(stranger)),
            Err(Reason::PassedWireGuardUnbound)
        );
        let mut half = pair;
        half.legs[1].bound = 0;
        assert_eq!(
            decide(&half, 0, &data, from(a)),
            Err(Reason::PassedWireGuardUnbound)
        );
        for handshake in [
            Message::Initiation { sender: 1 },
            Message::Response {
                sender: 1,
                receiver: 2,
            },
            Message::CookieReply { receiver: 1 },
        ] {
            assert_eq!(
                decide(&pair, 0, &handshake, from(a)),
                Err(Reason::PassedWireGuardHandshake)
            );
        }
        assert_eq!(
            decide(&pair, 0, &Message::Invalid, from(a)),
            Err(Reason::DroppedWireGuardInvalid)
        );
        // A move pending: B's data with the awaited index goes up, other data crosses.
        let mut moving = pair;
        moving.confirm_index = 9;
        moving.confirm_side = 2;
        assert_eq!(
            decide(&moving, 1, &Message::Data { receiver: 9 }, from(b)),
            Err(Reason::PassedWireGuardHandshake)
        );
        assert_eq!(
            decide(&moving, 1, &Message::Data { receiver: 8 }, from(b)),
            Ok(0)
        );
        assert_eq!(
            decide(&moving, 0, &Message::Data { receiver: 9 }, from(a)),
            Ok(1)
        );
    }

    #[test]
    fn mac1_covers_everything_before_it() {
        let i = message(TYPE_INITIATION);
        let (covered, mac) = mac1_parts(&i[..INITIATION_LEN]).unwrap();
        assert_eq!((covered.len(), mac.len()), (116, 16));
        let r = message(TYPE_RESPONSE);
        let (covered, mac) = mac1_parts(&r[..RESPONSE_LEN]).unwrap();
        assert_eq!((covered.len(), mac.len()), (60, 16));
        assert!(mac1_parts(&r[..64]).is_none());
        assert!(mac1_parts(&message(TYPE_DATA)[..RESPONSE_LEN]).is_none());
    }
}
