//! What the userspace forwarder does with one datagram received on the relay port: the same
//! classification and forwarding rule as the XDP program (`relay_common::geneve::Datagram`,
//! `relay_common::forward`), applied to what the socket delivers (source address and payload).

use std::net::{IpAddr, SocketAddr};

use relay_common::{
    forward::{decide_v4, decide_v6},
    geneve::Datagram,
    maps::{self as fast, Leg},
    verdict::Reason,
};

use crate::control::{persist::leg_address, session::canonical};

/// The forwarder's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send the payload unchanged to `to`.
    Forward {
        /// The other leg.
        to: SocketAddr,
        /// Index of the sending leg.
        from_leg: usize,
        /// The session's counter slot.
        slot: u32,
        /// The session's rate limits.
        limits: fast::SessionLimits,
        /// Which forwarding reason to count.
        reason: Reason,
    },
    /// A bind-handshake message for the control plane.
    Control,
    /// Drop, counted under the reason.
    Drop(Reason),
}

/// Decides a datagram `payload` from `src`, looking sessions up with `lookup`.
pub fn decide(
    payload: &[u8],
    src: SocketAddr,
    lookup: impl Fn(u32) -> Option<fast::Session>,
) -> Decision {
    let vni = match Datagram::classify(payload) {
        Datagram::Malformed => return Decision::Drop(Reason::DroppedMalformed),
        Datagram::Control { .. } => return Decision::Control,
        Datagram::Data { vni } => vni,
    };
    let Some(session) = lookup(vni) else {
        return Decision::Drop(Reason::DroppedUnknownVni);
    };
    let src = canonical(src);
    let from_v6 = src.is_ipv6();
    let direction = match src.ip() {
        IpAddr::V4(ip) => {
            let leg = Leg::bound_v4(ip.octets(), src.port());
            decide_v4(&session, leg.v4_words(), leg.port)
        }
        IpAddr::V6(ip) => {
            let leg = Leg::bound_v6(ip.octets(), src.port());
            decide_v6(&session, &leg.addr, leg.port)
        }
    };
    let direction = match direction {
        Ok(d) => d,
        Err(reason) => return Decision::Drop(reason),
    };
    let Some(to) = leg_address(&session.legs[direction.to]) else {
        return Decision::Drop(Reason::DroppedUnbound);
    };
    Decision::Forward {
        to,
        from_leg: direction.from,
        slot: session.slot,
        limits: session.limits,
        reason: Reason::forwarded(from_v6, to.is_ipv6()),
    }
}

#[cfg(test)]
mod tests {
    use relay_common::geneve::{GENEVE_PROTOCOL_BIND, GENEVE_PROTOCOL_DATA, GeneveHdr};

    use super::*;
    use crate::control::session::leg_at;

    fn data(vni: u32) -> Vec<u8> {
        let mut v = GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA)
            .to_bytes()
            .to_vec();
        v.extend_from_slice(b"payload");
        v
    }

    fn session() -> fast::Session {
        fast::Session {
            legs: [
                leg_at("198.51.100.1:1000".parse().unwrap()),
                leg_at("[2001:db8::2]:2000".parse().unwrap()),
            ],
            slot: 9,
            ..Default::default()
        }
    }

    fn lookup(vni: u32) -> Option<fast::Session> {
        (vni == 7).then(session)
    }

    #[test]
    fn forwards_between_legs_across_families() {
        assert_eq!(
            decide(&data(7), "198.51.100.1:1000".parse().unwrap(), lookup),
            Decision::Forward {
                to: "[2001:db8::2]:2000".parse().unwrap(),
                from_leg: 0,
                slot: 9,
                limits: Default::default(),
                reason: Reason::ForwardedV4ToV6
            }
        );
        assert_eq!(
            decide(&data(7), "[2001:db8::2]:2000".parse().unwrap(), lookup),
            Decision::Forward {
                to: "198.51.100.1:1000".parse().unwrap(),
                from_leg: 1,
                slot: 9,
                limits: Default::default(),
                reason: Reason::ForwardedV6ToV4
            }
        );
        // A dual-stack socket reports the IPv4 leg as IPv4-mapped: still leg a.
        assert!(matches!(
            decide(
                &data(7),
                "[::ffff:198.51.100.1]:1000".parse().unwrap(),
                lookup
            ),
            Decision::Forward { from_leg: 0, .. }
        ));
    }

    #[test]
    fn same_verdicts_as_the_fast_path_for_everything_else() {
        let src = "198.51.100.1:1000".parse().unwrap();
        assert_eq!(
            decide(&data(8), src, lookup),
            Decision::Drop(Reason::DroppedUnknownVni)
        );
        assert_eq!(
            decide(&data(7), "198.51.100.1:1001".parse().unwrap(), lookup),
            Decision::Drop(Reason::DroppedWrongSource)
        );
        assert_eq!(
            decide(&data(7)[..7], src, lookup),
            Decision::Drop(Reason::DroppedMalformed)
        );
        let ctl = GeneveHdr::new(7, true, GENEVE_PROTOCOL_BIND).to_bytes();
        assert_eq!(decide(&ctl, src, lookup), Decision::Control);
        let half = |vni: u32| {
            (vni == 7).then(|| {
                let mut s = session();
                s.legs[1] = Leg::default();
                s
            })
        };
        assert_eq!(
            decide(&data(7), src, half),
            Decision::Drop(Reason::DroppedUnbound)
        );
    }
}
