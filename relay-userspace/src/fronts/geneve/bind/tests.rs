use std::time::Duration;

use rand::{SeedableRng, rngs::StdRng};
use relay_common::{geneve::control::COOKIE_LEN, maps::SessionLimits};

use super::*;
use crate::control::table::{AllocationRequest, TableSettings};

struct World {
    table: SessionTable,
    jar: CookieJar,
    policy: AddressPolicy,
    rng: StdRng,
    t0: Instant,
    vni: u32,
    keys: [[u8; 32]; 2],
}

fn world() -> World {
    let mut rng = StdRng::seed_from_u64(11);
    let t0 = Instant::now();
    let mut table = SessionTable::new(TableSettings {
        max_sessions: 8,
        quotas: [("t".to_string(), 8)].into(),
        bind_lifetime: Duration::from_secs(30),
        idle_lifetime: Duration::from_secs(300),
        limits: SessionLimits::default(),
    });
    let (s, _) = table
        .allocate("t", AllocationRequest::default(), t0, 0, &mut rng)
        .unwrap();
    let (vni, keys) = (s.vni, [s.legs[0].key, s.legs[1].key]);
    World {
        jar: CookieJar::new(Duration::from_secs(120), t0, &mut rng),
        table,
        policy: AddressPolicy::strict(vec!["203.0.113.1".parse().unwrap()]),
        rng,
        t0,
        vni,
        keys,
    }
}

fn message(
    w: &World,
    kind: MessageType,
    leg: u8,
    generation: u64,
    cookie: [u8; COOKIE_LEN],
) -> [u8; CONTROL_LEN] {
    let m = ControlMessage {
        vni: w.vni,
        kind,
        leg,
        generation,
        cookie,
        observed: None,
        mac: [0; 16],
    };
    sealed(&m, &w.keys[leg as usize])
}

fn send(w: &mut World, bytes: &[u8], src: &str, after: Duration) -> BindResponse {
    handle(
        &mut w.table,
        &w.jar,
        &w.policy,
        bytes,
        src.parse().unwrap(),
        w.t0 + after,
    )
}

/// Request → Challenge → Answer → Bound for `leg` from `src`; returns the Bound response.
fn bind(w: &mut World, leg: u8, generation: u64, src: &str) -> BindResponse {
    let request = message(w, MessageType::Request, leg, generation, [0; COOKIE_LEN]);
    let r = send(w, &request, src, Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Challenged);
    let reply = r.reply.unwrap();
    assert!(
        verify_message(&w.keys[leg as usize], &reply),
        "challenge MACed with the leg key"
    );
    let challenge = ControlMessage::parse(&reply).unwrap();
    assert_eq!(challenge.kind, MessageType::Challenge);
    assert_eq!(
        (challenge.vni, challenge.leg, challenge.generation),
        (w.vni, leg, generation)
    );
    let answer = message(w, MessageType::Answer, leg, generation, challenge.cookie);
    send(w, &answer, src, Duration::from_millis(10))
}

#[test]
fn full_handshake_binds_both_legs_and_echoes_the_observed_source() {
    let mut w = world();
    let r = bind(&mut w, 0, 1, "198.51.100.10:40000");
    assert_eq!(r.outcome, BindOutcome::Accepted(BindChange::Bound));
    let bound = ControlMessage::parse(&r.reply.unwrap()).unwrap();
    assert_eq!(bound.kind, MessageType::Bound);
    let o = bound.observed.unwrap();
    assert_eq!(
        (o.family, o.port, &o.addr[..4]),
        (4, 40000, &[198, 51, 100, 10][..])
    );
    assert_eq!(w.table.get(w.vni).unwrap().state().name(), "half_bound");
    bind(&mut w, 1, 1, "[2001:db8:2::20]:40001");
    let s = w.table.get(w.vni).unwrap();
    assert_eq!(s.state().name(), "bound");
    assert_eq!(
        s.legs[1].bound,
        Some("[2001:db8:2::20]:40001".parse().unwrap())
    );
    // Dual-stack sockets report IPv4 peers as IPv4-mapped: stored (and matched) as IPv4.
    let r = bind(&mut w, 0, 2, "[::ffff:198.51.100.10]:40000");
    assert_eq!(r.outcome, BindOutcome::Accepted(BindChange::Refreshed));
}

#[test]
fn every_reply_is_exactly_as_large_as_its_request() {
    let mut w = world();
    let request = message(&w, MessageType::Request, 0, 1, [0; COOKIE_LEN]);
    let r = send(&mut w, &request, "198.51.100.10:1", Duration::ZERO);
    assert_eq!(r.reply.unwrap().len(), request.len());
    let r = bind(&mut w, 0, 2, "198.51.100.10:1");
    assert_eq!(r.reply.unwrap().len(), CONTROL_LEN);
}

#[test]
fn nat_rebinding_moves_the_leg_with_a_newer_generation_only() {
    let mut w = world();
    bind(&mut w, 0, 100, "198.51.100.10:40000");
    // The NAT changed port: the client re-binds with a newer generation.
    let r = bind(&mut w, 0, 101, "198.51.100.10:50000");
    assert_eq!(
        r.outcome,
        BindOutcome::Accepted(BindChange::Moved {
            from: "198.51.100.10:40000".parse().unwrap()
        })
    );
    // An older generation (a stale request) is not even challenged.
    let stale = message(&w, MessageType::Request, 0, 100, [0; COOKIE_LEN]);
    let r = send(&mut w, &stale, "198.51.100.10:40000", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::StaleGeneration));
    assert!(r.reply.is_none());
}

#[test]
fn replayed_answer_from_the_old_address_cannot_move_the_leg_back() {
    let mut w = world();
    // Generation 5 from the old address: capture its answer.
    let request = message(&w, MessageType::Request, 0, 5, [0; COOKIE_LEN]);
    let ch = send(&mut w, &request, "198.51.100.10:40000", Duration::ZERO)
        .reply
        .unwrap();
    let old_answer = message(
        &w,
        MessageType::Answer,
        0,
        5,
        ControlMessage::parse(&ch).unwrap().cookie,
    );
    send(&mut w, &old_answer, "198.51.100.10:40000", Duration::ZERO);
    bind(&mut w, 0, 6, "198.51.100.10:50000");
    let r = send(
        &mut w,
        &old_answer,
        "198.51.100.10:40000",
        Duration::from_secs(1),
    );
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::StaleGeneration));
    assert_eq!(
        w.table.get(w.vni).unwrap().legs[0].bound,
        Some("198.51.100.10:50000".parse().unwrap())
    );
}

#[test]
fn a_third_address_can_neither_bind_nor_hijack() {
    let mut w = world();
    bind(&mut w, 0, 1, "198.51.100.10:40000");
    // The attacker saw leg a's challenge (say, on a shared link) and answers from elsewhere:
    // the cookie is bound to the source it was issued to.
    let request = message(&w, MessageType::Request, 0, 2, [0; COOKIE_LEN]);
    let ch = send(&mut w, &request, "198.51.100.10:40000", Duration::ZERO)
        .reply
        .unwrap();
    let cookie = ControlMessage::parse(&ch).unwrap().cookie;
    let answer = message(&w, MessageType::Answer, 0, 2, cookie);
    let r = send(&mut w, &answer, "192.0.2.66:40000", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::BadCookie));
    // Without the key, nothing the attacker sends is even answered.
    let mut forged = message(&w, MessageType::Request, 0, 3, [0; COOKIE_LEN]);
    forged[60] ^= 0xff;
    let r = send(&mut w, &forged, "192.0.2.66:40000", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::BadMac));
    assert!(r.reply.is_none());
    // Leg b's key does not open leg a.
    let m = ControlMessage {
        vni: w.vni,
        kind: MessageType::Request,
        leg: 0,
        generation: 9,
        cookie: [0; COOKIE_LEN],
        observed: None,
        mac: [0; 16],
    };
    let wrong_key = sealed(&m, &w.keys[1]);
    let r = send(&mut w, &wrong_key, "192.0.2.66:40000", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::BadMac));
    assert_eq!(
        w.table.get(w.vni).unwrap().legs[0].bound,
        Some("198.51.100.10:40000".parse().unwrap())
    );
}

#[test]
fn cookies_expire_after_two_rotations() {
    let mut w = world();
    let request = message(&w, MessageType::Request, 0, 1, [0; COOKIE_LEN]);
    let ch = send(&mut w, &request, "198.51.100.10:1", Duration::ZERO)
        .reply
        .unwrap();
    let answer = message(
        &w,
        MessageType::Answer,
        0,
        1,
        ControlMessage::parse(&ch).unwrap().cookie,
    );
    w.jar
        .rotate_if_due(w.t0 + Duration::from_secs(120), &mut w.rng);
    w.jar
        .rotate_if_due(w.t0 + Duration::from_secs(240), &mut w.rng);
    let r = send(&mut w, &answer, "198.51.100.10:1", Duration::from_secs(240));
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::BadCookie));
}

#[test]
fn malformed_unknown_unexpected_and_refused_sources() {
    let mut w = world();
    let r = send(&mut w, &[0u8; 10], "198.51.100.10:1", Duration::ZERO);
    assert!(matches!(
        r.outcome,
        BindOutcome::Dropped(BindDrop::Malformed(_))
    ));
    let mut other = message(&w, MessageType::Request, 0, 1, [0; COOKIE_LEN]);
    other[6] ^= 1; // another VNI
    let r = send(&mut w, &other, "198.51.100.10:1", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::UnknownSession));
    let bound = message(&w, MessageType::Challenge, 0, 1, [0; COOKIE_LEN]);
    let r = send(&mut w, &bound, "198.51.100.10:1", Duration::ZERO);
    assert_eq!(r.outcome, BindOutcome::Dropped(BindDrop::UnexpectedType));
    let request = message(&w, MessageType::Request, 0, 1, [0; COOKIE_LEN]);
    for src in [
        "127.0.0.1:1",
        "[::ffff:127.0.0.1]:1",
        "10.0.0.1:1",
        "203.0.113.1:1",
    ] {
        let r = send(&mut w, &request, src, Duration::ZERO);
        assert_eq!(
            r.outcome,
            BindOutcome::Dropped(BindDrop::AddressRefused),
            "{src}"
        );
        assert!(r.reply.is_none());
    }
}
