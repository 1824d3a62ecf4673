//! The forwarding rule, shared by the XDP program and the userspace forwarder.
//!
//! A data packet for a known session is forwarded only when both legs are bound and the packet's
//! source address and port are exactly one of them; it then goes to the other leg. Checking
//! "both bound" first means a half-bound session never leaks anything, whoever sends.

use crate::maps::{FAMILY_V4, FAMILY_V6, Leg, Session};
use crate::verdict::Reason;
use crate::wire::words_eq;

/// Which way a packet crosses its session: the leg that sent it and the leg it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Direction {
    /// Index of the sending leg.
    pub from: usize,
    /// Index of the receiving leg.
    pub to: usize,
}

impl Leg {
    /// Whether this leg is the IPv4 source `addr`:`port` (raw network order).
    #[inline(always)]
    pub fn is_v4_source(&self, addr: [u16; 2], port: u16) -> bool {
        self.family == FAMILY_V4 && self.port == port && words_eq(&self.v4_words(), &addr)
    }

    /// Whether this leg is the IPv6 source `addr`:`port` (raw network order).
    #[inline(always)]
    pub fn is_v6_source(&self, addr: &[u16; 8], port: u16) -> bool {
        self.family == FAMILY_V6 && self.port == port && words_eq(&self.addr, addr)
    }
}

#[inline(always)]
fn decide_with(session: &Session, is_source: impl Fn(&Leg) -> bool) -> Result<Direction, Reason> {
    let [a, b] = &session.legs;
    if !(a.is_bound() && b.is_bound()) {
        return Err(Reason::DroppedUnbound);
    }
    if is_source(a) {
        Ok(Direction { from: 0, to: 1 })
    } else if is_source(b) {
        Ok(Direction { from: 1, to: 0 })
    } else {
        Err(Reason::DroppedWrongSource)
    }
}

/// Decides a data packet from IPv4 source `addr`:`port` (raw network order).
#[inline(always)]
pub fn decide_v4(session: &Session, addr: [u16; 2], port: u16) -> Result<Direction, Reason> {
    decide_with(session, |leg| leg.is_v4_source(addr, port))
}

/// Decides a data packet from IPv6 source `addr`:`port` (raw network order).
#[inline(always)]
pub fn decide_v6(session: &Session, addr: &[u16; 8], port: u16) -> Result<Direction, Reason> {
    decide_with(session, |leg| leg.is_v6_source(addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(a: Leg, b: Leg) -> Session {
        Session {
            legs: [a, b],
            ..Default::default()
        }
    }

    const A: [u8; 4] = [198, 51, 100, 7];
    const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];

    fn v4(octets: [u8; 4]) -> [u16; 2] {
        Leg::bound_v4(octets, 0).v4_words()
    }

    fn v6(octets: [u8; 16]) -> [u16; 8] {
        Leg::bound_v6(octets, 0).addr
    }

    #[test]
    fn forwards_between_bound_legs_both_ways() {
        let s = session(Leg::bound_v4(A, 1000), Leg::bound_v6(B6, 2000));
        assert_eq!(
            decide_v4(&s, v4(A), 1000u16.to_be()),
            Ok(Direction { from: 0, to: 1 })
        );
        assert_eq!(
            decide_v6(&s, &v6(B6), 2000u16.to_be()),
            Ok(Direction { from: 1, to: 0 })
        );
    }

    #[test]
    fn wrong_port_address_or_family_is_wrong_source() {
        let s = session(Leg::bound_v4(A, 1000), Leg::bound_v6(B6, 2000));
        let wrong = Err(Reason::DroppedWrongSource);
        assert_eq!(decide_v4(&s, v4(A), 1001u16.to_be()), wrong);
        assert_eq!(decide_v4(&s, v4([198, 51, 100, 8]), 1000u16.to_be()), wrong);
        // Leg B's address words as an IPv4 source must not match the IPv6 leg.
        assert_eq!(
            decide_v4(&s, [v6(B6)[0], v6(B6)[1]], 2000u16.to_be()),
            wrong
        );
        let mut other = B6;
        other[15] = 10;
        assert_eq!(decide_v6(&s, &v6(other), 2000u16.to_be()), wrong);
    }

    #[test]
    fn unbound_leg_drops_everything_even_from_the_bound_leg() {
        let mut b = Leg::bound_v4([203, 0, 113, 5], 3000);
        b.bound = 0;
        let s = session(Leg::bound_v4(A, 1000), b);
        assert_eq!(
            decide_v4(&s, v4(A), 1000u16.to_be()),
            Err(Reason::DroppedUnbound)
        );
        assert_eq!(
            decide_v4(&s, v4([203, 0, 113, 5]), 3000u16.to_be()),
            Err(Reason::DroppedUnbound)
        );
    }
}
