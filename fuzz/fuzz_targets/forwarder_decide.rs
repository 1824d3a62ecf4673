//! The userspace forwarder's decision (`relay_userspace::fronts::geneve::decide`) for an arbitrary
//! datagram from an arbitrary source, against a session with arbitrary legs — bound or not, any
//! family tag, any address, including IPv4-mapped IPv6 sources as a dual-stack socket reports
//! them.
//!
//! Invariants:
//! * Malformed and control datagrams are told apart exactly as `Datagram::classify` says, before
//!   any session is looked up.
//! * A datagram is forwarded only when both legs are bound and the (canonical) source is exactly
//!   one leg's address and port; it goes to the other leg's address, with that session's slot and
//!   limits and the reason matching the two families.
//! * Conversely, for legs as the control plane builds them (`leg_at` of a bound address), a data
//!   packet from either leg's address is forwarded.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relay_common::{
    geneve::{Datagram, GENEVE_PROTOCOL_DATA, GeneveHdr},
    maps::{Leg, Session, SessionLimits},
    verdict::Reason,
};
use relay_userspace::{
    control::{
        persist::leg_address,
        session::{canonical, leg_at},
    },
    fronts::geneve::decide::{Decision, decide},
};

#[derive(Arbitrary, Debug)]
enum LegInput {
    /// A leg as the control plane writes it after a bind.
    Bound(SocketAddr),
    /// Any bit pattern the map could hold.
    Raw {
        addr: [u16; 8],
        port: u16,
        family: u8,
        bound: u8,
    },
}

impl LegInput {
    fn leg(&self) -> Leg {
        match *self {
            LegInput::Bound(addr) => leg_at(addr),
            LegInput::Raw {
                addr,
                port,
                family,
                bound,
            } => Leg {
                addr,
                port,
                family,
                bound,
            },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Source {
    Any(SocketAddr),
    /// A leg's own address (so the forwarding branch is reached), optionally IPv4-mapped.
    Leg {
        index: bool,
        mapped: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    legs: [LegInput; 2],
    slot: u32,
    limits: (u32, u32),
    /// Whether the lookup knows the datagram's VNI.
    known: bool,
    source: Source,
    /// Prefix the payload with a valid data header for the session (else `payload` as is).
    data_header: Option<u32>,
    payload: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let session = Session {
        legs: [input.legs[0].leg(), input.legs[1].leg()],
        slot: input.slot,
        limits: SessionLimits {
            packets_per_sec: input.limits.0,
            kbytes_per_sec: input.limits.1,
        },
        vni: 1,
    };
    let src = match input.source {
        Source::Any(addr) => addr,
        Source::Leg { index, mapped } => {
            let Some(addr) = leg_address(&session.legs[usize::from(index)]) else {
                return;
            };
            match (addr.ip(), mapped) {
                (IpAddr::V4(v4), true) => SocketAddr::new(v4.to_ipv6_mapped().into(), addr.port()),
                _ => addr,
            }
        }
    };
    let payload = match input.data_header {
        Some(vni) => {
            let mut p = GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA)
                .to_bytes()
                .to_vec();
            p.extend_from_slice(&input.payload);
            p
        }
        None => input.payload.clone(),
    };
    let class = Datagram::classify(&payload);
    let lookup = |vni: u32| {
        assert_eq!(
            class,
            Datagram::Data { vni },
            "looked up a non-data datagram"
        );
        input.known.then_some(session)
    };
    let decision = decide(&payload, src, lookup);
    match class {
        Datagram::Malformed => assert_eq!(decision, Decision::Drop(Reason::DroppedMalformed)),
        Datagram::Control { .. } => assert_eq!(decision, Decision::Control),
        Datagram::Data { .. } if !input.known => {
            assert_eq!(decision, Decision::Drop(Reason::DroppedUnknownVni));
        }
        Datagram::Data { .. } => check_data(&session, &input.legs, canonical(src), decision),
    }
});

fn check_data(session: &Session, legs: &[LegInput; 2], src: SocketAddr, decision: Decision) {
    let both_bound = session.legs.iter().all(Leg::is_bound);
    match decision {
        Decision::Forward {
            to,
            from_leg,
            slot,
            limits,
            reason,
        } => {
            assert!(both_bound, "forwarded for a half-bound session");
            assert_eq!(leg_address(&session.legs[from_leg]), Some(src));
            assert_eq!(leg_address(&session.legs[1 - from_leg]), Some(to));
            // The sender matched by address and port; leg a wins when both legs are the sender.
            if from_leg == 1 {
                assert_ne!(leg_address(&session.legs[0]), Some(src));
            }
            assert_eq!((slot, limits), (session.slot, session.limits));
            assert_eq!(reason, Reason::forwarded(src.is_ipv6(), to.is_ipv6()));
        }
        // Also when the sender's peer is flagged bound but has no address family (a state only
        // a corrupted map holds): nothing is sent to an address that cannot be formed.
        Decision::Drop(Reason::DroppedUnbound) => {
            assert!(!both_bound || session.legs.iter().any(|l| leg_address(l).is_none()));
        }
        Decision::Drop(Reason::DroppedWrongSource) => {
            assert!(both_bound);
            // Legs the control plane built are found by their own address.
            for (leg, input) in session.legs.iter().zip(legs) {
                if matches!(input, LegInput::Bound(_)) {
                    assert_ne!(
                        leg_address(leg),
                        Some(src),
                        "a bound leg's own packet dropped"
                    );
                }
            }
        }
        other => panic!("data for a known session decided as {other:?}"),
    }
}
