//! A relay session as the control plane knows it: both legs with their keys, labels and
//! bindings, who owns it, and its lifetimes.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use relay_common::{
    geneve::control::KEY_LEN,
    maps::{self as fast, FAMILY_V4, FAMILY_V6, Leg, SessionLimits},
    wireguard::WireGuardPair,
};

/// Index of a leg: 0 is "a", 1 is "b".
pub type LegIndex = usize;

/// The two legs' names as users see them.
pub const LEG_NAMES: [&str; 2] = ["a", "b"];

/// One side of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegState {
    /// The key the client proves itself with in the bind handshake.
    pub key: [u8; KEY_LEN],
    /// A human label ("alice-laptop").
    pub label: Option<String>,
    /// The address the leg proved it receives at.
    pub bound: Option<SocketAddr>,
    /// Generation of the accepted bind (0 before any).
    pub generation: u64,
    /// When the leg first bound.
    pub bound_at: Option<Instant>,
    /// Last bind or refresh: activity that keeps the leg alive even without data.
    pub last_bind: Option<Instant>,
    /// How many times the leg moved to a new address (NAT rebinding).
    pub rebinds: u32,
}

impl LegState {
    /// A leg with `key` that has not bound.
    pub fn new(key: [u8; KEY_LEN], label: Option<String>) -> LegState {
        LegState {
            key,
            label,
            bound: None,
            generation: 0,
            bound_at: None,
            last_bind: None,
            rebinds: 0,
        }
    }

    /// The fast-path map form of this leg.
    pub fn fast_path(&self) -> Leg {
        match self.bound {
            Some(addr) => leg_at(addr),
            None => Leg::default(),
        }
    }
}

/// The map form of a bound leg at `addr` (IPv4-mapped IPv6 addresses are stored as IPv4, the
/// form the kernel sees on the wire).
pub fn leg_at(addr: SocketAddr) -> Leg {
    match canonical_ip(addr.ip()) {
        IpAddr::V4(ip) => Leg::bound_v4(ip.octets(), addr.port()),
        IpAddr::V6(ip) => Leg::bound_v6(ip.octets(), addr.port()),
    }
}

/// The address a map leg holds (the inverse of [`leg_at`]; bound or not), `None` for an
/// unknown family.
pub fn address_of_leg(leg: &Leg) -> Option<SocketAddr> {
    let o = leg.octets();
    let ip: IpAddr = match leg.family {
        FAMILY_V4 => Ipv4Addr::new(o[0], o[1], o[2], o[3]).into(),
        FAMILY_V6 => Ipv6Addr::from(o).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, leg.port_host()))
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4 (sockets report IPv4 peers that way
/// on dual-stack sockets; the kernel's packets say IPv4).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// See [`canonical`].
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the session is waiting for binds or relaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionState {
    /// Neither leg bound yet.
    Allocated,
    /// One leg bound.
    HalfBound,
    /// Both legs bound: traffic flows.
    Bound,
}

impl SessionState {
    /// Lower-case name for the API, CLI and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            SessionState::Allocated => "allocated",
            SessionState::HalfBound => "half_bound",
            SessionState::Bound => "bound",
        }
    }

    /// Every state.
    pub const ALL: [SessionState; 3] = [
        SessionState::Allocated,
        SessionState::HalfBound,
        SessionState::Bound,
    ];
}

/// What kind of session: the session protocol's (`relay client` binds its legs with their
/// keys) or a pair of stock WireGuard peers (the relay learns the legs from their handshakes;
/// each leg's `key` is that peer's WireGuard public key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SessionKind {
    /// A Geneve session (`fronts::geneve`).
    #[default]
    Geneve,
    /// A stock WireGuard pair (`fronts::wireguard`).
    WireGuard(WireGuardSession),
}

/// What a WireGuard pair has beyond a session's legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireGuardSession {
    /// The relay port each peer sends to (peer a's, peer b's), host order.
    pub ports: [u16; 2],
    /// Whether both peers may be behind one IP address.
    pub shared_address: bool,
    /// A pending leg move: the side whose port the confirming data arrives on (1 + side, 0:
    /// none) and its receiver index — mirrored into the fast path's record.
    pub confirm: (u8, u32),
}

/// A session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Session id (24 bits, random, never 0).
    pub vni: u32,
    /// Counter slot in the per-session maps.
    pub slot: u32,
    /// Name of the API token that allocated it.
    pub token: String,
    /// When it was allocated (monotonic).
    pub created: Instant,
    /// When it was allocated (wall clock, ms since the Unix epoch) for display.
    pub created_unix_ms: u64,
    /// Leg a and leg b.
    pub legs: [LegState; 2],
    /// Time allowed for both legs to bind.
    pub bind_lifetime: Duration,
    /// Idle time after which a bound session expires.
    pub idle_lifetime: Duration,
    /// The caller's idempotency key, if it gave one.
    pub idempotency_key: Option<String>,
    /// Rate limits applied by both forwarders.
    pub limits: SessionLimits,
    /// Geneve session or WireGuard pair.
    pub kind: SessionKind,
}

impl Session {
    /// The WireGuard pair's particulars, if it is one.
    pub fn wireguard(&self) -> Option<&WireGuardSession> {
        match &self.kind {
            SessionKind::WireGuard(w) => Some(w),
            SessionKind::Geneve => None,
        }
    }

    /// The fast path's record of a WireGuard pair (`None` for a Geneve session).
    pub fn wireguard_record(&self) -> Option<WireGuardPair> {
        let w = self.wireguard()?;
        Some(WireGuardPair {
            legs: [self.legs[0].fast_path(), self.legs[1].fast_path()],
            ports: w.ports.map(u16::to_be),
            slot: self.slot,
            limits: self.limits,
            confirm_index: w.confirm.1,
            confirm_side: w.confirm.0,
            shared_address: w.shared_address.into(),
            reserved: [0; 2],
            id: self.vni,
        })
    }

    /// Waiting, half bound or relaying.
    pub fn state(&self) -> SessionState {
        match (self.legs[0].bound.is_some(), self.legs[1].bound.is_some()) {
            (true, true) => SessionState::Bound,
            (false, false) => SessionState::Allocated,
            _ => SessionState::HalfBound,
        }
    }

    /// The fast-path map value.
    pub fn fast_path(&self) -> fast::Session {
        fast::Session {
            legs: [self.legs[0].fast_path(), self.legs[1].fast_path()],
            slot: self.slot,
            limits: self.limits,
            vni: self.vni,
        }
    }
}
