use super::*;
use crate::fronts::wireguard::simulation::{Step, World};
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn addr(last: u8, port: u16) -> SocketAddr {
    (Ipv4Addr::new(198, 51, 100, last), port).into()
}

fn arrival(side: Side, from: SocketAddr, message: Message) -> Arrival {
    Arrival {
        side,
        from,
        message,
        mac1_valid: true,
        counter: 0,
    }
}

/// Both honest peers initiate (as PersistentKeepalive makes them) and the pair binds.
fn bootstrapped() -> World {
    let mut w = World::new();
    w.step(Step::Initiate(Side::A));
    assert_eq!(w.legs(), None, "A's initiation has nowhere to go yet");
    w.step(Step::Wait(4));
    w.step(Step::Initiate(Side::B));
    assert_eq!(
        w.legs(),
        Some([w.address(Side::A), w.address(Side::B)]),
        "B's initiation reached A's candidate, A answered, both used the session"
    );
    w
}

#[test]
fn bootstrap_binds_once_both_peers_use_the_session_and_data_flows() {
    let mut w = bootstrapped();
    let (a, b) = (w.received(Side::A), w.received(Side::B));
    w.step(Step::Talk(Side::A));
    w.step(Step::Talk(Side::B));
    assert_eq!((w.received(Side::A), w.received(Side::B)), (a + 1, b + 1));
}

#[test]
fn a_rebinding_peer_moves_its_leg_within_one_handshake() {
    let mut w = bootstrapped();
    w.step(Step::Rebind(Side::A));
    let before = w.received(Side::B);
    w.step(Step::Talk(Side::A));
    assert_eq!(
        w.received(Side::B),
        before,
        "data from the new address is not a leg's"
    );
    w.step(Step::Initiate(Side::A));
    assert_eq!(w.legs(), Some([w.address(Side::A), w.address(Side::B)]));
    w.step(Step::Talk(Side::A));
    assert_eq!(
        w.received(Side::B),
        before + 2,
        "the keepalive and the data"
    );
}

/// Rule 9: a peer that only receives moves; its keepalive from the new address changes nothing
/// until the other peer's next initiation, which the new address answers.
#[test]
fn a_receiving_peer_that_rebinds_moves_at_the_other_peers_next_handshake() {
    let mut w = bootstrapped();
    let old = w.legs();
    w.step(Step::Rebind(Side::A));
    w.step(Step::Talk(Side::A)); // a keepalive from the new address
    assert_eq!(w.legs(), old, "a keepalive proves nothing");
    let before = w.received(Side::A);
    w.step(Step::Talk(Side::B));
    assert_eq!(
        w.received(Side::A),
        before,
        "B's data still goes to A's old address"
    );
    // B has heard nothing for 15 s and initiates from its bound leg: the old address and the
    // roaming candidate receive it, A answers from the new one, and B's first data on the new
    // session (handed up by the kernel's rule, relayed to A only) and A's answer move A's leg.
    w.step(Step::Wait(30));
    w.step(Step::Initiate(Side::B));
    assert_eq!(w.legs(), Some([w.address(Side::A), w.address(Side::B)]));
    assert_eq!(w.received(Side::A), before + 1, "B's first data reached A");
    w.step(Step::Talk(Side::B));
    assert_eq!(w.received(Side::A), before + 2);
}

/// The legs `a` and `b` bound by A's handshake (A's data carries 9, B's carries 7).
fn bound_by_handshake(a: SocketAddr, b: SocketAddr, now: Instant) -> Legs {
    let mut legs = Legs::new(Policy::default());
    let steps = [
        (Side::A, a, Message::Initiation { sender: 7 }),
        (
            Side::B,
            b,
            Message::Response {
                sender: 9,
                receiver: 7,
            },
        ),
        (Side::A, a, Message::Data { receiver: 9 }),
        (Side::B, b, Message::Data { receiver: 7 }),
    ];
    for (side, from, message) in steps {
        legs.on_arrival(arrival(side, from, message), now);
    }
    assert_eq!(legs.legs(), Some([a, b]));
    legs
}

/// Rule 9 against an attacker that knows the live indices: it becomes a roaming candidate and
/// receives the other peer's initiations, but its responses either name a live session (and
/// are refused) or a session the initiator never uses, so no data reaches it and no leg moves.
/// A guessed index makes it nothing.
#[test]
fn an_attacker_with_observed_indices_receives_handshakes_but_never_data_or_a_leg() {
    let now = Instant::now();
    let (a, b, x, y) = (addr(1, 1000), addr(2, 2000), addr(66, 6000), addr(77, 7000));
    let mut legs = bound_by_handshake(a, b, now);
    let guessed = arrival(Side::A, y, Message::Data { receiver: 12_345 });
    assert_eq!(
        legs.on_arrival(guessed, now),
        Decision::Refuse(Refusal::Unbound)
    );
    let forged = arrival(Side::A, x, Message::Data { receiver: 9 });
    assert_eq!(
        legs.on_arrival(forged, now),
        Decision::Refuse(Refusal::Unbound)
    );
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Initiation { sender: 11 }), now),
        Decision::Relay(vec![a, x]),
        "the bound leg's initiation reaches the roaming candidate, not the guesser"
    );
    // A forged initiation from elsewhere reaches only the bound leg.
    assert_eq!(
        legs.on_arrival(arrival(Side::B, y, Message::Initiation { sender: 12 }), now),
        Decision::Relay(vec![a])
    );
    let stale = Message::Response {
        sender: 7,
        receiver: 11,
    };
    assert_eq!(
        legs.on_arrival(arrival(Side::A, x, stale), now),
        Decision::Refuse(Refusal::NotLeg),
        "an index B's data already carries"
    );
    let fresh = Message::Response {
        sender: 13,
        receiver: 11,
    };
    assert_eq!(
        legs.on_arrival(arrival(Side::A, x, fresh), now),
        Decision::Relay(vec![b])
    );
    assert_eq!(
        legs.awaiting(),
        Some((Side::B, 13)),
        "B's data on that session comes up"
    );
    // B rejects the forged response: its data stays on its session, to A.
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Data { receiver: 7 }), now),
        Decision::Relay(vec![a])
    );
    assert_eq!(
        legs.on_arrival(arrival(Side::A, x, Message::Data { receiver: 11 }), now),
        Decision::Refuse(Refusal::Unbound)
    );
    assert_eq!(legs.legs(), Some([a, b]));
    // A roaming candidate answers only the bound leg's initiations.
    let to_forged = Message::Response {
        sender: 14,
        receiver: 12,
    };
    assert_eq!(
        legs.on_arrival(arrival(Side::A, x, to_forged), now),
        Decision::Refuse(Refusal::NotLeg)
    );
    // Candidates lapse.
    let later = now + ROAMING_LIFETIME;
    assert_eq!(
        legs.on_arrival(
            arrival(Side::B, b, Message::Initiation { sender: 15 }),
            later
        ),
        Decision::Relay(vec![a])
    );
}

/// Rule 9's budget: an address that tries many indices is checked a few times a second, so
/// the right one, sent after a flood of wrong ones, does not make it a candidate.
#[test]
fn guessing_an_index_is_held_to_the_handshake_rate() {
    let now = Instant::now();
    let (a, b, x) = (addr(1, 1000), addr(2, 2000), addr(66, 6000));
    let mut legs = bound_by_handshake(a, b, now);
    for receiver in 1000..2000 {
        let guess = arrival(Side::A, x, Message::Data { receiver });
        legs.on_arrival(guess, now);
    }
    legs.on_arrival(arrival(Side::A, x, Message::Data { receiver: 9 }), now);
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Initiation { sender: 11 }), now),
        Decision::Relay(vec![a])
    );
}

/// After a restart the relay knows no earlier session: rule 9 waits until they have expired,
/// and learns indices from the rekeys it sees meanwhile.
#[test]
fn after_a_restart_rule_9_waits_until_earlier_sessions_expired() {
    let t0 = Instant::now();
    let (a, b, a2) = (addr(1, 1000), addr(2, 2000), addr(3, 3000));
    let mut legs = Legs::bound(Policy::default(), [a, b]);
    // A rekey between the legs: A's data will carry 20, B's 21.
    legs.on_arrival(arrival(Side::B, b, Message::Initiation { sender: 20 }), t0);
    let answer = Message::Response {
        sender: 21,
        receiver: 20,
    };
    assert_eq!(
        legs.on_arrival(arrival(Side::A, a, answer), t0),
        Decision::Relay(vec![b])
    );
    let keepalive = arrival(Side::A, a2, Message::Data { receiver: 20 });
    let t1 = t0 + Duration::from_secs(60);
    legs.on_arrival(keepalive, t1);
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Initiation { sender: 22 }), t1),
        Decision::Relay(vec![a]),
        "too early: sessions from before the restart may be in use"
    );
    let t2 = t0 + REJECT_AFTER_TIME;
    legs.on_arrival(keepalive, t2);
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Initiation { sender: 23 }), t2),
        Decision::Relay(vec![a, a2])
    );
}

#[test]
fn a_handshake_message_needs_mac1_and_garbage_is_invalid() {
    let mut legs = Legs::new(Policy::default());
    let now = Instant::now();
    let mut a = arrival(Side::A, addr(1, 1000), Message::Initiation { sender: 7 });
    a.mac1_valid = false;
    assert_eq!(legs.on_arrival(a, now), Decision::Refuse(Refusal::Mac1));
    a.message = Message::Invalid;
    assert_eq!(legs.on_arrival(a, now), Decision::Refuse(Refusal::Invalid));
    a.message = Message::Data { receiver: 7 };
    assert_eq!(legs.on_arrival(a, now), Decision::Refuse(Refusal::Unbound));
}

#[test]
fn responses_and_cookie_replies_go_only_to_the_initiation_they_answer() {
    let mut legs = Legs::new(Policy::default());
    let now = Instant::now();
    let (a, b, other) = (addr(1, 1000), addr(2, 2000), addr(3, 3000));
    legs.on_arrival(arrival(Side::A, a, Message::Initiation { sender: 7 }), now);
    let answer = |receiver| Message::Response {
        sender: 9,
        receiver,
    };
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, answer(8)), now),
        Decision::Refuse(Refusal::Unanswered)
    );
    assert_eq!(
        legs.on_arrival(
            arrival(Side::B, b, Message::CookieReply { receiver: 7 }),
            now
        ),
        Decision::Relay(vec![a])
    );
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, answer(7)), now),
        Decision::Relay(vec![a])
    );
    // The initiator, under load, answers the response with a cookie reply.
    assert_eq!(
        legs.on_arrival(
            arrival(Side::A, a, Message::CookieReply { receiver: 9 }),
            now
        ),
        Decision::Relay(vec![b])
    );
    // Its first data goes to the responder only; the responder's binds.
    assert_eq!(
        legs.on_arrival(arrival(Side::A, a, Message::Data { receiver: 9 }), now),
        Decision::Relay(vec![b])
    );
    assert_eq!(
        legs.on_arrival(arrival(Side::B, other, Message::Data { receiver: 7 }), now),
        Decision::Refuse(Refusal::Unbound)
    );
    assert_eq!(
        legs.on_arrival(arrival(Side::B, b, Message::Data { receiver: 7 }), now),
        Decision::Bind {
            legs: [a, b],
            to: a
        }
    );
    // Bound: only the legs answer.
    legs.on_arrival(arrival(Side::A, a, Message::Initiation { sender: 11 }), now);
    assert_eq!(
        legs.on_arrival(arrival(Side::B, other, answer(11)), now),
        Decision::Refuse(Refusal::NotLeg)
    );
}

#[test]
fn candidates_and_pending_responses_lapse() {
    let mut legs = Legs::new(Policy::default());
    let now = Instant::now();
    let (a, b) = (addr(1, 1000), addr(2, 2000));
    legs.on_arrival(arrival(Side::A, a, Message::Initiation { sender: 7 }), now);
    let later = now + CANDIDATE_LIFETIME;
    assert_eq!(
        legs.on_arrival(
            arrival(Side::B, b, Message::Initiation { sender: 8 }),
            later
        ),
        Decision::Refuse(Refusal::NoDestination)
    );
}

/// The attack that a response alone cannot stop: the attacker, a candidate for B at bootstrap,
/// receives A's initiation; B has not seen it; the attacker replays it from its own address
/// on A's port; B answers it (it is authentic and new to B); the response goes to the
/// attacker, who sends data with the responder's index. Binding would hand it A's leg — but B
/// never accepts that data, so B's own data never comes and nothing binds.
#[test]
fn a_replayed_initiation_answered_by_the_real_responder_binds_nothing() {
    let mut w = World::new();
    let forge = |port, to, kind, first, reuse| Step::Forge {
        port,
        to,
        kind,
        first,
        second: 0,
        mac1: true,
        reuse,
    };
    // The attacker becomes B's candidate; A's initiation reaches only it.
    w.step(forge(1, Side::B, 1, 0xDEAD, None));
    w.step(Step::Initiate(Side::A));
    // B appears; its own initiation goes to A's candidate (and the attacker's), which would
    // bind the real pair — so first let the attacker replay A's initiation to B.
    w.step(Step::Replay {
        port: 2,
        to: Side::A,
        which: 0,
    });
    // Nothing to relay it to yet (B unseen); B initiates, becomes a candidate, the replay
    // comes again, B answers it, the attacker gets the response and confirms with data.
    w.step(Step::Initiate(Side::B));
    w.step(Step::Release); // forget the real pair B's initiation just bound
    w.step(Step::Initiate(Side::B));
    w.step(Step::Replay {
        port: 2,
        to: Side::A,
        which: 0,
    });
    let seen_response = w.legs().is_none();
    assert!(seen_response, "the real pair was released");
    // The replayer confirms with the responder's index, from the replay's address.
    for which in 0..8 {
        w.step(forge(2, Side::A, 4, 0, Some(which)));
    }
    assert_eq!(w.legs(), None);
    // World::step asserted after each step that no leg is the attacker's.
}

#[test]
fn one_host_cannot_play_both_peers_but_two_colluding_hosts_can_at_bootstrap_only() {
    let now = Instant::now();
    let dance = |legs: &mut Legs, x1: SocketAddr, x2: SocketAddr| {
        legs.on_arrival(arrival(Side::A, x1, Message::Initiation { sender: 1 }), now);
        legs.on_arrival(arrival(Side::B, x2, Message::Initiation { sender: 2 }), now);
        legs.on_arrival(
            arrival(
                Side::B,
                x2,
                Message::Response {
                    sender: 3,
                    receiver: 1,
                },
            ),
            now,
        );
        legs.on_arrival(arrival(Side::A, x1, Message::Data { receiver: 3 }), now);
        legs.on_arrival(arrival(Side::B, x2, Message::Data { receiver: 1 }), now)
    };
    let mut legs = Legs::new(Policy::default());
    assert_eq!(
        dance(&mut legs, addr(66, 1), addr(66, 2)),
        Decision::Refuse(Refusal::Unbound)
    );
    assert_eq!(legs.legs(), None);
    // Two addresses that know both keys and both ports are indistinguishable from the peers to
    // a relay without keys (docs/security.md) …
    let (x1, x2) = (addr(66, 1), addr(67, 1));
    assert!(matches!(dance(&mut legs, x1, x2), Decision::Bind { .. }));
    // … but they cannot displace a bound pair: a leg moves only through the other leg.
    let (a, b) = (addr(1, 1000), addr(2, 2000));
    let mut legs = Legs::bound(Policy::default(), [a, b]);
    assert!(!matches!(dance(&mut legs, x1, x2), Decision::Bind { .. }));
    assert_eq!(legs.legs(), Some([a, b]));
}

#[test]
fn shared_address_policy_lets_two_peers_behind_one_nat_pair() {
    let now = Instant::now();
    let (a, b) = (addr(9, 1000), addr(9, 2000));
    for (policy, binds) in [
        (Policy::default(), false),
        (
            Policy {
                shared_address: true,
            },
            true,
        ),
    ] {
        let mut legs = Legs::new(policy);
        legs.on_arrival(arrival(Side::A, a, Message::Initiation { sender: 1 }), now);
        legs.on_arrival(
            arrival(
                Side::B,
                b,
                Message::Response {
                    sender: 2,
                    receiver: 1,
                },
            ),
            now,
        );
        legs.on_arrival(arrival(Side::A, a, Message::Data { receiver: 2 }), now);
        let last = legs.on_arrival(arrival(Side::B, b, Message::Data { receiver: 1 }), now);
        assert_eq!(matches!(last, Decision::Bind { .. }), binds, "{policy:?}");
    }
}

#[test]
fn honest_peers_bind_despite_a_flooding_replaying_attacker() {
    let mut w = World::new();
    for round in 0..12u8 {
        for port in 0..8 {
            w.step(Step::Forge {
                port,
                to: if port % 2 == 0 { Side::A } else { Side::B },
                kind: 1,
                first: u32::from(round) << 8 | u32::from(port),
                second: 0,
                mac1: true,
                reuse: None,
            });
            w.step(Step::Replay {
                port,
                to: Side::A,
                which: port,
            });
        }
        w.step(Step::Initiate(if round % 2 == 0 {
            Side::A
        } else {
            Side::B
        }));
        w.step(Step::Wait(10));
    }
    assert_eq!(w.legs(), Some([w.address(Side::A), w.address(Side::B)]));
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

/// Steps, weighted towards what attacks need: the peers' handshakes, and the attacker replaying
/// and reusing what it saw, from a few ports (so two steps often share one).
fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => side().prop_map(Step::Initiate),
        2 => side().prop_map(Step::Talk),
        1 => side().prop_map(Step::Rebind),
        1 => (0u8..30).prop_map(Step::Wait),
        1 => Just(Step::Release),
        4 => (
            0u8..3,
            side(),
            0u8..6,
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            proptest::option::weighted(0.8, 0u8..6)
        )
            .prop_map(|(port, to, kind, first, second, mac1, reuse)| Step::Forge {
                port,
                to,
                kind,
                first,
                second,
                mac1,
                reuse
            }),
        3 => (0u8..3, side(), 0u8..6)
            .prop_map(|(port, to, which)| Step::Replay { port, to, which }),
        2 => (0u8..3, side(), side()).prop_map(|(port, to, of)| Step::ForgeData { port, to, of }),
        2 => (0u8..3, side(), side(), 0u8..6)
            .prop_map(|(port, to, of, which)| Step::ForgeAnswer { port, to, of, which }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any interleaving of honest peers, NAT rebinding, time, releases and an attacker that
    /// forges and replays: no attacker address becomes a leg, no tunnel data reaches it, and
    /// every leg is an address its peer used (World::step checks after each step).
    #[test]
    fn no_attacker_address_ever_becomes_a_leg(steps in proptest::collection::vec(step(), 1..80)) {
        let mut w = World::new();
        for s in steps {
            w.step(s);
        }
    }
}

/// Rule 8: a flood of valid-mac1 initiations (from one address, then from thousands) reaches
/// the peer at most at the handshake rate, and the bound leg's own handshakes still pass.
#[test]
fn an_initiation_flood_reaches_the_peer_at_most_at_the_handshake_rate() {
    let (a, b) = (addr(1, 1000), addr(2, 2000));
    let mut legs = Legs::bound(Policy::default(), [a, b]);
    let t0 = Instant::now();
    let attacker = |i: u32| -> SocketAddr {
        if i.is_multiple_of(2) {
            addr(66, 4000)
        } else {
            // Spoofed sources: a different address each time.
            (
                Ipv4Addr::new(203, 0, 113, (i % 250) as u8),
                5000 + (i % 1000) as u16,
            )
                .into()
        }
    };
    let seconds = 10u32;
    let mut relayed = 0u32;
    // 10 000 per second for 10 s, with the real peer B initiating every 5 s among them.
    for i in 0..seconds * 10_000 {
        let now = t0 + Duration::from_micros(u64::from(i) * 100);
        let forged = arrival(Side::A, attacker(i), Message::Initiation { sender: i });
        if let Decision::Relay(to) = legs.on_arrival(forged, now) {
            assert_eq!(to, vec![b], "initiations go to the bound leg only");
            relayed += 1;
        }
        if i % 50_000 == 0 {
            let real = arrival(Side::B, b, Message::Initiation { sender: i });
            assert_eq!(
                legs.on_arrival(real, now),
                Decision::Relay(vec![a]),
                "the bound leg's handshake is never starved"
            );
        }
    }
    let bound = HandshakeRate::MAX_PER_SEC * seconds + OTHER_HANDSHAKE_BURST * 8;
    assert!(
        relayed <= bound,
        "{relayed} forged initiations relayed in {seconds} s (at most {bound})"
    );
    assert!(relayed > 0, "the limit is a rate, not a wall");
    assert_eq!(legs.legs(), Some([a, b]), "the pair stays bound");
    // The forged ones are refused under their own reason.
    let now = t0 + Duration::from_secs(u64::from(seconds));
    let mut refused = 0;
    for i in 0..100 {
        let m = arrival(Side::A, addr(66, 4000), Message::Initiation { sender: i });
        if legs.on_arrival(m, now) == Decision::Refuse(Refusal::HandshakeRate) {
            refused += 1;
        }
    }
    assert!(refused >= 100 - OTHER_HANDSHAKE_BURST, "{refused}");
    assert_eq!(
        Refusal::HandshakeRate.reason(),
        Reason::DroppedWireGuardHandshakeRate
    );
}

#[test]
fn the_bound_leg_rekeying_and_retrying_stays_within_its_budget() {
    let (a, b) = (addr(1, 1000), addr(2, 2000));
    let mut legs = Legs::bound(Policy::default(), [a, b]);
    let t0 = Instant::now();
    // A burst of a rekey crossing retries, then WireGuard's pace (one per 5 s) for a minute.
    for i in 0..LEG_HANDSHAKE_BURST {
        let m = arrival(Side::A, a, Message::Initiation { sender: i });
        assert_eq!(legs.on_arrival(m, t0), Decision::Relay(vec![b]));
    }
    for i in 1..=12u32 {
        let now = t0 + Duration::from_secs(u64::from(i) * 5);
        let m = arrival(Side::A, a, Message::Initiation { sender: 100 + i });
        assert_eq!(legs.on_arrival(m, now), Decision::Relay(vec![b]));
    }
}

/// Found by the `wireguard_legs` fuzz target when rule 8 limited every handshake message: the
/// honest peer A's three initiations used its address's budget, so its response to B's
/// initiation was dropped and the pair stayed unbound — and the attacker, replaying B's answer
/// to one of A's initiations from its own address, became the address A's first data went to.
/// Only initiations are limited (what anyone can forge, and what costs a peer a
/// Diffie-Hellman); a response or cookie reply answers a relayed initiation and is bounded by
/// them.
#[test]
fn an_honest_peers_responses_are_never_limited() {
    let mut w = World::new();
    for s in [
        Step::Forge {
            port: 45,
            to: Side::B,
            kind: 1,
            first: 65536,
            second: 0,
            mac1: true,
            reuse: None,
        },
        Step::Initiate(Side::A),
        Step::Initiate(Side::A),
        Step::Initiate(Side::A),
        Step::Initiate(Side::B),
        Step::Replay {
            port: 104,
            to: Side::A,
            which: 6,
        },
        Step::Replay {
            port: 96,
            to: Side::A,
            which: 98,
        },
        Step::Replay {
            port: 255,
            to: Side::A,
            which: 255,
        },
        Step::Replay {
            port: 104,
            to: Side::B,
            which: 104,
        },
    ] {
        w.step(s);
    }
    assert_eq!(w.legs(), Some([w.address(Side::A), w.address(Side::B)]));
}
