//! The session protocol's wire format: the front that `relay client` sidecars speak.
//!
//! A session datagram is UDP to the relay port whose payload starts with an 8-byte Geneve header
//! (RFC 8926) without options:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The VNI names the session. Data packets (O = 0) are forwarded byte for byte to the other leg;
//! control packets (O = 1) carry the bind handshake ([`control`]). This is the layout
//! Tailscale's peer relay uses. `docs/protocol.md` describes it for humans.
//!
//! The header struct is what the XDP program overlays on packet memory (alignment 2, raw
//! network-order fields, like the headers in [`crate::wire`]).

pub mod control;

/// Geneve base header length (no options).
pub const GENEVE_HLEN: usize = 8;
/// Geneve version this relay speaks (the only one defined).
pub const GENEVE_VERSION: u8 = 0;
/// Bit in Geneve byte 1 marking a control packet (the bind handshake).
pub const GENEVE_FLAG_CONTROL: u8 = 0x80;
/// Bit in Geneve byte 1 marking critical options (never set by us; options are rejected anyway).
pub const GENEVE_FLAG_CRITICAL: u8 = 0x40;
/// Protocol type of data packets sent by the relay client: an opaque UDP payload (in practice
/// WireGuard, hence Tailscale's value for it). The relay forwards data regardless of this field.
pub const GENEVE_PROTOCOL_DATA: u16 = 0x7A12;
/// Protocol type of this relay's bind-handshake control messages.
pub const GENEVE_PROTOCOL_BIND: u16 = 0x7A1F;
/// Largest VNI (24 bits). VNI 0 is never allocated.
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// Geneve base header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneveHdr {
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    pub ver_optlen: u8,
    /// O (control) and C (critical) flags.
    pub flags: u8,
    /// Protocol type, network order.
    pub protocol: u16,
    /// Virtual network identifier, big-endian.
    pub vni: [u8; 3],
    /// Reserved, zero.
    pub reserved: u8,
}

impl GeneveHdr {
    /// The session id this packet names.
    #[inline(always)]
    pub const fn vni(&self) -> u32 {
        ((self.vni[0] as u32) << 16) | ((self.vni[1] as u32) << 8) | self.vni[2] as u32
    }

    /// Version and option length are the only ones this relay accepts (0 and 0).
    #[inline(always)]
    pub const fn is_supported(&self) -> bool {
        self.ver_optlen == 0
    }

    /// Whether the O bit marks this as a control packet.
    #[inline(always)]
    pub const fn is_control(&self) -> bool {
        self.flags & GENEVE_FLAG_CONTROL != 0
    }

    /// A header for `vni`, control or data.
    pub const fn new(vni: u32, control: bool, protocol: u16) -> GeneveHdr {
        GeneveHdr {
            ver_optlen: GENEVE_VERSION << 6,
            flags: if control { GENEVE_FLAG_CONTROL } else { 0 },
            protocol: protocol.to_be(),
            vni: [(vni >> 16) as u8, (vni >> 8) as u8, vni as u8],
            reserved: 0,
        }
    }

    /// The 8 bytes as they go on the wire.
    pub const fn to_bytes(&self) -> [u8; GENEVE_HLEN] {
        let p = u16::from_be(self.protocol).to_be_bytes();
        [
            self.ver_optlen,
            self.flags,
            p[0],
            p[1],
            self.vni[0],
            self.vni[1],
            self.vni[2],
            self.reserved,
        ]
    }

    /// Parses the first 8 bytes of a UDP payload; `None` when shorter.
    pub fn from_bytes(bytes: &[u8]) -> Option<GeneveHdr> {
        if bytes.len() < GENEVE_HLEN {
            return None;
        }
        Some(GeneveHdr {
            ver_optlen: bytes[0],
            flags: bytes[1],
            protocol: u16::from_be_bytes([bytes[2], bytes[3]]).to_be(),
            vni: [bytes[4], bytes[5], bytes[6]],
            reserved: bytes[7],
        })
    }
}

/// How a relay datagram's payload classifies, before any session lookup. Both forwarders use it
/// on the UDP payload so they agree on what is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram {
    /// A data packet for session `vni`.
    Data {
        /// Session id.
        vni: u32,
    },
    /// A control packet (bind handshake) for session `vni`.
    Control {
        /// Session id.
        vni: u32,
    },
    /// Too short, wrong version, or carrying options.
    Malformed,
}

impl Datagram {
    /// Classifies a UDP payload received on the relay port.
    pub fn classify(payload: &[u8]) -> Datagram {
        match GeneveHdr::from_bytes(payload) {
            Some(h) if h.is_supported() && h.is_control() => Datagram::Control { vni: h.vni() },
            Some(h) if h.is_supported() => Datagram::Data { vni: h.vni() },
            _ => Datagram::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn header_size_matches_the_wire() {
        assert_eq!(size_of::<GeneveHdr>(), GENEVE_HLEN);
    }

    #[test]
    fn geneve_round_trip() {
        let h = GeneveHdr::new(0x12_3456, true, GENEVE_PROTOCOL_BIND);
        let bytes = h.to_bytes();
        assert_eq!(bytes, [0x00, 0x80, 0x7a, 0x1f, 0x12, 0x34, 0x56, 0x00]);
        let back = GeneveHdr::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.vni(), 0x12_3456);
        assert!(back.is_control());
    }

    #[test]
    fn classify() {
        let data = GeneveHdr::new(7, false, GENEVE_PROTOCOL_DATA).to_bytes();
        assert_eq!(Datagram::classify(&data), Datagram::Data { vni: 7 });
        let ctl = GeneveHdr::new(7, true, GENEVE_PROTOCOL_BIND).to_bytes();
        assert_eq!(Datagram::classify(&ctl), Datagram::Control { vni: 7 });
        assert_eq!(Datagram::classify(&data[..7]), Datagram::Malformed);
        let mut v1 = data;
        v1[0] = 0x40; // version 1
        assert_eq!(Datagram::classify(&v1), Datagram::Malformed);
        let mut opts = data;
        opts[0] = 0x01; // one option word
        assert_eq!(Datagram::classify(&opts), Datagram::Malformed);
    }
}
