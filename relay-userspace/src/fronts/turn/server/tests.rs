//! The TURN state machine driven by a test client built from the same codec real clients use.

use std::collections::HashSet;

use stun_types::{
    attribute::{AttributeWrite, ErrorCode, Software, UnknownAttributes},
    message::{
        LongTermKeyCredentials, MessageIntegrityCredentials, MessageWrite, MessageWriteExt,
        MessageWriteVec, TransactionId,
    },
};

use super::*;
use crate::fronts::turn::auth::{StaticUser, rest_password, rest_username};

const REALM: &str = "relay.test";
const SECRET: &str = "a-long-shared-secret";
const T0_UNIX_MS: u64 = 1_800_000_000_000;

/// Relayed ports, as a set.
#[derive(Default)]
struct Ports {
    bound: HashSet<u16>,
    refuse: HashSet<u16>,
    /// Every bind fails as if the process had no descriptor left (EMFILE).
    out_of_descriptors: bool,
}

impl PortBinder for Ports {
    fn bind(&mut self, port: u16, _families: Families) -> Result<(), BindFailure> {
        if self.out_of_descriptors {
            return Err(BindFailure::NoDescriptors);
        }
        if !self.refuse.contains(&port) && self.bound.insert(port) {
            Ok(())
        } else {
            Err(BindFailure::Taken)
        }
    }
    fn release(&mut self, port: u16) {
        assert!(self.bound.remove(&port), "released {port} twice");
    }
}

fn settings() -> TurnSettings {
    TurnSettings {
        channel_max: relay_common::turn::CHANNEL_MAX_RFC5766,
        max_allocations: 4,
        max_allocations_per_user: 2,
        max_permissions: 4,
        max_channels: 4,
        relayed_v4: Some(RelayedAddress {
            local: "10.0.0.1".parse().unwrap(),
            advertised: "203.0.113.1".parse().unwrap(),
        }),
        ..TurnSettings::new(50_000..=50_063)
    }
}

/// [`settings`] with credit alone against amplification (no allowance beyond it).
fn strict() -> TurnSettings {
    TurnSettings {
        amplification: super::super::amplification::Allowance::NONE,
        ..settings()
    }
}

struct Harness {
    server: TurnServer,
    ports: Ports,
    clock: Clock,
}

impl Harness {
    fn new(settings: TurnSettings) -> Harness {
        let credentials = Credentials::new(
            REALM,
            &[SECRET.to_string()],
            &[StaticUser {
                name: "alice".into(),
                password: "wonderland".into(),
            }],
            Duration::from_secs(86_400),
        );
        Harness {
            server: TurnServer::new(
                settings,
                credentials,
                Nonces::new([3; 32]),
                AddressPolicy::strict(Vec::new()),
            ),
            ports: Ports::default(),
            clock: Clock {
                now: Instant::now(),
                unix_ms: T0_UNIX_MS,
            },
        }
    }

    fn advance(&mut self, by: Duration) {
        self.clock.now += by;
        self.clock.unix_ms += by.as_millis() as u64;
    }

    fn send(&mut self, client: &Client, bytes: &[u8]) -> Outcome {
        self.server
            .handle(bytes, client.five_tuple, &self.clock, &mut self.ports)
    }

    fn expire(&mut self) -> Vec<Change> {
        self.server.expire(&self.clock, &mut self.ports)
    }
}

/// A client with long-term credentials.
#[derive(Clone)]
struct Client {
    five_tuple: FiveTuple,
    username: String,
    password: String,
    nonce: Option<String>,
    algorithm: IntegrityAlgorithm,
    fingerprint: bool,
}

fn client(addr: &str) -> Client {
    Client {
        five_tuple: FiveTuple {
            client: addr.parse().unwrap(),
            server: "10.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        },
        username: "alice".into(),
        password: "wonderland".into(),
        nonce: None,
        algorithm: IntegrityAlgorithm::Sha1,
        fingerprint: true,
    }
}

impl Client {
    /// A request; signed when the client has a nonce; `pad` bytes of SOFTWARE make it larger.
    fn request(&self, method: Method, attrs: &[&dyn AttributeWrite], pad: usize) -> Vec<u8> {
        self.request_with(method, TransactionId::generate(), attrs, pad)
    }

    fn request_with(
        &self,
        method: Method,
        transaction: TransactionId,
        attrs: &[&dyn AttributeWrite],
        pad: usize,
    ) -> Vec<u8> {
        let kind =
            stun_types::message::MessageType::from_class_method(MessageClass::Request, method);
        let mut m = Message::builder(kind, transaction, MessageWriteVec::new());
        for a in attrs {
            m.add_attribute(*a).unwrap();
        }
        if pad > 0 {
            m.add_attribute(&Software::new(&"x".repeat(pad)).unwrap())
                .unwrap();
        }
        if let Some(nonce) = &self.nonce {
            m.add_attribute(&Username::new(&self.username).unwrap())
                .unwrap();
            m.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
            m.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
            let credentials: MessageIntegrityCredentials = LongTermKeyCredentials::new(
                self.username.clone(),
                self.password.clone(),
                REALM.into(),
            )
            .into();
            m.add_message_integrity(&credentials, self.algorithm)
                .unwrap();
        }
        if self.fingerprint {
            m.add_fingerprint().unwrap();
        }
        m.finish()
    }

    /// Takes the nonce of a 401/438.
    fn learn(&mut self, reply: &[u8]) {
        let m = Message::from_bytes(reply).unwrap();
        self.nonce = Some(m.attribute::<Nonce>().unwrap().nonce().to_string());
    }
}

use stun_types::message::Method;

/// The error code of a response (0 for a success).
fn code(reply: &[u8]) -> u16 {
    let m = Message::from_bytes(reply).unwrap();
    if m.has_class(MessageClass::Success) {
        0
    } else {
        m.attribute::<ErrorCode>().unwrap().code()
    }
}

fn udp() -> RequestedTransport {
    RequestedTransport::new(RequestedTransport::UDP)
}

/// Authenticates and allocates; returns the client, the relayed address, the lifetime.
fn allocated(h: &mut Harness, addr: &str) -> (Client, SocketAddr, u32) {
    let mut c = client(addr);
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    assert_eq!(code(first.reply.as_ref().unwrap()), 401, "{first:?}");
    c.learn(first.reply.as_ref().unwrap());
    let request = c.request(ALLOCATE, &[&udp()], 0);
    let out = h.send(&c, &request);
    let reply = out.reply.expect("an answer");
    assert_eq!(code(&reply), 0, "{:?}", out.reason);
    assert_eq!(out.result, "allocate");
    let m = Message::from_bytes(&reply).unwrap();
    let tid = m.transaction_id();
    let relayed = m.attribute::<XorRelayedAddress>().unwrap().addr(tid);
    let lifetime = m.attribute::<Lifetime>().unwrap().seconds();
    assert_eq!(
        m.attribute::<XorMappedAddress>().unwrap().addr(tid),
        c.five_tuple.client
    );
    // Signed with the client's key, fingerprinted like the request.
    let key = LongTermKeyCredentials::new(c.username.clone(), c.password.clone(), REALM.into())
        .make_key(IntegrityAlgorithm::Sha1);
    assert!(m.validate_integrity_with_key(&key).is_ok());
    assert!(m.has_attribute(stun_types::attribute::Fingerprint::TYPE));
    (c, relayed, lifetime)
}

#[test]
fn an_allocation_after_the_challenge_relays_from_the_advertised_address() {
    let mut h = Harness::new(settings());
    let (c, relayed, lifetime) = allocated(&mut h, "198.51.100.9:40000");
    assert_eq!(relayed.ip().to_string(), "203.0.113.1");
    assert!((50_000..=50_063).contains(&relayed.port()));
    assert!(h.ports.bound.contains(&relayed.port()));
    assert_eq!(lifetime, 600);
    let a = h.server.allocation_of(&c.five_tuple).unwrap();
    assert_eq!((a.port, a.username.as_str()), (relayed.port(), "alice"));
}

#[test]
fn challenges_carry_realm_nonce_and_algorithms_within_what_the_source_sent() {
    let mut h = Harness::new(strict());
    let c = client("198.51.100.9:40000");
    // A large request: the full challenge at once.
    let big = c.request(ALLOCATE, &[&udp()], 64);
    let out = h.send(&c, &big);
    let reply = out.reply.unwrap();
    assert!(reply.len() <= big.len());
    let m = Message::from_bytes(&reply).unwrap();
    assert_eq!(m.attribute::<Realm>().unwrap().realm(), REALM);
    assert!(
        m.attribute::<Nonce>()
            .unwrap()
            .nonce()
            .starts_with("obMatJos2")
    );
    assert!(m.has_attribute(PasswordAlgorithms::TYPE));
    // A small request (coturn's client opens with 52 bytes) gets nothing, its retransmission
    // the challenge: never more bytes than the source sent.
    let mut small = client("198.51.100.10:40000");
    small.fingerprint = false;
    let request = small.request(ALLOCATE, &[&udp()], 0);
    let first = h.send(&small, &request);
    assert!(first.reply.is_none());
    assert_eq!(first.result, "unanswered_no_credit");
    let mut total_sent = request.len();
    let mut total_answered = 0;
    let mut reply = None;
    for _ in 0..4 {
        let out = h.send(&small, &request);
        total_sent += request.len();
        if let Some(r) = out.reply {
            total_answered += r.len();
            reply = Some(r);
            break;
        }
    }
    let reply = reply.expect("a challenge after some retransmissions");
    assert_eq!(code(&reply), 401);
    assert!(
        total_answered <= total_sent,
        "{total_answered} > {total_sent}"
    );
    // Over TCP the handshake proved the source: answered at once.
    let mut tcp = client("198.51.100.11:40000");
    tcp.five_tuple.transport = Transport::Tcp;
    tcp.fingerprint = false;
    let out = h.send(&tcp, &tcp.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 401);
}

#[test]
fn binding_is_answered_within_what_the_source_sent() {
    let mut h = Harness::new(strict());
    let mut c = client("198.51.100.9:40000");
    c.fingerprint = false;
    let bare = c.request(BINDING, &[], 0);
    assert!(h.send(&c, &bare).reply.is_none());
    let out = h.send(&c, &bare);
    let reply = out.reply.expect("answered on the retransmission");
    let m = Message::from_bytes(&reply).unwrap();
    assert_eq!(
        m.attribute::<XorMappedAddress>()
            .unwrap()
            .addr(m.transaction_id()),
        c.five_tuple.client
    );
    assert!(reply.len() <= 2 * bare.len());
}

#[test]
fn a_retransmitted_allocate_gets_the_same_answer_another_gets_437() {
    let mut h = Harness::new(settings());
    let (c, relayed, _) = allocated(&mut h, "198.51.100.9:40000");
    let tid: u128 = h.server.allocation_of(&c.five_tuple).unwrap().transaction;
    let again = c.request_with(ALLOCATE, tid.into(), &[&udp()], 0);
    let out = h.send(&c, &again);
    assert_eq!(out.result, "allocate_retransmission");
    let m = Message::from_bytes(out.reply.as_ref().unwrap()).unwrap();
    assert_eq!(
        m.attribute::<XorRelayedAddress>()
            .unwrap()
            .addr(m.transaction_id()),
        relayed
    );
    let other = h.send(&c, &c.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&other.reply.unwrap()), 437);
    assert_eq!(h.server.len(), 1);
}

#[test]
fn credentials_are_checked_rest_static_expired_wrong_and_stale() {
    let mut h = Harness::new(settings());
    let mut c = client("198.51.100.9:40000");
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    c.learn(first.reply.as_ref().unwrap());
    // Wrong password.
    let mut wrong = c.clone();
    wrong.password = "guess".into();
    let out = h.send(&wrong, &wrong.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(
        (code(&out.reply.unwrap()), out.result),
        (401, "wrong_password")
    );
    // Expired REST credential.
    let mut expired = c.clone();
    expired.username = rest_username("bob", T0_UNIX_MS / 1000 - 1);
    expired.password = rest_password(SECRET.as_bytes(), &expired.username);
    let out = h.send(&expired, &expired.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(
        (code(&out.reply.unwrap()), out.result),
        (401, "expired_credential")
    );
    // A valid REST credential, with SHA-256 keys.
    let mut rest = c.clone();
    rest.username = rest_username("bob", T0_UNIX_MS / 1000 + 3600);
    rest.password = rest_password(SECRET.as_bytes(), &rest.username);
    rest.algorithm = IntegrityAlgorithm::Sha256;
    let out = h.send(&rest, &rest.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 0, "{:?}", out.reason);
    // A stale nonce: 438 with a fresh one, which then works.
    h.advance(crate::fronts::turn::auth::NONCE_LIFETIME + Duration::from_secs(1));
    let mut late = client("198.51.100.9:40001");
    late.nonce = c.nonce.clone();
    let out = h.send(&late, &late.request(ALLOCATE, &[&udp()], 0));
    let reply = out.reply.unwrap();
    assert_eq!(code(&reply), 438);
    late.learn(&reply);
    let out = h.send(&late, &late.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 0);
}

#[test]
fn transport_attributes_and_unknown_attributes_are_refused_with_their_codes() {
    let mut h = Harness::new(settings());
    let (c, ..) = allocated(&mut h, "198.51.100.9:40000");
    let mut other = c.clone();
    other.five_tuple.client = "198.51.100.9:40001".parse().unwrap();
    let tcp = RequestedTransport::new(RequestedTransport::TCP);
    let out = h.send(&other, &other.request(ALLOCATE, &[&tcp], 0));
    assert_eq!(code(&out.reply.unwrap()), 442);
    let out = h.send(&other, &other.request(ALLOCATE, &[], 0));
    assert_eq!(code(&out.reply.unwrap()), 400);
    let v6 = RequestedAddressFamily::new(AddressFamily::IPV6);
    let out = h.send(&other, &other.request(ALLOCATE, &[&udp(), &v6], 0));
    assert_eq!(code(&out.reply.unwrap()), 440);
    // An unknown comprehension-required attribute: 420 naming it.
    let unknown =
        stun_types::attribute::RawAttribute::new(AttributeType::new(0x7777), &[1, 2, 3, 4]);
    let out = h.send(&other, &other.request(ALLOCATE, &[&unknown, &udp()], 0));
    let reply = out.reply.unwrap();
    assert_eq!(code(&reply), 420);
    let m = Message::from_bytes(&reply).unwrap();
    assert!(
        m.attribute::<UnknownAttributes>()
            .unwrap()
            .has_attribute(AttributeType::new(0x7777))
    );
}

#[test]
fn even_port_reserves_the_next_one_for_its_token() {
    let mut s = settings();
    s.max_allocations_per_user = 4;
    let mut h = Harness::new(s);
    let mut c = client("198.51.100.9:40000");
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    c.learn(first.reply.as_ref().unwrap());
    let out = h.send(&c, &c.request(ALLOCATE, &[&udp(), &EvenPort::new(true)], 0));
    let reply = out.reply.unwrap();
    let m = Message::from_bytes(&reply).unwrap();
    let port = m
        .attribute::<XorRelayedAddress>()
        .unwrap()
        .addr(m.transaction_id())
        .port();
    assert_eq!(port % 2, 0);
    let token = m.attribute::<ReservationToken>().unwrap().token();
    assert!(h.ports.bound.contains(&(port + 1)), "the odd port is held");
    let mut rtcp = c.clone();
    rtcp.five_tuple.client = "198.51.100.9:40001".parse().unwrap();
    let out = h.send(
        &rtcp,
        &rtcp.request(ALLOCATE, &[&udp(), &ReservationToken::new(token)], 0),
    );
    let m = Message::from_bytes(out.reply.as_ref().unwrap()).unwrap();
    assert_eq!(
        m.attribute::<XorRelayedAddress>()
            .unwrap()
            .addr(m.transaction_id())
            .port(),
        port + 1
    );
    // The token is used up.
    let mut third = c.clone();
    third.five_tuple.client = "198.51.100.9:40002".parse().unwrap();
    let out = h.send(
        &third,
        &third.request(ALLOCATE, &[&udp(), &ReservationToken::new(token)], 0),
    );
    assert_eq!(code(&out.reply.unwrap()), 508);
}

#[test]
fn an_unused_reservation_is_released_after_its_lifetime() {
    let mut h = Harness::new(settings());
    let mut c = client("198.51.100.9:40000");
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    c.learn(first.reply.as_ref().unwrap());
    h.send(&c, &c.request(ALLOCATE, &[&udp(), &EvenPort::new(true)], 0));
    assert_eq!(h.ports.bound.len(), 2);
    h.advance(Duration::from_secs(31));
    h.expire();
    assert_eq!(h.ports.bound.len(), 1);
}

#[test]
fn dual_stack_allocations_report_a_family_the_relay_lacks() {
    let mut s = settings();
    s.relayed_v6 = Some(RelayedAddress {
        local: "2001:db8::1".parse().unwrap(),
        advertised: "2001:db8::1".parse().unwrap(),
    });
    let mut h = Harness::new(s);
    let mut c = client("198.51.100.9:40000");
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    c.learn(first.reply.as_ref().unwrap());
    let both = AdditionalAddressFamily::new(AddressFamily::IPV6);
    let out = h.send(&c, &c.request(ALLOCATE, &[&udp(), &both], 0));
    let m = Message::from_bytes(out.reply.as_ref().unwrap()).unwrap();
    let tid = m.transaction_id();
    let first_addr = m.nth_attribute::<XorRelayedAddress>(0).unwrap().addr(tid);
    let second = m.nth_attribute::<XorRelayedAddress>(1).unwrap().addr(tid);
    assert!(first_addr.is_ipv4() && second.is_ipv6());
    assert_eq!(first_addr.port(), second.port());
    // A v4-only relay allocates v4 and says why not v6.
    let mut h = Harness::new(settings());
    let mut c = client("198.51.100.9:40000");
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
    c.learn(first.reply.as_ref().unwrap());
    let out = h.send(&c, &c.request(ALLOCATE, &[&udp(), &both], 0));
    let m = Message::from_bytes(out.reply.as_ref().unwrap()).unwrap();
    assert!(m.has_attribute(AddressErrorCode::TYPE));
    assert!(m.nth_attribute::<XorRelayedAddress>(1).is_err());
}

#[test]
fn quotas_per_user_then_capacity() {
    let mut s = settings();
    s.max_allocations = 3;
    let mut h = Harness::new(s);
    allocated(&mut h, "198.51.100.9:40000");
    allocated(&mut h, "198.51.100.9:40001");
    let mut third = client("198.51.100.9:40002");
    let first = h.send(&third, &third.request(ALLOCATE, &[&udp()], 64));
    third.learn(first.reply.as_ref().unwrap());
    let out = h.send(&third, &third.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 486);
    // Another user fits once, then the relay is full.
    let mut bob = third.clone();
    bob.username = rest_username("bob", T0_UNIX_MS / 1000 + 60);
    bob.password = rest_password(SECRET.as_bytes(), &bob.username);
    assert_eq!(
        code(
            &h.send(&bob, &bob.request(ALLOCATE, &[&udp()], 0))
                .reply
                .unwrap()
        ),
        0
    );
    bob.five_tuple.client = "198.51.100.9:40003".parse().unwrap();
    let out = h.send(&bob, &bob.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 508);
}

#[test]
fn permissions_follow_the_peer_rules_and_expire_on_their_own() {
    let mut h = Harness::new(settings());
    let (c, relayed, _) = allocated(&mut h, "198.51.100.9:40000");
    let tid = TransactionId::generate();
    let peer = |addr: &str| XorPeerAddress::new(addr.parse().unwrap(), tid);
    let ok = h.send(
        &c,
        &c.request_with(CREATE_PERMISSION, tid, &[&peer("198.51.100.20:1")], 0),
    );
    assert_eq!(code(&ok.reply.unwrap()), 0);
    assert_eq!(ok.change, Some(Change::Updated(0)));
    let a = h.server.allocation_of(&c.five_tuple).unwrap();
    assert!(a.permits("198.51.100.20".parse().unwrap(), h.clock.now));
    for (bad, want) in [
        ("10.1.2.3:1", 403),
        ("127.0.0.1:1", 403),
        ("[::ffff:127.0.0.1]:1", 403),
        ("169.254.169.254:80", 403),
        ("[2001:db8::5]:1", 443),
    ] {
        let tid = TransactionId::generate();
        let p = XorPeerAddress::new(bad.parse().unwrap(), tid);
        let out = h.send(&c, &c.request_with(CREATE_PERMISSION, tid, &[&p], 0));
        assert_eq!(code(&out.reply.unwrap()), want, "{bad}");
    }
    // The relay's own relayed address is a fine peer (two clients of this relay).
    let tid = TransactionId::generate();
    let own = XorPeerAddress::new(relayed, tid);
    let out = h.send(&c, &c.request_with(CREATE_PERMISSION, tid, &[&own], 0));
    assert_eq!(code(&out.reply.unwrap()), 0);
    // Another 5-tuple has no allocation; another user may not touch this one.
    let stranger = client("198.51.100.9:49999");
    let mut stranger = stranger;
    stranger.nonce = c.nonce.clone();
    let tid = TransactionId::generate();
    let p = XorPeerAddress::new("198.51.100.20:1".parse().unwrap(), tid);
    let out = h.send(
        &stranger,
        &stranger.request_with(CREATE_PERMISSION, tid, &[&p], 0),
    );
    assert_eq!(code(&out.reply.unwrap()), 437);
    let mut bob = c.clone();
    bob.username = rest_username("bob", T0_UNIX_MS / 1000 + 60);
    bob.password = rest_password(SECRET.as_bytes(), &bob.username);
    let out = h.send(&bob, &bob.request_with(CREATE_PERMISSION, tid, &[&p], 0));
    assert_eq!(code(&out.reply.unwrap()), 441);
    // Data refreshes nothing: 300 s later the permission is gone.
    h.advance(Duration::from_secs(301));
    assert_eq!(h.expire(), vec![Change::Updated(0)]);
    let a = h.server.allocation_of(&c.five_tuple).unwrap();
    assert!(!a.permits("198.51.100.20".parse().unwrap(), h.clock.now));
}

#[test]
fn channels_bind_refresh_conflict_and_respect_the_range() {
    let mut h = Harness::new(settings());
    let (c, ..) = allocated(&mut h, "198.51.100.9:40000");
    let bind = |h: &mut Harness, number: u16, peer: &str| {
        let tid = TransactionId::generate();
        let p = XorPeerAddress::new(peer.parse().unwrap(), tid);
        let out = h.send(
            &c,
            &c.request_with(CHANNEL_BIND, tid, &[&ChannelNumber::new(number), &p], 0),
        );
        code(&out.reply.unwrap())
    };
    assert_eq!(bind(&mut h, 0x7fff, "198.51.100.20:5000"), 0);
    // Rebinding the same pair refreshes; another peer on it, or another channel for the peer,
    // conflicts.
    assert_eq!(bind(&mut h, 0x7fff, "198.51.100.20:5000"), 0);
    assert_eq!(bind(&mut h, 0x7fff, "198.51.100.21:5000"), 400);
    assert_eq!(bind(&mut h, 0x4001, "198.51.100.20:5000"), 400);
    assert_eq!(bind(&mut h, 0x3fff, "198.51.100.22:5000"), 400);
    assert_eq!(bind(&mut h, 0x4002, "10.0.0.9:5000"), 403);
    let a = h.server.allocation_of(&c.five_tuple).unwrap();
    let live: Vec<_> = a.live_channels(h.clock.now).collect();
    assert_eq!(live, vec![(0x7fff, "198.51.100.20:5000".parse().unwrap())]);
    // The permission (300 s) lapses before the channel (600 s): the channel is unusable.
    h.advance(Duration::from_secs(301));
    h.expire();
    let a = h.server.allocation_of(&c.five_tuple).unwrap();
    assert_eq!(a.live_channels(h.clock.now).count(), 0);
    assert_eq!(a.channels.len(), 1);
    // Strict RFC 8656 numbering.
    let mut strict = settings();
    strict.channel_max = relay_common::turn::CHANNEL_MAX_RFC8656;
    let mut h = Harness::new(strict);
    let (c2, ..) = allocated(&mut h, "198.51.100.9:40000");
    let tid = TransactionId::generate();
    let p = XorPeerAddress::new("198.51.100.20:5000".parse().unwrap(), tid);
    let out = h.send(
        &c2,
        &c2.request_with(CHANNEL_BIND, tid, &[&ChannelNumber::new(0x5000), &p], 0),
    );
    assert_eq!(code(&out.reply.unwrap()), 400);
}

#[test]
fn refresh_extends_and_zero_deletes_releasing_the_port() {
    let mut h = Harness::new(settings());
    let (c, relayed, _) = allocated(&mut h, "198.51.100.9:40000");
    h.advance(Duration::from_secs(500));
    let out = h.send(&c, &c.request(REFRESH, &[&Lifetime::new(7200)], 0));
    let m = Message::from_bytes(out.reply.as_ref().unwrap()).unwrap();
    assert_eq!(m.attribute::<Lifetime>().unwrap().seconds(), 3600);
    h.advance(Duration::from_secs(3000));
    assert!(h.expire().is_empty(), "refreshed: still alive");
    let out = h.send(&c, &c.request(REFRESH, &[&Lifetime::new(0)], 0));
    assert_eq!(code(out.reply.as_ref().unwrap()), 0);
    assert_eq!(
        out.change,
        Some(Change::Removed {
            slot: 0,
            port: relayed.port()
        })
    );
    assert!(h.ports.bound.is_empty());
    assert!(h.server.is_empty());
}

#[test]
fn an_allocation_expires_at_its_lifetime() {
    let mut h = Harness::new(settings());
    let (_, relayed, _) = allocated(&mut h, "198.51.100.9:40000");
    h.advance(Duration::from_secs(599));
    assert!(h.expire().is_empty());
    h.advance(Duration::from_secs(2));
    assert_eq!(
        h.expire(),
        vec![Change::Removed {
            slot: 0,
            port: relayed.port()
        }]
    );
    assert!(h.ports.bound.is_empty());
}

#[test]
fn ports_taken_by_other_processes_are_skipped() {
    let mut h = Harness::new(settings());
    h.ports.refuse = (50_000..=50_062).collect();
    let (_, relayed, _) = allocated(&mut h, "198.51.100.9:40000");
    assert_eq!(relayed.port(), 50_063);
}

#[test]
fn out_of_descriptors_is_508_counted_apart_and_stops_the_search() {
    let mut h = Harness::new(settings());
    let (c, _, _) = allocated(&mut h, "198.51.100.9:40000");
    h.ports.out_of_descriptors = true;
    let mut c2 = client("198.51.100.9:40001");
    c2.nonce = c.nonce.clone();
    let out = h.send(&c2, &c2.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&out.reply.unwrap()), 508);
    assert_eq!(out.result, NO_DESCRIPTORS_RESULT);
    assert!(out.change.is_none());
    // Descriptors free again: the same client allocates.
    h.ports.out_of_descriptors = false;
    let out = h.send(&c2, &c2.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(out.result, "allocate", "{:?}", out.reason);
}

#[test]
fn bind_failures_are_classified_by_errno() {
    let io = std::io::Error::from_raw_os_error;
    assert_eq!(BindFailure::of(&io(24)), BindFailure::NoDescriptors);
    assert_eq!(BindFailure::of(&io(23)), BindFailure::NoDescriptors);
    assert_eq!(BindFailure::of(&io(98)), BindFailure::Taken);
    assert_eq!(BindFailure::of(&io(99)), BindFailure::Other);
}

/// The case docs/turn.md was wrong about: a victim that has just sent authenticated requests
/// (a Refresh every few seconds) gave a spoofer posing as it credit to spend. Authenticated
/// requests earn no credit now, so the spoofer buys the victim at most what it spent itself,
/// beyond what the victim's own unauthenticated requests earned (and their answers spent).
#[test]
fn a_spoofer_cannot_spend_what_the_victim_sent_authenticated() {
    let mut h = Harness::new(strict());
    let (victim, _, _) = allocated(&mut h, "198.51.100.9:40000");
    // The victim's authenticated requests: answered whatever the credit, and earning none.
    let mut victim_sent = 0;
    for _ in 0..20 {
        let refresh = victim.request(REFRESH, &[&Lifetime::new(600)], 100);
        victim_sent += refresh.len();
        let out = h.send(&victim, &refresh);
        assert_eq!(code(&out.reply.unwrap()), 0);
    }
    assert!(victim_sent > 3000, "{victim_sent}");
    // The spoofer: unauthenticated Allocates and Bindings from the victim's address and port.
    let mut spoofer = client("198.51.100.9:40000");
    spoofer.fingerprint = false;
    let (mut spent, mut answered) = (0, 0);
    for i in 0..100 {
        let request = if i % 2 == 0 {
            spoofer.request(ALLOCATE, &[&udp()], 0)
        } else {
            spoofer.request(BINDING, &[], 0)
        };
        spent += request.len();
        if let Some(reply) = h.send(&spoofer, &request).reply {
            answered += reply.len();
        }
    }
    assert!(answered > 0, "the rule still answers retransmissions");
    assert!(
        answered <= spent,
        "the victim received {answered} bytes for the spoofer's {spent}"
    );
}

/// The relay's default allowance: a client's small first request gets its challenge at once,
/// and a spoofer buys its victim at most the per-address allowance beyond what it spent.
#[test]
fn by_default_a_small_first_request_is_answered_at_once_within_the_allowance() {
    use super::super::amplification::Allowance;
    let mut h = Harness::new(settings());
    let mut c = client("198.51.100.10:40000");
    c.fingerprint = false;
    let first = h.send(&c, &c.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(&first.reply.expect("answered at once")), 401);
    let mut spoofer = client("198.51.100.9:40000");
    spoofer.fingerprint = false;
    let (mut spent, mut answered) = (0, 0);
    for _ in 0..2000 {
        let request = spoofer.request(ALLOCATE, &[&udp()], 0);
        spent += request.len();
        if let Some(reply) = h.send(&spoofer, &request).reply {
            answered += reply.len();
        }
    }
    let allowance = Allowance::DEFAULT.per_address as usize;
    assert!(
        answered <= spent + allowance,
        "{answered} answered for {spent} spent (allowance {allowance})"
    );
    assert!(answered > spent, "the allowance was used");
}

#[test]
fn a_draining_server_sends_new_allocations_to_an_alternate_of_their_family_and_keeps_the_rest() {
    use crate::fleet::{Alternates, Fleet};
    let mut h = Harness::new(settings());
    // Allocated before the drain.
    let (mut kept, _, _) = allocated(&mut h, "198.51.100.9:40000");
    let fleet = Arc::new(Fleet::unpinned(Alternates {
        api: vec![],
        turn: vec![
            "192.0.2.20:3478".parse().unwrap(),
            "[2001:db8:2::20]:3478".parse().unwrap(),
        ],
        turns: vec![],
    }));
    h.server.set_fleet(fleet.clone());
    fleet.set_draining(true).unwrap();

    // A new client's first (unauthenticated) Allocate: 300 with its family's alternate.
    for (addr, alternate) in [
        ("198.51.100.10:40000", "192.0.2.20:3478"),
        ("[2001:db8:a::10]:40000", "[2001:db8:2::20]:3478"),
    ] {
        let c = client(addr);
        let out = h.send(&c, &c.request(ALLOCATE, &[&udp()], 64));
        let reply = out.reply.expect("an answer");
        assert_eq!(code(&reply), 300, "{:?}", out.reason);
        assert_eq!(out.result, "error_300");
        let m = Message::from_bytes(&reply).unwrap();
        assert_eq!(
            m.attribute::<AlternateServer>().unwrap().server(),
            alternate.parse::<SocketAddr>().unwrap()
        );
    }
    // An authenticated one too (a client that had a nonce from before the drain).
    let mut late = client("198.51.100.11:40000");
    late.nonce = kept.nonce.clone();
    let out = h.send(&late, &late.request(ALLOCATE, &[&udp()], 0));
    assert_eq!(code(out.reply.as_ref().unwrap()), 300);
    assert_eq!(h.server.len(), 1, "nothing new was allocated");

    // What was allocated keeps working: a Refresh is answered.
    let refresh = kept.request(REFRESH, &[&Lifetime::new(600)], 0);
    let out = h.send(&kept, &refresh);
    assert_eq!(code(out.reply.as_ref().unwrap()), 0, "{:?}", out.reason);
    kept.fingerprint = true;

    // Over TLS there is no alternate of that family here: 508, not a redirect to nowhere.
    let mut tls = client("198.51.100.12:40000");
    tls.five_tuple.transport = Transport::Tls;
    let out = h.send(&tls, &tls.request(ALLOCATE, &[&udp()], 64));
    assert_eq!(code(out.reply.as_ref().unwrap()), 508);
    assert_eq!(out.result, "error_508_draining");

    // Undrained: allocations again.
    fleet.set_draining(false).unwrap();
    allocated(&mut h, "198.51.100.13:40000");
}
