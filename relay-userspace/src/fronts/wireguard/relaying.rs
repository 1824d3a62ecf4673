//! What the daemon does with a datagram on a WireGuard pair's port (sans-IO): first the
//! kernel's rule (`relay_common::wireguard::decide`: data from the side's bound leg crosses),
//! so with `xdp.mode: off` the userspace path forwards exactly what XDP would; then, for what
//! the kernel hands up (handshakes, data from anyone else), leg learning ([`super::legs`]).
//! The caller owns the sockets (one per relay port), the clock and the map writes.

use std::{net::SocketAddr, time::Instant};

use relay_common::{
    verdict::Reason,
    wireguard::{self, WireGuardPair, classify},
};

use super::{
    legs::{Arrival, Decision, Legs, Policy, Side},
    mac::{Mac1Key, PublicKey},
};
use crate::control::session::{address_of_leg, canonical, leg_at};

/// What to do with a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send it unchanged from `from_port` to each of `to` — after writing `update`, the pair's
    /// new fast-path record, when there is one (a leg's move begins: the kernel must hand up
    /// the bound leg's data the move needs).
    Relay {
        /// The relay port to send from (host order): the other side's.
        from_port: u16,
        /// Where to.
        to: Vec<SocketAddr>,
        /// What it is counted as.
        reason: Reason,
        /// The record to write first, if it changed.
        update: Option<WireGuardPair>,
    },
    /// The legs are learnt (or one moved): write the pair's fast-path record (the kernel then
    /// forwards its data), then send this datagram from `from_port` to `to`.
    Bound {
        /// The record to write.
        record: WireGuardPair,
        /// The relay port to send from (host order).
        from_port: u16,
        /// Where to.
        to: SocketAddr,
    },
    /// Drop it, counted under this reason.
    Refuse(Reason),
}

/// One pair as the daemon holds it.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The fast path's record (legs as learnt, ports, slot, limits).
    pub record: WireGuardPair,
    /// `mac1` keys of messages addressed to peer A and to peer B.
    keys: [Mac1Key; 2],
    /// Leg learning.
    legs: Legs,
}

impl Pair {
    /// A new pair of peers with public keys `a` and `b`, whose relay ports and slot are in
    /// `record` (legs not learnt).
    pub fn new(record: WireGuardPair, a: &PublicKey, b: &PublicKey, policy: Policy) -> Pair {
        let learnt = [0, 1].map(|i| address_of_leg(&record.legs[i]));
        let legs = match learnt {
            [Some(a), Some(b)] if record.legs.iter().all(|l| l.is_bound()) => {
                Legs::bound(policy, [a, b])
            }
            _ => Legs::new(policy),
        };
        Pair {
            record,
            keys: [Mac1Key::for_receiver(a), Mac1Key::for_receiver(b)],
            legs,
        }
    }

    /// The relay port of `side` (host order).
    pub fn port(&self, side: Side) -> u16 {
        u16::from_be(self.record.ports[side.index()])
    }

    /// Forgets the legs (both idle): the kernel then forwards nothing until they are learnt
    /// again; the caller writes the returned record.
    pub fn release(&mut self) -> WireGuardPair {
        self.legs.release();
        self.record.legs = Default::default();
        self.sync_awaiting();
        self.record
    }

    /// Decides `payload`, which arrived on `side`'s port from `from` at `now`.
    pub fn on_datagram(
        &mut self,
        side: Side,
        from: SocketAddr,
        payload: &[u8],
        now: Instant,
    ) -> Outcome {
        let from = canonical(from);
        let message = classify(payload);
        let source = leg_at(from);
        match wireguard::decide(&self.record, side.index(), &message, |l| *l == source) {
            Ok(to) => {
                return match address_of_leg(&self.record.legs[to]) {
                    Some(addr) => Outcome::Relay {
                        from_port: u16::from_be(self.record.ports[to]),
                        to: vec![addr],
                        reason: Reason::ForwardedWireGuard,
                        update: None,
                    },
                    None => Outcome::Refuse(Reason::DroppedWireGuardUnbound),
                };
            }
            Err(Reason::DroppedWireGuardInvalid) => {
                return Outcome::Refuse(Reason::DroppedWireGuardInvalid);
            }
            Err(_) => {}
        }
        // Messages on a side's port are addressed to the other peer: its key makes their mac1.
        let mac1_valid = self.keys[side.other().index()].verifies(payload);
        let arrival = Arrival {
            side,
            from,
            message,
            mac1_valid,
            counter: wireguard::data_counter(payload),
        };
        let from_port = self.port(side.other());
        match self.legs.on_arrival(arrival, now) {
            Decision::Relay(to) => Outcome::Relay {
                from_port,
                to,
                reason: Reason::ForwardedWireGuard,
                update: self.sync_awaiting().then_some(self.record),
            },
            Decision::Bind { legs, to } => {
                self.record.legs = legs.map(leg_at);
                self.sync_awaiting();
                Outcome::Bound {
                    record: self.record,
                    from_port,
                    to,
                }
            }
            Decision::Refuse(refusal) => Outcome::Refuse(refusal.reason()),
        }
    }

    /// Copies the leg learning's awaited confirmation into the record; whether it changed.
    fn sync_awaiting(&mut self) -> bool {
        let (side, index) = match self.legs.awaiting() {
            Some((side, index)) => (side.index() as u8 + 1, index),
            None => (0, 0),
        };
        let changed = (self.record.confirm_side, self.record.confirm_index) != (side, index);
        self.record.confirm_side = side;
        self.record.confirm_index = index;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fronts::wireguard::legs::Side::{A, B};
    use relay_common::wireguard::{INITIATION_LEN, RESPONSE_LEN};
    use std::net::Ipv4Addr;

    const KEY_A: PublicKey = [0xA; 32];
    const KEY_B: PublicKey = [0xB; 32];

    fn pair() -> Pair {
        let record = WireGuardPair {
            ports: [51_820u16.to_be(), 51_821u16.to_be()],
            slot: 1,
            ..Default::default()
        };
        Pair::new(record, &KEY_A, &KEY_B, Policy::default())
    }

    fn addr(last: u8, port: u16) -> SocketAddr {
        (Ipv4Addr::new(198, 51, 100, last), port).into()
    }

    /// A handshake message of `kind` with `sender` (and `receiver`), mac1 made for `to`.
    fn handshake(kind: u8, sender: u32, receiver: u32, to: &PublicKey) -> Vec<u8> {
        let len = if kind == 1 {
            INITIATION_LEN
        } else {
            RESPONSE_LEN
        };
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..8].copy_from_slice(&sender.to_le_bytes());
        if kind == 2 {
            m[8..12].copy_from_slice(&receiver.to_le_bytes());
        }
        Mac1Key::for_receiver(to).seal(&mut m);
        m
    }

    fn data(receiver: u32) -> Vec<u8> {
        let mut m = vec![0u8; 48];
        m[0] = 4;
        m[4..8].copy_from_slice(&receiver.to_le_bytes());
        m
    }

    #[test]
    fn a_handshake_learns_the_legs_and_then_data_crosses_like_the_kernel() {
        let mut p = pair();
        let now = Instant::now();
        let (ra, rb) = (addr(1, 40_000), addr(2, 50_000));
        // A initiates: nowhere to go yet. B initiates: to A's candidate, from A's port.
        assert_eq!(
            p.on_datagram(A, ra, &handshake(1, 10, 0, &KEY_B), now),
            Outcome::Refuse(Reason::DroppedWireGuardNoDestination)
        );
        assert_eq!(
            p.on_datagram(B, rb, &handshake(1, 20, 0, &KEY_A), now),
            Outcome::Relay {
                from_port: 51_820,
                to: vec![ra],
                reason: Reason::ForwardedWireGuard,
                update: None
            }
        );
        // A answers B (mac1 for B's key), B's first data goes to A, A's data binds.
        assert!(matches!(
            p.on_datagram(A, ra, &handshake(2, 11, 20, &KEY_B), now),
            Outcome::Relay {
                from_port: 51_821,
                ..
            }
        ));
        assert!(matches!(
            p.on_datagram(B, rb, &data(11), now),
            Outcome::Relay {
                from_port: 51_820,
                ..
            }
        ));
        let Outcome::Bound {
            record,
            from_port,
            to,
        } = p.on_datagram(A, ra, &data(20), now)
        else {
            panic!("not bound")
        };
        assert_eq!((from_port, to), (51_821, rb));
        assert_eq!(record.legs, [leg_at(ra), leg_at(rb)]);
        // From now on the kernel's rule decides data: both ways, and not from a stranger.
        assert_eq!(
            p.on_datagram(B, rb, &data(11), now),
            Outcome::Relay {
                from_port: 51_820,
                to: vec![ra],
                reason: Reason::ForwardedWireGuard,
                update: None
            }
        );
        assert_eq!(
            p.on_datagram(A, addr(9, 1), &data(20), now),
            Outcome::Refuse(Reason::DroppedWireGuardUnbound)
        );
        // mac1 for the wrong peer, and garbage.
        assert_eq!(
            p.on_datagram(A, ra, &handshake(1, 12, 0, &KEY_A), now),
            Outcome::Refuse(Reason::DroppedWireGuardMac1)
        );
        assert_eq!(
            p.on_datagram(A, ra, &[9; 40], now),
            Outcome::Refuse(Reason::DroppedWireGuardInvalid)
        );
        // Released: nothing crosses until learnt again.
        let record = p.release();
        assert!(record.legs.iter().all(|l| !l.is_bound()));
        assert_eq!(
            p.on_datagram(B, rb, &data(11), now),
            Outcome::Refuse(Reason::DroppedWireGuardUnbound)
        );
    }

    /// A bound leg moves: the responder is the other, bound, leg, whose data the kernel
    /// forwards itself — so the record must name the one message that completes the move, and
    /// the move clears it again.
    #[test]
    fn a_moving_leg_has_the_kernel_hand_up_the_message_that_completes_the_move() {
        let (ra, rb, moved) = (addr(1, 40_000), addr(2, 50_000), addr(1, 40_001));
        let record = WireGuardPair {
            legs: [leg_at(ra), leg_at(rb)],
            ports: [51_820u16.to_be(), 51_821u16.to_be()],
            slot: 1,
            ..Default::default()
        };
        let mut p = Pair::new(record, &KEY_A, &KEY_B, Policy::default());
        let now = Instant::now();
        // A, behind a rebound NAT, shakes hands again: to B's bound leg; B answers.
        assert!(matches!(
            p.on_datagram(A, moved, &handshake(1, 30, 0, &KEY_B), now),
            Outcome::Relay {
                from_port: 51_821,
                update: None,
                ..
            }
        ));
        assert!(matches!(
            p.on_datagram(B, rb, &handshake(2, 31, 30, &KEY_A), now),
            Outcome::Relay {
                from_port: 51_820,
                update: None,
                ..
            }
        ));
        // A's first data goes to B — and from now on the kernel hands up B's data with A's
        // new index instead of forwarding it to A's old address.
        let Outcome::Relay {
            to,
            update: Some(update),
            ..
        } = p.on_datagram(A, moved, &data(31), now)
        else {
            panic!("no record update")
        };
        assert_eq!(to, vec![rb]);
        assert_eq!((update.confirm_side, update.confirm_index), (2, 30));
        assert!(update.confirms_move(1, 30));
        // B's data on the old session still crosses to A's old address meanwhile.
        assert!(matches!(
            p.on_datagram(B, rb, &data(11), now),
            Outcome::Relay {
                from_port: 51_820,
                ..
            }
        ));
        let Outcome::Bound { record, to, .. } = p.on_datagram(B, rb, &data(30), now) else {
            panic!("the move did not complete")
        };
        assert_eq!(to, moved);
        assert_eq!(record.legs, [leg_at(moved), leg_at(rb)]);
        assert_eq!(record.confirm_side, 0, "nothing awaited any more");
    }

    #[test]
    fn an_adopted_pair_forwards_at_once() {
        let (ra, rb) = (addr(1, 40_000), addr(2, 50_000));
        let record = WireGuardPair {
            legs: [leg_at(ra), leg_at(rb)],
            ports: [51_820u16.to_be(), 51_821u16.to_be()],
            slot: 1,
            ..Default::default()
        };
        let mut p = Pair::new(record, &KEY_A, &KEY_B, Policy::default());
        assert!(matches!(
            p.on_datagram(A, ra, &data(3), Instant::now()),
            Outcome::Relay {
                from_port: 51_821,
                ..
            }
        ));
    }
}
