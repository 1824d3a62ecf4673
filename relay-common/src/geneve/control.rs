//! Bind-handshake control messages (Geneve O bit set, protocol [`GENEVE_PROTOCOL_BIND`]).
//!
//! Every control message, in both directions, has the same fixed size ([`CONTROL_LEN`] bytes of
//! UDP payload), so a reply is never larger than the request that caused it: the relay cannot be
//! used to amplify traffic towards a spoofed source.
//!
//! Layout after the 8-byte Geneve header (offsets within the body, multi-byte fields big-endian):
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! | 0      | 1    | message type ([`MessageType`])                                     |
//! | 1      | 1    | leg: 0 = A, 1 = B                                                  |
//! | 2      | 2    | reserved, zero                                                     |
//! | 4      | 8    | generation: chosen by the client, strictly increasing per bind     |
//! | 12     | 16   | cookie: zero in a request, the relay's challenge otherwise         |
//! | 28     | 1    | observed family (4 or 6) in `Bound`, else 0                        |
//! | 29     | 1    | reserved, zero                                                     |
//! | 30     | 2    | observed source port in `Bound`, else 0                            |
//! | 32     | 16   | observed source address in `Bound` (IPv4 in the first 4), else 0   |
//! | 48     | 16   | MAC: keyed BLAKE2s-128 under the leg's key over bytes 0..56 of the |
//! |        |      | datagram (Geneve header and body up to the MAC)                    |
//!
//! The crypto lives in userspace; this module only defines and parses the layout.

use super::{GENEVE_HLEN, GENEVE_PROTOCOL_BIND, GeneveHdr};

/// Body length after the Geneve header.
pub const BODY_LEN: usize = 64;
/// Total UDP payload length of every control message.
pub const CONTROL_LEN: usize = GENEVE_HLEN + BODY_LEN;
/// Length of the relay's challenge cookie.
pub const COOKIE_LEN: usize = 16;
/// Length of the message MAC.
pub const MAC_LEN: usize = 16;
/// Length of a leg's bind key.
pub const KEY_LEN: usize = 32;
/// Bytes of the datagram covered by the MAC.
pub const MAC_COVERED_LEN: usize = CONTROL_LEN - MAC_LEN;

const OFF_TYPE: usize = GENEVE_HLEN;
const OFF_LEG: usize = GENEVE_HLEN + 1;
const OFF_RESERVED: usize = GENEVE_HLEN + 2;
const OFF_GENERATION: usize = GENEVE_HLEN + 4;
const OFF_COOKIE: usize = GENEVE_HLEN + 12;
const OFF_OBS_FAMILY: usize = GENEVE_HLEN + 28;
const OFF_OBS_RESERVED: usize = GENEVE_HLEN + 29;
const OFF_OBS_PORT: usize = GENEVE_HLEN + 30;
const OFF_OBS_ADDR: usize = GENEVE_HLEN + 32;
const OFF_MAC: usize = MAC_COVERED_LEN;

/// The four messages of a bind: Request → Challenge → Answer → Bound.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Client → relay: "bind leg L of session VNI, generation G", MACed with the leg key.
    Request = 1,
    /// Relay → client: a stateless cookie bound to (VNI, leg, generation, observed source,
    /// time window). Sent only to a request whose MAC verified.
    Challenge = 2,
    /// Client → relay: the cookie echoed from the same source, proving it receives there.
    Answer = 3,
    /// Relay → client: the leg is bound to the observed source shown in the message.
    Bound = 4,
}

impl MessageType {
    /// Parses the type byte.
    pub const fn from_u8(v: u8) -> Option<MessageType> {
        match v {
            1 => Some(MessageType::Request),
            2 => Some(MessageType::Challenge),
            3 => Some(MessageType::Answer),
            4 => Some(MessageType::Bound),
            _ => None,
        }
    }

    /// Lower-case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            MessageType::Request => "request",
            MessageType::Challenge => "challenge",
            MessageType::Answer => "answer",
            MessageType::Bound => "bound",
        }
    }
}

/// The source address the relay observed, echoed in `Bound` so a client learns its public
/// mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// 4 or 6.
    pub family: u8,
    /// Port, host order.
    pub port: u16,
    /// Address octets (IPv4 in the first four).
    pub addr: [u8; 16],
}

/// A parsed control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlMessage {
    /// Session id from the Geneve header.
    pub vni: u32,
    /// Message type.
    pub kind: MessageType,
    /// Leg index (0 or 1).
    pub leg: u8,
    /// Bind generation.
    pub generation: u64,
    /// Cookie (zero in requests).
    pub cookie: [u8; COOKIE_LEN],
    /// Observed source (only in `Bound`).
    pub observed: Option<Observed>,
    /// MAC as received (zero until [`ControlMessage::encode`]'s caller fills it).
    pub mac: [u8; MAC_LEN],
}

/// Why a control datagram was rejected before any cryptography ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// Not exactly [`CONTROL_LEN`] bytes.
    Length,
    /// Not a supported Geneve control header with the bind protocol type.
    Header,
    /// Unknown message type.
    Type,
    /// Leg other than 0 or 1.
    Leg,
    /// A reserved field is not zero, or an observed address in a non-`Bound` message.
    Reserved,
}

impl ParseError {
    /// Lower-case name for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ParseError::Length => "length",
            ParseError::Header => "header",
            ParseError::Type => "type",
            ParseError::Leg => "leg",
            ParseError::Reserved => "reserved",
        }
    }
}

impl ControlMessage {
    /// Parses a UDP payload. Lengths and reserved fields are checked strictly so that every
    /// accepted message has exactly one encoding.
    pub fn parse(bytes: &[u8]) -> Result<ControlMessage, ParseError> {
        if bytes.len() != CONTROL_LEN {
            return Err(ParseError::Length);
        }
        let header = GeneveHdr::from_bytes(bytes).ok_or(ParseError::Length)?;
        if !header.is_supported()
            || !header.is_control()
            || u16::from_be(header.protocol) != GENEVE_PROTOCOL_BIND
            || header.flags & !crate::geneve::GENEVE_FLAG_CONTROL != 0
            || header.reserved != 0
        {
            return Err(ParseError::Header);
        }
        let kind = MessageType::from_u8(bytes[OFF_TYPE]).ok_or(ParseError::Type)?;
        let leg = bytes[OFF_LEG];
        if leg > 1 {
            return Err(ParseError::Leg);
        }
        if bytes[OFF_RESERVED] != 0 || bytes[OFF_RESERVED + 1] != 0 || bytes[OFF_OBS_RESERVED] != 0
        {
            return Err(ParseError::Reserved);
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[OFF_GENERATION..OFF_GENERATION + 8]);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&bytes[OFF_COOKIE..OFF_COOKIE + COOKIE_LEN]);
        let family = bytes[OFF_OBS_FAMILY];
        let port = u16::from_be_bytes([bytes[OFF_OBS_PORT], bytes[OFF_OBS_PORT + 1]]);
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&bytes[OFF_OBS_ADDR..OFF_OBS_ADDR + 16]);
        let observed = if kind == MessageType::Bound {
            if family != 4 && family != 6 {
                return Err(ParseError::Reserved);
            }
            Some(Observed { family, port, addr })
        } else {
            if family != 0 || port != 0 || addr != [0; 16] {
                return Err(ParseError::Reserved);
            }
            None
        };
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[OFF_MAC..OFF_MAC + MAC_LEN]);
        Ok(ControlMessage {
            vni: header.vni(),
            kind,
            leg,
            generation: u64::from_be_bytes(generation),
            cookie,
            observed,
            mac,
        })
    }

    /// Encodes the message with its current `mac` field. To produce a valid message, encode,
    /// compute the MAC over `[..MAC_COVERED_LEN]` and write it with [`set_mac`].
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut out = [0u8; CONTROL_LEN];
        out[..GENEVE_HLEN]
            .copy_from_slice(&GeneveHdr::new(self.vni, true, GENEVE_PROTOCOL_BIND).to_bytes());
        out[OFF_TYPE] = self.kind as u8;
        out[OFF_LEG] = self.leg;
        out[OFF_GENERATION..OFF_GENERATION + 8].copy_from_slice(&self.generation.to_be_bytes());
        out[OFF_COOKIE..OFF_COOKIE + COOKIE_LEN].copy_from_slice(&self.cookie);
        if let Some(o) = self.observed {
            out[OFF_OBS_FAMILY] = o.family;
            out[OFF_OBS_PORT..OFF_OBS_PORT + 2].copy_from_slice(&o.port.to_be_bytes());
            out[OFF_OBS_ADDR..OFF_OBS_ADDR + 16].copy_from_slice(&o.addr);
        }
        out[OFF_MAC..].copy_from_slice(&self.mac);
        out
    }
}

/// Writes `mac` into an encoded message.
pub fn set_mac(message: &mut [u8; CONTROL_LEN], mac: &[u8; MAC_LEN]) {
    message[OFF_MAC..].copy_from_slice(mac);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: MessageType) -> ControlMessage {
        ControlMessage {
            vni: 0xabcdef,
            kind,
            leg: 1,
            generation: 0x0102_0304_0506_0708,
            cookie: [7; COOKIE_LEN],
            observed: (kind == MessageType::Bound).then_some(Observed {
                family: 4,
                port: 40000,
                addr: [203, 0, 113, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            }),
            mac: [9; MAC_LEN],
        }
    }

    #[test]
    fn every_type_round_trips_with_exact_bytes() {
        for kind in [
            MessageType::Request,
            MessageType::Challenge,
            MessageType::Answer,
            MessageType::Bound,
        ] {
            let m = sample(kind);
            let bytes = m.encode();
            assert_eq!(bytes.len(), CONTROL_LEN);
            assert_eq!(
                &bytes[..8],
                &[0x00, 0x80, 0x7a, 0x1f, 0xab, 0xcd, 0xef, 0x00]
            );
            assert_eq!(bytes[8], kind as u8);
            assert_eq!(bytes[9], 1);
            assert_eq!(&bytes[12..20], &[1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(&bytes[56..], &[9; 16]);
            assert_eq!(ControlMessage::parse(&bytes), Ok(m));
        }
    }

    #[test]
    fn rejects_bad_length_header_type_leg_reserved() {
        let good = sample(MessageType::Request).encode();
        assert_eq!(ControlMessage::parse(&good[..71]), Err(ParseError::Length));
        let mut long = [0u8; CONTROL_LEN + 1];
        long[..CONTROL_LEN].copy_from_slice(&good);
        assert_eq!(ControlMessage::parse(&long), Err(ParseError::Length));

        let mut data_bit = good;
        data_bit[1] = 0;
        assert_eq!(ControlMessage::parse(&data_bit), Err(ParseError::Header));
        let mut proto = good;
        proto[3] = 0x12;
        assert_eq!(ControlMessage::parse(&proto), Err(ParseError::Header));
        let mut ty = good;
        ty[8] = 9;
        assert_eq!(ControlMessage::parse(&ty), Err(ParseError::Type));
        let mut leg = good;
        leg[9] = 2;
        assert_eq!(ControlMessage::parse(&leg), Err(ParseError::Leg));
        let mut reserved = good;
        reserved[10] = 1;
        assert_eq!(ControlMessage::parse(&reserved), Err(ParseError::Reserved));
        let mut observed_in_request = good;
        observed_in_request[36] = 4;
        assert_eq!(
            ControlMessage::parse(&observed_in_request),
            Err(ParseError::Reserved)
        );
    }
}
