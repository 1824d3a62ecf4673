//! The TURN server's state machine (RFC 8656, with RFC 5766 clients' habits), without sockets
//! or a clock: a STUN message and its 5-tuple go in with the time; the response and which
//! allocation changed come out. Relayed ports are bound through [`PortBinder`], which the daemon
//! implements with real sockets and the tests with a set.
//!
//! Decisions enforced here, and why:
//! * Every method but Binding needs long-term credentials ([`super::auth`]). Over UDP, the 401
//!   that asks for them and every other answer to a request that has not authenticated is sent
//!   only within what its source address has sent ([`super::amplification`]): the relay must
//!   not amplify spoofed traffic.
//! * An allocation belongs to its 5-tuple and its username: another username gets 441, another
//!   5-tuple finds none (437).
//! * Permissions (per peer IP, 300 s) and channels (600 s) expire on their own; only the
//!   client's requests refresh them — relayed data refreshes nothing (RFC 8656 §9, §12).
//! * Peer addresses pass the same rules as session legs (`sessions.leg_addresses`), every
//!   spelling normalised first (coturn's CVE-2020-26262, CVE-2026-27624), except that the relay's
//!   own relayed addresses are allowed: two clients of this relay talking through it is common.
//! * Channel numbers 0x4000–0x7FFF by default (RFC 5766; coturn's test client picks from all of
//!   it), 0x4000–0x4FFF with `turn.channel_numbers: rfc8656`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};
use relay_common::maps::SessionLimits;
use stun_types::{
    attribute::{
        AlternateServer, Attribute, AttributeStaticType, AttributeType, MessageIntegrity,
        MessageIntegritySha256, Nonce, PasswordAlgorithm, PasswordAlgorithmValue,
        PasswordAlgorithms, Realm, Username, XorMappedAddress,
    },
    message::{BINDING, IntegrityAlgorithm, IntegrityKey, Message, MessageClass},
};
use turn_types::{
    attribute::{
        AdditionalAddressFamily, AddressErrorCode, ChannelNumber, EvenPort, Lifetime,
        RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
        XorRelayedAddress,
    },
    message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH},
    stun::AddressFamily,
};

use super::{
    amplification::{Allowance, AmplificationGuard},
    auth::{Credentials, NonceCheck, Nonces, quota_user},
    reply::{Reply, Signer},
};
use crate::{
    control::address_policy::{AddressPolicy, normalise},
    fleet::{Alternates, Fleet},
};

/// How a client reaches the TURN port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// For logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's 5-tuple: its address, the server address it talks to, the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client as the server sees it.
    pub client: SocketAddr,
    /// The server address it sends to.
    pub server: SocketAddr,
    /// UDP, TCP or TLS.
    pub transport: Transport,
}

/// Which families an allocation relays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Families {
    /// IPv4.
    pub v4: bool,
    /// IPv6.
    pub v6: bool,
}

impl Families {
    /// Whether `ip` (normalised) is of one of these families.
    pub fn has(self, ip: IpAddr) -> bool {
        match normalise(ip) {
            IpAddr::V4(_) => self.v4,
            IpAddr::V6(_) => self.v6,
        }
    }
}

/// A relayed address: what the relay's sockets bind and what clients are told (they differ
/// behind a 1:1 NAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayedAddress {
    /// Local address the relayed ports are bound on.
    pub local: IpAddr,
    /// Address handed out in XOR-RELAYED-ADDRESS.
    pub advertised: IpAddr,
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct TurnSettings {
    /// Allocation lifetime when the client asks for none (RFC: 600 s).
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC: 300 s).
    pub permission_lifetime: Duration,
    /// Channel lifetime (RFC: 600 s).
    pub channel_lifetime: Duration,
    /// How long an EVEN-PORT reservation holds the next port.
    pub reservation_lifetime: Duration,
    /// Highest channel number accepted.
    pub channel_max: u16,
    /// Allocations the relay holds at once.
    pub max_allocations: u32,
    /// Allocations one user may hold at once.
    pub max_allocations_per_user: u32,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Relayed ports are taken from this range.
    pub ports: RangeInclusive<u16>,
    /// IPv4 relayed address, if the relay has one.
    pub relayed_v4: Option<RelayedAddress>,
    /// IPv6 relayed address, if the relay has one.
    pub relayed_v6: Option<RelayedAddress>,
    /// Rate limits per allocation and direction.
    pub limits: SessionLimits,
    /// What unauthenticated requests over UDP may be answered with beyond their source's
    /// credit ([`super::amplification`]).
    pub amplification: Allowance,
}

impl TurnSettings {
    /// RFC 8656's lifetimes and channel range (0x4000–0x4FFF) with small limits, on `ports`,
    /// with no relayed address: the base the config (which sets what operators choose), the
    /// tests and the fuzzers adjust.
    pub fn new(ports: RangeInclusive<u16>) -> TurnSettings {
        TurnSettings {
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
            channel_max: relay_common::turn::CHANNEL_MAX_RFC8656,
            max_allocations: 16,
            max_allocations_per_user: 4,
            max_permissions: 8,
            max_channels: 8,
            ports,
            relayed_v4: None,
            relayed_v6: None,
            limits: SessionLimits::default(),
            amplification: Allowance::DEFAULT,
        }
    }
}

/// The time, as the server needs it: monotonic for lifetimes, wall clock for credentials,
/// nonces and what is persisted.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Monotonic now.
    pub now: Instant,
    /// Milliseconds since the Unix epoch, now.
    pub unix_ms: u64,
}

impl Clock {
    /// The wall-clock time of `at`.
    pub fn unix_ms_of(&self, at: Instant) -> u64 {
        if at >= self.now {
            self.unix_ms + (at - self.now).as_millis() as u64
        } else {
            self.unix_ms
                .saturating_sub((self.now - at).as_millis() as u64)
        }
    }

    /// The monotonic time of wall-clock `unix_ms`.
    pub fn instant_of(&self, unix_ms: u64) -> Instant {
        if unix_ms >= self.unix_ms {
            self.now + Duration::from_millis(unix_ms - self.unix_ms)
        } else {
            self.now
                .checked_sub(Duration::from_millis(self.unix_ms - unix_ms))
                .unwrap_or(self.now)
        }
    }

    fn unix_s(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// A bound channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The peer.
    pub peer: SocketAddr,
    /// When it expires unless refreshed.
    pub expires: Instant,
}

/// One allocation.
#[derive(Clone, Debug)]
pub struct Allocation {
    /// Its slot: the key of its records in the maps, the index of its counters.
    pub slot: u32,
    /// The client's 5-tuple.
    pub five_tuple: FiveTuple,
    /// The username it was created with.
    pub username: String,
    /// Whether it authenticated with SHA-256 keys.
    pub sha256: bool,
    /// Relayed port (the same on every family).
    pub port: u16,
    /// Relayed families.
    pub families: Families,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// The Allocate that created it (a retransmission gets the same success).
    pub transaction: u128,
    /// Peer IP → when the permission expires.
    pub permissions: HashMap<IpAddr, Instant>,
    /// Channel number → channel.
    pub channels: BTreeMap<u16, Channel>,
}

impl Allocation {
    /// Whether `ip` has a live permission.
    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .get(&normalise(ip))
            .is_some_and(|e| *e > now)
    }

    /// The channels data may use now: live, with a live permission for their peer.
    pub fn live_channels(&self, now: Instant) -> impl Iterator<Item = (u16, SocketAddr)> + '_ {
        self.channels
            .iter()
            .filter(move |(_, c)| c.expires > now && self.permits(c.peer.ip(), now))
            .map(|(n, c)| (*n, c.peer))
    }

    fn channel_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|(_, c)| c.peer == peer)
            .map(|(n, _)| *n)
    }

    /// The relayed addresses, advertised form, for `settings`.
    pub fn relayed(&self, settings: &TurnSettings) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if let (true, Some(a)) = (self.families.v4, settings.relayed_v4) {
            out.push(SocketAddr::new(a.advertised, self.port));
        }
        if let (true, Some(a)) = (self.families.v6, settings.relayed_v6) {
            out.push(SocketAddr::new(a.advertised, self.port));
        }
        out
    }
}

pub use crate::fronts::BindFailure;

/// Binds and releases relayed ports on the host.
pub trait PortBinder {
    /// Binds `port` on the relayed addresses of `families`, so no other process can take it and
    /// what arrives there reaches the daemon.
    fn bind(&mut self, port: u16, families: Families) -> Result<(), BindFailure>;
    /// Closes it.
    fn release(&mut self, port: u16);
}

/// What changed in the allocations (the daemon mirrors it into its tables and the maps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The allocation in this slot was created or changed: re-read it.
    Updated(u32),
    /// The allocation in this slot is gone; its port was released.
    Removed {
        /// Its slot.
        slot: u32,
        /// Its relayed port.
        port: u16,
    },
}

/// What handling one message produced.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The response to send back, if any.
    pub reply: Option<Vec<u8>>,
    /// Which allocation changed.
    pub change: Option<Change>,
    /// What happened, for counters and logs (`allocate`, `error_401`, …).
    pub result: &'static str,
    /// Why, when it was an error (debug logs).
    pub reason: Option<String>,
}

/// An EVEN-PORT reservation: the odd port next to an allocation's, held for a later Allocate
/// with the token.
#[derive(Clone, Copy, Debug)]
struct Reservation {
    port: u16,
    families: Families,
    expires: Instant,
}

/// Attribute types this server understands; any other comprehension-required one gets 420.
const KNOWN_ATTRIBUTES: &[u16] = &[
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0017, // REQUESTED-ADDRESS-FAMILY
    0x0018, // EVEN-PORT
    0x0019, // REQUESTED-TRANSPORT
    0x001A, // DONT-FRAGMENT
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x0022, // RESERVATION-TOKEN
    0x0024, // PRIORITY (ICE, in Binding requests)
    0x0025, // USE-CANDIDATE (ICE)
];

/// Who asked, and how many bytes the request took: what an unauthenticated answer is weighed
/// against.
struct Asked {
    five_tuple: FiveTuple,
    len: usize,
}

/// An error response's code and reason.
#[derive(Debug, PartialEq, Eq)]
struct Refuse(u16, &'static str);

/// Out of file descriptors: 508 to the client, as any capacity refusal, but counted apart
/// ([`NO_DESCRIPTORS_RESULT`]) so the operator is told what to raise.
const NO_DESCRIPTORS: Refuse = Refuse(508, "the relay is out of file descriptors");

/// The result of a request refused because the process is out of file descriptors.
pub const NO_DESCRIPTORS_RESULT: &str = "error_508_no_descriptors";

/// Why a request did not authenticate.
enum Unauthenticated {
    /// Answer with a 401 or 438 challenge.
    Challenge {
        code: u16,
        result: &'static str,
        why: &'static str,
    },
    /// Answer 400.
    BadRequest(&'static str),
}

/// The TURN server.
pub struct TurnServer {
    settings: TurnSettings,
    credentials: Credentials,
    nonces: Nonces,
    policy: AddressPolicy,
    allocations: HashMap<FiveTuple, Allocation>,
    by_slot: HashMap<u32, FiveTuple>,
    free_slots: Vec<u32>,
    ports_used: HashSet<u16>,
    reservations: HashMap<u64, Reservation>,
    per_user: HashMap<String, u32>,
    guard: AmplificationGuard,
    rng: StdRng,
    /// Draining sends new allocations to the fleet's alternates.
    fleet: Arc<Fleet>,
}

impl TurnServer {
    /// A server with no allocations. `policy` decides peer addresses (its `own` list should be
    /// empty: the relay's relayed addresses are allowed peers).
    pub fn new(
        settings: TurnSettings,
        credentials: Credentials,
        nonces: Nonces,
        policy: AddressPolicy,
    ) -> TurnServer {
        let free_slots = (0..settings.max_allocations).rev().collect();
        let amplification = settings.amplification;
        TurnServer {
            settings,
            credentials,
            nonces,
            policy,
            allocations: HashMap::new(),
            by_slot: HashMap::new(),
            free_slots,
            ports_used: HashSet::new(),
            reservations: HashMap::new(),
            per_user: HashMap::new(),
            guard: AmplificationGuard::new(amplification),
            rng: StdRng::from_os_rng(),
            fleet: Arc::new(Fleet::unpinned(Alternates::default())),
        }
    }

    /// Shares the daemon's drain state and alternates.
    pub fn set_fleet(&mut self, fleet: Arc<Fleet>) {
        self.fleet = fleet;
    }

    /// Replaces the credentials (configuration reload): existing allocations keep running; their
    /// next request is checked with the new ones.
    pub fn set_credentials(&mut self, credentials: Credentials) {
        self.credentials = credentials;
    }

    /// The settings.
    pub fn settings(&self) -> &TurnSettings {
        &self.settings
    }

    /// The allocation in `slot`.
    pub fn allocation(&self, slot: u32) -> Option<&Allocation> {
        self.by_slot
            .get(&slot)
            .and_then(|f| self.allocations.get(f))
    }

    /// The allocation of a 5-tuple.
    pub fn allocation_of(&self, five_tuple: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(five_tuple)
    }

    /// Every allocation.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// Number of allocations.
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// Takes over an allocation a previous daemon left (its port must be bound again, so the
    /// binder is asked). False when it does not fit (slot taken or out of range, port not
    /// bindable): the caller removes its records.
    pub fn adopt(&mut self, allocation: Allocation, ports: &mut dyn PortBinder) -> bool {
        let slot_free = self.free_slots.contains(&allocation.slot);
        if !slot_free
            || self.allocations.contains_key(&allocation.five_tuple)
            || self.ports_used.contains(&allocation.port)
            || ports.bind(allocation.port, allocation.families).is_err()
        {
            return false;
        }
        self.free_slots.retain(|s| *s != allocation.slot);
        self.ports_used.insert(allocation.port);
        *self
            .per_user
            .entry(quota_user(&allocation.username).to_string())
            .or_default() += 1;
        self.by_slot.insert(allocation.slot, allocation.five_tuple);
        self.allocations.insert(allocation.five_tuple, allocation);
        true
    }

    /// Removes the allocation of `five_tuple` (its TCP connection closed).
    pub fn remove_client(
        &mut self,
        five_tuple: &FiveTuple,
        ports: &mut dyn PortBinder,
    ) -> Option<Change> {
        let slot = self.allocations.get(five_tuple)?.slot;
        Some(self.remove(slot, ports))
    }

    fn remove(&mut self, slot: u32, ports: &mut dyn PortBinder) -> Change {
        let five = self.by_slot.remove(&slot).expect("listed");
        let allocation = self.allocations.remove(&five).expect("listed");
        ports.release(allocation.port);
        self.ports_used.remove(&allocation.port);
        self.free_slots.push(slot);
        let user = quota_user(&allocation.username).to_string();
        if let Some(n) = self.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
        Change::Removed {
            slot,
            port: allocation.port,
        }
    }

    /// Expires what is due: allocations, permissions, channels, reservations.
    pub fn expire(&mut self, clock: &Clock, ports: &mut dyn PortBinder) -> Vec<Change> {
        let now = clock.now;
        let mut changes = Vec::new();
        let due: Vec<u32> = self
            .allocations
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.slot)
            .collect();
        for slot in due {
            changes.push(self.remove(slot, ports));
        }
        for allocation in self.allocations.values_mut() {
            let before = (allocation.permissions.len(), allocation.channels.len());
            allocation.permissions.retain(|_, e| *e > now);
            allocation.channels.retain(|_, c| c.expires > now);
            if before != (allocation.permissions.len(), allocation.channels.len()) {
                changes.push(Change::Updated(allocation.slot));
            }
        }
        let stale: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            let r = self.reservations.remove(&token).expect("listed");
            ports.release(r.port);
            self.ports_used.remove(&r.port);
        }
        changes
    }

    /// Handles a STUN message from `five_tuple`. Indications and responses produce nothing here
    /// (Send indications are relayed by the data path).
    pub fn handle(
        &mut self,
        datagram: &[u8],
        five_tuple: FiveTuple,
        clock: &Clock,
        ports: &mut dyn PortBinder,
    ) -> Outcome {
        let Ok(request) = Message::from_bytes(datagram) else {
            return Outcome {
                result: "malformed",
                ..Default::default()
            };
        };
        if !request.has_class(MessageClass::Request) {
            return Outcome {
                result: "not_a_request",
                ..Default::default()
            };
        }
        let asked = Asked {
            five_tuple,
            len: datagram.len(),
        };
        let unknown: Vec<AttributeType> = request
            .iter_attributes()
            .map(|(_, a)| a.get_type())
            .filter(|t| t.comprehension_required() && !KNOWN_ATTRIBUTES.contains(&t.value()))
            .collect();
        if !unknown.is_empty() {
            let reply = Reply::unknown_attributes(&request, &unknown).finish(None);
            return self.unverified(&asked, clock, reply, "error_420", "unknown attributes");
        }
        let method = request.method();
        if method == BINDING {
            let mut reply = Reply::success(&request);
            reply.add(&XorMappedAddress::new(
                five_tuple.client,
                request.transaction_id(),
            ));
            return self.unverified(&asked, clock, reply.finish(None), "binding", "");
        }
        if method == ALLOCATE
            && self.fleet.draining()
            && !self.allocations.contains_key(&five_tuple)
        {
            // Before authentication: the first (unauthenticated) Allocate is redirected at once
            // — where libwebrtc and coturn's uclient look for a 300 — and RFC 8489 §10 lets a
            // 300 go unsigned. What is allocated here already keeps working.
            let tls = five_tuple.transport == Transport::Tls;
            return match self.fleet.alternates().turn_for(five_tuple.client, tls) {
                Some(alternate) => {
                    let mut reply = Reply::error(&request, 300, "draining: try the alternate");
                    reply.add(&AlternateServer::new(alternate));
                    self.unverified(&asked, clock, reply.finish(None), "error_300", "draining")
                }
                None => {
                    let reply = Reply::error(&request, 508, "draining").finish(None);
                    self.unverified(&asked, clock, reply, "error_508_draining", "draining")
                }
            };
        }
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND].contains(&method) {
            let reply = Reply::error(&request, 400, "").finish(None);
            return self.unverified(&asked, clock, reply, "error_400", "unsupported method");
        }
        let (username, key, algorithm) = match self.authenticate(&request, five_tuple, clock) {
            Ok(authenticated) => authenticated,
            Err(Unauthenticated::Challenge { code, result, why }) => {
                return self.challenge(&request, &asked, clock, code, result, why);
            }
            Err(Unauthenticated::BadRequest(why)) => {
                let reply = Reply::error(&request, 400, "").finish(None);
                return self.unverified(&asked, clock, reply, "error_400", why);
            }
        };
        let signer = Signer {
            key: &key,
            algorithm,
        };
        let sha256 = algorithm == IntegrityAlgorithm::Sha256;
        let result = if method == ALLOCATE {
            self.allocate(&request, five_tuple, &username, sha256, clock, ports)
        } else {
            match self.allocations.get(&five_tuple) {
                None => Err(Refuse(437, "no allocation for this 5-tuple")),
                Some(a) if a.username != username => {
                    Err(Refuse(441, "the allocation belongs to another username"))
                }
                Some(_) if method == REFRESH => self.refresh(&request, five_tuple, clock, ports),
                Some(_) if method == CREATE_PERMISSION => {
                    self.create_permission(&request, five_tuple, clock)
                }
                Some(_) => self.channel_bind(&request, five_tuple, clock),
            }
        };
        match result {
            Ok((reply, change, result)) => Outcome {
                reply: Some(reply.finish(Some(&signer))),
                change,
                result,
                reason: None,
            },
            Err(refuse) => Outcome {
                reply: Some(Reply::error(&request, refuse.0, refuse.1).finish(Some(&signer))),
                change: None,
                result: if refuse == NO_DESCRIPTORS {
                    NO_DESCRIPTORS_RESULT
                } else {
                    error_name(refuse.0)
                },
                reason: Some(refuse.1.to_string()),
            },
        }
    }

    /// Long-term authentication (RFC 8489 §9.2.4): 401 without credentials or with wrong ones,
    /// 438 with a stale nonce, 400 with incomplete ones.
    fn authenticate(
        &self,
        request: &Message,
        five_tuple: FiveTuple,
        clock: &Clock,
    ) -> Result<(String, IntegrityKey, IntegrityAlgorithm), Unauthenticated> {
        let challenge = |code: u16, result: &'static str, why: &'static str| {
            Err(Unauthenticated::Challenge { code, result, why })
        };
        let has_sha256 = request.has_attribute(MessageIntegritySha256::TYPE);
        if !has_sha256 && !request.has_attribute(MessageIntegrity::TYPE) {
            return challenge(401, "error_401", "no credentials");
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            request.attribute::<Username>(),
            request.attribute::<Realm>(),
            request.attribute::<Nonce>(),
        ) else {
            return Err(Unauthenticated::BadRequest(
                "integrity without username, realm or nonce",
            ));
        };
        if let Ok(chosen) = request.attribute::<PasswordAlgorithm>() {
            // Bid-down protection: the client echoes the algorithms we offered.
            let offered = request.attribute::<PasswordAlgorithms>();
            let echoed = offered.is_ok_and(|o| {
                o.algorithms() == [PasswordAlgorithmValue::MD5, PasswordAlgorithmValue::SHA256]
            });
            let consistent = (chosen.algorithm() == PasswordAlgorithmValue::SHA256) == has_sha256;
            if !echoed || !consistent {
                return Err(Unauthenticated::BadRequest(
                    "password algorithms do not match what was offered",
                ));
            }
        }
        match self
            .nonces
            .check(nonce.nonce(), five_tuple.client.ip(), clock.unix_s())
        {
            NonceCheck::Fresh => {}
            NonceCheck::Stale => return challenge(438, "error_438", "stale nonce"),
            // Not ours (another server's, or from before a restart without pinned maps): a
            // client that sent credentials takes 401 as a wrong password, 438 as "retry".
            NonceCheck::Invalid => return challenge(438, "error_438", "not our nonce"),
        }
        if realm.realm() != self.credentials.realm() {
            return challenge(401, "error_401", "another realm");
        }
        let algorithm = if has_sha256 {
            IntegrityAlgorithm::Sha256
        } else {
            IntegrityAlgorithm::Sha1
        };
        let keys = match self
            .credentials
            .keys(username.username(), algorithm, clock.unix_s())
        {
            Ok(keys) => keys,
            Err(refusal) => return challenge(401, refusal.name(), "credentials refused"),
        };
        match keys
            .into_iter()
            .find(|k| request.validate_integrity_with_key(k).is_ok())
        {
            Some(key) => Ok((username.username().to_string(), key, algorithm)),
            None => challenge(401, "wrong_password", "message integrity does not verify"),
        }
    }

    /// A 401 or 438 with the realm and a fresh nonce: the full RFC 8489 challenge when the
    /// source's credit allows it, else one without PASSWORD-ALGORITHMS (and a nonce without the
    /// feature cookie, which would promise them), else nothing yet.
    fn challenge(
        &mut self,
        request: &Message,
        asked: &Asked,
        clock: &Clock,
        code: u16,
        result: &'static str,
        why: &'static str,
    ) -> Outcome {
        self.credit(asked, clock);
        let client = asked.five_tuple.client.ip();
        for features in [true, false] {
            let reply = Reply::challenge(
                request,
                code,
                self.credentials.realm(),
                &self.nonces.issue(client, clock.unix_s(), features),
                features,
            )
            .finish(None);
            if self.may_answer(&asked.five_tuple, clock, reply.len()) {
                return Outcome {
                    reply: Some(reply),
                    change: None,
                    result,
                    reason: Some(why.to_string()),
                };
            }
        }
        Outcome {
            result: "unanswered_no_credit",
            reason: Some(format!(
                "{why}: the challenge would exceed what this source has sent"
            )),
            ..Default::default()
        }
    }

    /// An unauthenticated request over UDP earns its source credit for answers
    /// ([`super::amplification`]). Authenticated ones earn none: their answers need none, and
    /// counting them would let a spoofer spend what the victim itself sent.
    fn credit(&mut self, asked: &Asked, clock: &Clock) {
        if asked.five_tuple.transport == Transport::Udp {
            self.guard
                .received(asked.five_tuple.client.ip(), asked.len, clock.now);
        }
    }

    /// Whether a response of `len` bytes may go to `five_tuple`'s client, which has not
    /// authenticated ([`super::amplification`]); spends the credit if so. Streams proved their
    /// source in their handshake.
    fn may_answer(&mut self, five_tuple: &FiveTuple, clock: &Clock, len: usize) -> bool {
        five_tuple.transport != Transport::Udp
            || self.guard.spend(five_tuple.client.ip(), len, clock.now)
    }

    /// An outcome for a request that did not authenticate: its reply only if the source's
    /// credit allows.
    fn unverified(
        &mut self,
        asked: &Asked,
        clock: &Clock,
        reply: Vec<u8>,
        result: &'static str,
        reason: &str,
    ) -> Outcome {
        self.credit(asked, clock);
        if self.may_answer(&asked.five_tuple, clock, reply.len()) {
            Outcome {
                reply: Some(reply),
                result,
                change: None,
                reason: Some(reason.to_string()).filter(|r| !r.is_empty()),
            }
        } else {
            Outcome {
                result: "unanswered_no_credit",
                reason: Some(format!(
                    "{result}: the answer would exceed what this source has sent"
                )),
                ..Default::default()
            }
        }
    }

    fn lifetime(&self, request: &Message, minimum: Duration) -> Duration {
        match request.attribute::<Lifetime>() {
            Ok(l) => Duration::from_secs(l.seconds() as u64)
                .max(minimum)
                .min(self.settings.max_lifetime),
            Err(_) => self.settings.default_lifetime,
        }
    }

    /// The families an Allocate asks for, or its error; the second value names a requested
    /// additional family this relay cannot give (reported, not fatal: RFC 8656 §7.2).
    fn requested_families(&self, request: &Message) -> Result<(Families, bool), Refuse> {
        let has = |t| request.has_attribute(t);
        let requested = has(RequestedAddressFamily::TYPE);
        let additional = has(AdditionalAddressFamily::TYPE);
        if requested && additional {
            return Err(Refuse(400, "both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY"));
        }
        let v4 = self.settings.relayed_v4.is_some();
        let v6 = self.settings.relayed_v6.is_some();
        if requested {
            return match request.attribute::<RequestedAddressFamily>() {
                Ok(f) if f.family() == AddressFamily::IPV4 && v4 => Ok((
                    Families {
                        v4: true,
                        v6: false,
                    },
                    false,
                )),
                Ok(f) if f.family() == AddressFamily::IPV6 && v6 => Ok((
                    Families {
                        v4: false,
                        v6: true,
                    },
                    false,
                )),
                _ => Err(Refuse(440, "address family not supported")),
            };
        }
        if additional {
            return match request.attribute::<AdditionalAddressFamily>() {
                Ok(f) if f.family() == AddressFamily::IPV6 => {
                    if !v4 {
                        Err(Refuse(440, "no IPv4 relayed address"))
                    } else {
                        Ok((Families { v4: true, v6 }, !v6))
                    }
                }
                _ => Err(Refuse(400, "ADDITIONAL-ADDRESS-FAMILY must be IPv6")),
            };
        }
        if v4 {
            Ok((
                Families {
                    v4: true,
                    v6: false,
                },
                false,
            ))
        } else {
            Err(Refuse(440, "no IPv4 relayed address (ask for IPv6)"))
        }
    }

    /// A free port from the range (even when `even`), bound on `families`; the refusal
    /// when none could be.
    fn take_port(
        &mut self,
        families: Families,
        even: bool,
        ports: &mut dyn PortBinder,
    ) -> Result<u16, Refuse> {
        let (lo, hi) = (*self.settings.ports.start(), *self.settings.ports.end());
        let span = (hi - lo) as u32 + 1;
        let start = self.rng.random_range(0..span);
        // Unpredictable ports, and a bounded search: at most 64 bind attempts per request.
        let mut attempts = 0;
        for i in 0..span {
            let port = lo + ((start + i) % span) as u16;
            if (even && !port.is_multiple_of(2)) || self.ports_used.contains(&port) {
                continue;
            }
            if even && (port == hi || self.ports_used.contains(&(port + 1))) {
                continue;
            }
            attempts += 1;
            match ports.bind(port, families) {
                Ok(()) => {
                    self.ports_used.insert(port);
                    return Ok(port);
                }
                Err(BindFailure::NoDescriptors) => return Err(NO_DESCRIPTORS),
                Err(_) if attempts >= 64 => break,
                Err(_) => {}
            }
        }
        Err(Refuse(508, "no relayed port free"))
    }

    fn allocate(
        &mut self,
        request: &Message,
        five_tuple: FiveTuple,
        username: &str,
        sha256: bool,
        clock: &Clock,
        ports: &mut dyn PortBinder,
    ) -> Result<(Reply, Option<Change>, &'static str), Refuse> {
        let transaction: u128 = request.transaction_id().into();
        if let Some(existing) = self.allocations.get(&five_tuple) {
            if existing.transaction == transaction && existing.username == username {
                // A retransmission: the same answer (RFC 8656 §7.2).
                let reply = self.allocate_success(request, existing, clock, None, false);
                return Ok((reply, None, "allocate_retransmission"));
            }
            return Err(Refuse(437, "an allocation exists for this 5-tuple"));
        }
        let transport = request
            .attribute::<RequestedTransport>()
            .map_err(|_| Refuse(400, "REQUESTED-TRANSPORT missing"))?;
        if transport.protocol() != RequestedTransport::UDP {
            return Err(Refuse(442, "only UDP relaying is supported"));
        }
        let token = request.attribute::<ReservationToken>().ok();
        let even = request.attribute::<EvenPort>().ok();
        if token.is_some()
            && (even.is_some() || request.has_attribute(RequestedAddressFamily::TYPE))
        {
            return Err(Refuse(
                400,
                "RESERVATION-TOKEN with EVEN-PORT or an address family",
            ));
        }
        let user = quota_user(username);
        if self.per_user.get(user).copied().unwrap_or(0) >= self.settings.max_allocations_per_user {
            return Err(Refuse(486, "allocation quota reached"));
        }
        let Some(&slot) = self.free_slots.last() else {
            return Err(Refuse(508, "the relay holds all the allocations it can"));
        };
        let (families, port, reserved, family_error) = if let Some(token) = token {
            let r = self
                .reservations
                .remove(&token.token())
                .filter(|r| r.expires > clock.now)
                .ok_or(Refuse(508, "no such reservation"))?;
            (r.families, r.port, None, false)
        } else {
            let (families, family_error) = self.requested_families(request)?;
            let reserve = even.as_ref().is_some_and(|e| e.requested());
            let port = self.take_port(families, even.is_some(), ports)?;
            let reserved = if reserve {
                if ports.bind(port + 1, families).is_ok() {
                    self.ports_used.insert(port + 1);
                    let token = self.rng.next_u64();
                    self.reservations.insert(
                        token,
                        Reservation {
                            port: port + 1,
                            families,
                            expires: clock.now + self.settings.reservation_lifetime,
                        },
                    );
                    Some(token)
                } else {
                    ports.release(port);
                    self.ports_used.remove(&port);
                    return Err(Refuse(508, "the next port is taken"));
                }
            } else {
                None
            };
            (families, port, reserved, family_error)
        };
        let lifetime = self.lifetime(request, self.settings.default_lifetime);
        self.free_slots.pop();
        let allocation = Allocation {
            slot,
            five_tuple,
            username: username.to_string(),
            sha256,
            port,
            families,
            created_unix_ms: clock.unix_ms,
            expires: clock.now + lifetime,
            transaction,
            permissions: HashMap::new(),
            channels: BTreeMap::new(),
        };
        *self.per_user.entry(user.to_string()).or_default() += 1;
        let reply = self.allocate_success(request, &allocation, clock, reserved, family_error);
        self.by_slot.insert(slot, five_tuple);
        self.allocations.insert(five_tuple, allocation);
        Ok((reply, Some(Change::Updated(slot)), "allocate"))
    }

    fn allocate_success(
        &self,
        request: &Message,
        allocation: &Allocation,
        clock: &Clock,
        reservation: Option<u64>,
        v6_unavailable: bool,
    ) -> Reply {
        let transaction = request.transaction_id();
        let mut reply = Reply::success(request);
        for relayed in allocation.relayed(&self.settings) {
            reply.add(&XorRelayedAddress::new(relayed, transaction));
        }
        let remaining = allocation.expires.saturating_duration_since(clock.now);
        reply.add(&Lifetime::new(remaining.as_secs() as u32));
        if let Some(token) = reservation {
            reply.add(&ReservationToken::new(token));
        }
        if v6_unavailable && let Ok(code) = stun_types::attribute::ErrorCode::builder(440).build() {
            reply.add(&AddressErrorCode::new(AddressFamily::IPV6, code));
        }
        reply.add(&XorMappedAddress::new(
            allocation.five_tuple.client,
            transaction,
        ));
        reply
    }

    fn refresh(
        &mut self,
        request: &Message,
        five_tuple: FiveTuple,
        clock: &Clock,
        ports: &mut dyn PortBinder,
    ) -> Result<(Reply, Option<Change>, &'static str), Refuse> {
        let allocation = self.allocations.get(&five_tuple).expect("checked");
        if let Ok(family) = request.attribute::<RequestedAddressFamily>() {
            let ip_family_present = match family.family() {
                AddressFamily::IPV4 => allocation.families.v4,
                AddressFamily::IPV6 => allocation.families.v6,
            };
            if !ip_family_present {
                return Err(Refuse(443, "the allocation has no address of that family"));
            }
        }
        let requested_zero = request
            .attribute::<Lifetime>()
            .is_ok_and(|l| l.seconds() == 0);
        if requested_zero {
            let slot = allocation.slot;
            let change = self.remove(slot, ports);
            let mut reply = Reply::success(request);
            reply.add(&Lifetime::new(0));
            return Ok((reply, Some(change), "refresh_delete"));
        }
        let lifetime = self.lifetime(request, Duration::ZERO);
        let allocation = self.allocations.get_mut(&five_tuple).expect("checked");
        allocation.expires = clock.now + lifetime;
        let mut reply = Reply::success(request);
        reply.add(&Lifetime::new(lifetime.as_secs() as u32));
        Ok((reply, Some(Change::Updated(allocation.slot)), "refresh"))
    }

    /// Checks a peer address for an allocation relaying `families`.
    fn check_peer(&self, peer: SocketAddr, families: Families) -> Result<IpAddr, Refuse> {
        let ip = normalise(peer.ip());
        if !families.has(ip) {
            return Err(Refuse(
                443,
                "peer address family differs from the relayed one",
            ));
        }
        let own = [self.settings.relayed_v4, self.settings.relayed_v6]
            .iter()
            .flatten()
            .any(|r| normalise(r.local) == ip || normalise(r.advertised) == ip);
        if !own && self.policy.refusal(ip).is_some() {
            return Err(Refuse(403, "peer address not allowed"));
        }
        Ok(ip)
    }

    fn create_permission(
        &mut self,
        request: &Message,
        five_tuple: FiveTuple,
        clock: &Clock,
    ) -> Result<(Reply, Option<Change>, &'static str), Refuse> {
        let transaction = request.transaction_id();
        let families = self.allocations[&five_tuple].families;
        let mut ips = Vec::new();
        for n in 0.. {
            let Ok(peer) = request.nth_attribute::<XorPeerAddress>(n) else {
                break;
            };
            ips.push(self.check_peer(peer.addr(transaction), families)?);
        }
        if ips.is_empty() {
            return Err(Refuse(400, "XOR-PEER-ADDRESS missing"));
        }
        let max = self.settings.max_permissions;
        let expires = clock.now + self.settings.permission_lifetime;
        let allocation = self.allocations.get_mut(&five_tuple).expect("checked");
        let new = ips
            .iter()
            .filter(|ip| !allocation.permissions.contains_key(ip))
            .collect::<HashSet<_>>()
            .len();
        if allocation.permissions.len() + new > max {
            return Err(Refuse(508, "too many permissions on this allocation"));
        }
        for ip in ips {
            allocation.permissions.insert(ip, expires);
        }
        Ok((
            Reply::success(request),
            Some(Change::Updated(allocation.slot)),
            "create_permission",
        ))
    }

    fn channel_bind(
        &mut self,
        request: &Message,
        five_tuple: FiveTuple,
        clock: &Clock,
    ) -> Result<(Reply, Option<Change>, &'static str), Refuse> {
        let (Ok(number), Ok(peer)) = (
            request.attribute::<ChannelNumber>(),
            request.attribute::<XorPeerAddress>(),
        ) else {
            return Err(Refuse(400, "CHANNEL-NUMBER or XOR-PEER-ADDRESS missing"));
        };
        let number = number.channel();
        if !(relay_common::turn::CHANNEL_MIN..=self.settings.channel_max).contains(&number) {
            return Err(Refuse(400, "channel number out of range"));
        }
        let families = self.allocations[&five_tuple].families;
        let peer = peer.addr(request.transaction_id());
        let ip = self.check_peer(peer, families)?;
        let peer = SocketAddr::new(ip, peer.port());
        let (max, channel_life, permission_life) = (
            self.settings.max_channels,
            self.settings.channel_lifetime,
            self.settings.permission_lifetime,
        );
        let allocation = self.allocations.get_mut(&five_tuple).expect("checked");
        match (
            allocation.channels.get(&number),
            allocation.channel_of(peer),
        ) {
            (Some(c), _) if c.peer != peer => {
                return Err(Refuse(400, "channel bound to another peer"));
            }
            (None, Some(_)) => return Err(Refuse(400, "peer bound to another channel")),
            (None, None) if allocation.channels.len() >= max => {
                return Err(Refuse(508, "too many channels on this allocation"));
            }
            (None, None)
                if allocation.permissions.len() >= self.settings.max_permissions
                    && !allocation.permissions.contains_key(&ip) =>
            {
                return Err(Refuse(508, "too many permissions on this allocation"));
            }
            _ => {}
        }
        allocation.channels.insert(
            number,
            Channel {
                peer,
                expires: clock.now + channel_life,
            },
        );
        allocation
            .permissions
            .insert(ip, clock.now + permission_life);
        Ok((
            Reply::success(request),
            Some(Change::Updated(allocation.slot)),
            "channel_bind",
        ))
    }
}

/// Counter name of an error code.
fn error_name(code: u16) -> &'static str {
    match code {
        400 => "error_400",
        401 => "error_401",
        403 => "error_403",
        420 => "error_420",
        437 => "error_437",
        438 => "error_438",
        440 => "error_440",
        441 => "error_441",
        442 => "error_442",
        443 => "error_443",
        486 => "error_486",
        300 => "error_300",
        508 => "error_508",
        _ => "error_other",
    }
}

#[cfg(test)]
mod tests;
