//! The TURN server's state machine (`relay_userspace::fronts::turn::server`) under a sequence of
//! requests from authenticated clients — allocations with any family, lifetime, EVEN-PORT or
//! reservation token; refreshes; permissions and channels with any peer and number — mixed with
//! raw datagrams from strangers and the passing of time.
//!
//! Invariants, after every step:
//! * Nothing panics; allocations stay within the capacity and each user's quota.
//! * Every allocation's port is bound, and no port is bound twice; channels and permissions stay
//!   within their limits, channel numbers in range, one channel per peer, every peer allowed by
//!   the policy (or one of the relay's own relayed addresses).
//! * A stranger's datagram changes nothing.
//! * Once every lifetime has passed, expiry leaves no allocation and no bound port: nothing
//!   leaks.
#![no_main]

use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relay_userspace::{
    control::address_policy::{AddressPolicy, normalise},
    fronts::turn::{
        auth::{Credentials, Nonces, StaticUser, quota_user},
        server::{
            BindFailure, Clock, Families, FiveTuple, PortBinder, RelayedAddress, Transport,
            TurnServer, TurnSettings,
        },
    },
};
use stun_types::{
    attribute::{AttributeStaticType, AttributeWrite, Nonce, RawAttribute, Realm, Username},
    message::{
        IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass,
        MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt, MessageWriteVec,
        Method, TransactionId,
    },
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, ChannelNumber, EvenPort, Lifetime, RequestedAddressFamily,
        RequestedTransport, ReservationToken, XorPeerAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH},
    stun::AddressFamily,
};

const REALM: &str = "fuzz.test";
const NONCE_KEY: [u8; 32] = [5; 32];
const MAX_ALLOCATIONS: u32 = 6;
const PER_USER: u32 = 4;

#[derive(Default)]
struct Ports {
    bound: HashSet<u16>,
}

impl PortBinder for Ports {
    fn bind(&mut self, port: u16, _: Families) -> Result<(), BindFailure> {
        // Some ports are taken by "other processes".
        if port % 7 != 3 && self.bound.insert(port) {
            Ok(())
        } else {
            Err(BindFailure::Taken)
        }
    }
    fn release(&mut self, port: u16) {
        assert!(
            self.bound.remove(&port),
            "port {port} released but not bound"
        );
    }
}

#[derive(Arbitrary, Debug)]
enum Family {
    Default,
    RequestV4,
    RequestV6,
    AdditionalV6,
    AdditionalV4,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Allocate {
        client: u8,
        family: Family,
        lifetime: Option<u32>,
        even: Option<bool>,
        token: Option<u64>,
        transport: u8,
    },
    Refresh {
        client: u8,
        lifetime: Option<u32>,
    },
    Permission {
        client: u8,
        peers: Vec<u8>,
    },
    Channel {
        client: u8,
        number: u16,
        peer: u8,
    },
    Advance(u16),
    Stranger(Vec<u8>),
}

fn settings() -> TurnSettings {
    TurnSettings {
        max_allocations: MAX_ALLOCATIONS,
        max_allocations_per_user: PER_USER,
        max_permissions: 3,
        max_channels: 3,
        relayed_v4: Some(RelayedAddress {
            local: "10.0.0.1".parse().unwrap(),
            advertised: "192.0.2.10".parse().unwrap(),
        }),
        relayed_v6: Some(RelayedAddress {
            local: "2001:db8::10".parse().unwrap(),
            advertised: "2001:db8::10".parse().unwrap(),
        }),
        ..TurnSettings::new(50_000..=50_031)
    }
}

/// Peers: allowed, private, loopback in two spellings, the relay's own, IPv6.
fn peer(n: u8) -> SocketAddr {
    let addrs = [
        "198.51.100.20:4000",
        "198.51.100.21:4001",
        "10.1.2.3:5",
        "127.0.0.1:22",
        "[::ffff:127.0.0.1]:22",
        "192.0.2.10:50001",
        "[2001:db8:5::9]:6000",
        "169.254.169.254:80",
    ];
    addrs[n as usize % addrs.len()].parse().unwrap()
}

fn client(n: u8) -> (FiveTuple, &'static str, String) {
    let five_tuple = FiveTuple {
        client: SocketAddr::new(
            format!("198.51.100.{}", 50 + n % 5).parse().unwrap(),
            40_000 + (n as u16 % 3),
        ),
        server: "10.0.0.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    // Two users: a static one and a REST one.
    if n % 2 == 0 {
        (five_tuple, "alice", "wonderland".to_string())
    } else {
        let user = "1900000000:bob";
        (
            five_tuple,
            user,
            relay_userspace::fronts::turn::auth::rest_password(b"a-long-shared-secret", user),
        )
    }
}

fn signed(
    method: Method,
    five_tuple: &FiveTuple,
    user: &str,
    password: &str,
    clock: &Clock,
    attrs: impl Fn(TransactionId) -> Vec<Box<dyn AttributeWrite>>,
) -> Vec<u8> {
    let transaction = TransactionId::generate();
    let kind = MessageType::from_class_method(MessageClass::Request, method);
    let mut m = Message::builder(kind, transaction, MessageWriteVec::new());
    for a in attrs(transaction) {
        let _ = m.add_attribute(a.as_ref());
    }
    let nonce = Nonces::new(NONCE_KEY).issue(five_tuple.client.ip(), clock.unix_ms / 1000, true);
    let _ = m.add_attribute(&Username::new(user).unwrap());
    let _ = m.add_attribute(&Realm::new(REALM).unwrap());
    let _ = m.add_attribute(&Nonce::new(&nonce).unwrap());
    let credentials: MessageIntegrityCredentials =
        LongTermKeyCredentials::new(user.into(), password.into(), REALM.into()).into();
    let _ = m.add_message_integrity(&credentials, IntegrityAlgorithm::Sha1);
    m.finish()
}

fn check(server: &TurnServer, ports: &Ports, policy: &AddressPolicy, now: Instant) {
    let s = server.settings();
    assert!(server.len() <= MAX_ALLOCATIONS as usize);
    let mut used = HashSet::new();
    let mut per_user = std::collections::HashMap::<String, u32>::new();
    for a in server.allocations() {
        assert!(
            ports.bound.contains(&a.port),
            "allocation port {} not bound",
            a.port
        );
        assert!(used.insert(a.port), "port {} shared", a.port);
        *per_user
            .entry(quota_user(&a.username).to_string())
            .or_default() += 1;
        assert!(a.channels.len() <= s.max_channels);
        assert!(a.permissions.len() <= s.max_permissions);
        let mut peers = HashSet::new();
        for (number, channel) in &a.channels {
            assert!((0x4000..=s.channel_max).contains(number));
            assert!(
                peers.insert(channel.peer),
                "two channels for {}",
                channel.peer
            );
        }
        for ip in a.permissions.keys() {
            let own = [s.relayed_v4, s.relayed_v6]
                .iter()
                .flatten()
                .any(|r| normalise(r.advertised) == *ip || normalise(r.local) == *ip);
            assert!(own || policy.allows_leg(*ip), "permission for {ip}");
            assert!(a.families.has(*ip));
        }
        let _ = a.live_channels(now).count();
    }
    assert!(per_user.values().all(|n| *n <= PER_USER));
}

fuzz_target!(|ops: Vec<Op>| {
    let policy = AddressPolicy::strict(Vec::new());
    let credentials = Credentials::new(
        REALM,
        &["a-long-shared-secret".into()],
        &[StaticUser {
            name: "alice".into(),
            password: "wonderland".into(),
        }],
        Duration::from_secs(1_000_000_000),
    );
    let mut server = TurnServer::new(
        settings(),
        credentials,
        Nonces::new(NONCE_KEY),
        policy.clone(),
    );
    let mut ports = Ports::default();
    let mut clock = Clock {
        now: Instant::now(),
        unix_ms: 1_800_000_000_000,
    };
    for op in ops.iter().take(64) {
        match op {
            Op::Allocate {
                client: c,
                family,
                lifetime,
                even,
                token,
                transport,
            } => {
                let (five, user, password) = client(*c);
                let (family, lifetime, even, token, transport) =
                    (family, *lifetime, *even, *token, *transport);
                let bytes = signed(ALLOCATE, &five, user, &password, &clock, |_| {
                    let mut a: Vec<Box<dyn AttributeWrite>> =
                        vec![Box::new(RequestedTransport::new(if transport % 4 == 0 {
                            6
                        } else {
                            17
                        }))];
                    match family {
                        Family::Default => {}
                        Family::RequestV4 => {
                            a.push(Box::new(RequestedAddressFamily::new(AddressFamily::IPV4)))
                        }
                        Family::RequestV6 => {
                            a.push(Box::new(RequestedAddressFamily::new(AddressFamily::IPV6)))
                        }
                        Family::AdditionalV6 => {
                            a.push(Box::new(AdditionalAddressFamily::new(AddressFamily::IPV6)))
                        }
                        // The codec refuses to build this one (RFC 8656 allows IPv6 only); a
                        // client may still send it.
                        Family::AdditionalV4 => a.push(Box::new(
                            RawAttribute::new(AdditionalAddressFamily::TYPE, &[1, 0, 0, 0])
                                .into_owned(),
                        )),
                    }
                    if let Some(l) = lifetime {
                        a.push(Box::new(Lifetime::new(l)));
                    }
                    if let Some(r) = even {
                        a.push(Box::new(EvenPort::new(r)));
                    }
                    if let Some(t) = token {
                        a.push(Box::new(ReservationToken::new(t)));
                    }
                    a
                });
                server.handle(&bytes, five, &clock, &mut ports);
            }
            Op::Refresh {
                client: c,
                lifetime,
            } => {
                let (five, user, password) = client(*c);
                let lifetime = *lifetime;
                let bytes = signed(REFRESH, &five, user, &password, &clock, |_| {
                    lifetime
                        .map(|l| Box::new(Lifetime::new(l)) as Box<dyn AttributeWrite>)
                        .into_iter()
                        .collect()
                });
                server.handle(&bytes, five, &clock, &mut ports);
            }
            Op::Permission { client: c, peers } => {
                let (five, user, password) = client(*c);
                let bytes = signed(CREATE_PERMISSION, &five, user, &password, &clock, |t| {
                    peers
                        .iter()
                        .take(4)
                        .map(|p| {
                            Box::new(XorPeerAddress::new(peer(*p), t)) as Box<dyn AttributeWrite>
                        })
                        .collect()
                });
                server.handle(&bytes, five, &clock, &mut ports);
            }
            Op::Channel {
                client: c,
                number,
                peer: p,
            } => {
                let (five, user, password) = client(*c);
                let (number, p) = (*number, *p);
                let bytes = signed(CHANNEL_BIND, &five, user, &password, &clock, |t| {
                    vec![
                        Box::new(ChannelNumber::new(number)),
                        Box::new(XorPeerAddress::new(peer(p), t)),
                    ]
                });
                server.handle(&bytes, five, &clock, &mut ports);
            }
            Op::Advance(seconds) => {
                let by = Duration::from_secs(*seconds as u64 % 1200);
                clock.now += by;
                clock.unix_ms += by.as_millis() as u64;
                server.expire(&clock, &mut ports);
            }
            Op::Stranger(bytes) => {
                let stranger = FiveTuple {
                    client: "203.0.113.66:1234".parse().unwrap(),
                    server: "10.0.0.1:3478".parse().unwrap(),
                    transport: Transport::Udp,
                };
                let outcome = server.handle(bytes, stranger, &clock, &mut ports);
                assert!(outcome.change.is_none(), "a stranger changed {outcome:?}");
            }
        }
        check(&server, &ports, &policy, clock.now);
    }
    // Everything ends: no allocation, no bound port left.
    for _ in 0..3 {
        clock.now += Duration::from_secs(3601);
        clock.unix_ms += 3_601_000;
        server.expire(&clock, &mut ports);
    }
    assert!(server.is_empty());
    assert!(ports.bound.is_empty(), "ports leaked: {:?}", ports.bound);
});
