//! The sidecar's decisions, without sockets or a clock: where the peer's datagrams are
//! delivered, and when the leg is bound again. The sidecar's event loop feeds in what happened
//! and when; everything here is unit-tested on the host.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

/// WireGuard's conventional `ListenPort`. With no `--app`, the sidecar delivers here until the
/// application has sent something, so a WireGuard peer that only answers (a server, a NAS, any
/// peer without `PersistentKeepalive`) receives the first handshake it is sent.
pub const WIREGUARD_LISTEN_PORT: u16 = 51820;

/// Where the peer's datagrams go.
///
/// An explicit `--app` always wins. Without one, the application's own source address is used
/// once it has sent (it is where the application listens: WireGuard sends from its
/// `ListenPort`), and before that the default: the listen address's host with WireGuard's port.
#[derive(Clone, Debug)]
pub struct Delivery {
    configured: Option<SocketAddr>,
    learned: Option<SocketAddr>,
    default: SocketAddr,
}

/// Where a delivery address came from (for logs: what the user should change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverySource {
    /// `--app`.
    Configured,
    /// The address the application last sent from.
    Learned,
    /// Nothing sent yet and no `--app`: [`WIREGUARD_LISTEN_PORT`] on the listen host.
    Default,
}

impl Delivery {
    /// Delivery for a sidecar listening on `listen`, with the `--app` address if given.
    pub fn new(configured: Option<SocketAddr>, listen: SocketAddr) -> Delivery {
        Delivery {
            configured,
            learned: None,
            default: default_app_address(listen),
        }
    }

    /// The application sent a datagram from `src`. Returns true when that changes the target.
    pub fn on_app_datagram(&mut self, src: SocketAddr) -> bool {
        if self.configured.is_some() || self.learned == Some(src) {
            return false;
        }
        let before = self.target();
        self.learned = Some(src);
        before != src
    }

    /// Where to send the peer's next datagram.
    pub fn target(&self) -> SocketAddr {
        self.configured.or(self.learned).unwrap_or(self.default)
    }

    /// Why [`Delivery::target`] is what it is.
    pub fn source(&self) -> DeliverySource {
        match (self.configured, self.learned) {
            (Some(_), _) => DeliverySource::Configured,
            (None, Some(_)) => DeliverySource::Learned,
            (None, None) => DeliverySource::Default,
        }
    }
}

/// The default application address for a sidecar listening on `listen`: the same host (the
/// loopback of its family when it listens on every address) at [`WIREGUARD_LISTEN_PORT`].
pub fn default_app_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, WIREGUARD_LISTEN_PORT)
}

/// Why the sidecar starts a bind attempt on a live leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebindReason {
    /// Routing now picks another local address towards the relay (Wi-Fi to LTE, DHCP): the
    /// old binding is certainly dead.
    LocalAddressChanged,
    /// The peer's datagrams stopped arriving while the application keeps sending: the NAT may
    /// have moved the mapping, so the relay drops what we send as from an unknown source. One
    /// bind per such silence checks it (and moves the leg if the NAT moved).
    PathCheck,
    /// The periodic refresh: keeps the NAT mapping open and the session from expiring.
    Keepalive,
}

impl RebindReason {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RebindReason::LocalAddressChanged => "local address changed",
            RebindReason::PathCheck => "peer's datagrams stopped while sending",
            RebindReason::Keepalive => "keepalive",
        }
    }
}

/// What a completed bind showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// The first bind of this leg.
    First,
    /// The relay sees us where it saw us before: the path is fine.
    Unchanged,
    /// The relay sees us at a new public address (a NAT rebinding, or we moved).
    Moved {
        /// Where the relay saw us before.
        from: SocketAddr,
    },
}

/// When to bind again.
///
/// A bind costs four control datagrams and, on a moved path, is what repairs it. Binding only
/// because nothing came back would bind every few seconds under one-way traffic (a sender whose
/// peer never answers), so silence alone triggers at most one *check* per silence, and only
/// silence that follows the peer's traffic: a path that carried data both ways and then went
/// quiet one way. A check that finds the same public address proves the path works; the next
/// bind is then the keepalive. A check (or any bind) that goes unanswered is handled by the
/// handshake's retries and the event loop's fallback to binding afresh.
#[derive(Clone, Debug)]
pub struct BindSchedule {
    keepalive: Duration,
    silence: Duration,
    last_bind: Instant,
    last_from_app: Option<Instant>,
    last_from_peer: Option<Instant>,
    checked_this_silence: bool,
    observed: Option<SocketAddr>,
}

impl BindSchedule {
    /// A schedule whose first bind started at `now`.
    pub fn new(keepalive: Duration, silence: Duration, now: Instant) -> BindSchedule {
        BindSchedule {
            keepalive,
            silence,
            last_bind: now,
            last_from_app: None,
            last_from_peer: None,
            checked_this_silence: false,
            observed: None,
        }
    }

    /// The application sent a datagram.
    pub fn on_app_datagram(&mut self, now: Instant) {
        self.last_from_app = Some(now);
    }

    /// A datagram of the peer arrived through the relay: the path works both ways.
    pub fn on_peer_datagram(&mut self, now: Instant) {
        self.last_from_peer = Some(now);
        self.checked_this_silence = false;
    }

    /// A bind attempt starts now.
    pub fn on_bind_started(&mut self, now: Instant) {
        self.last_bind = now;
    }

    /// A bind completed; the relay sees us at `observed`.
    pub fn on_bound(&mut self, observed: SocketAddr) -> BindOutcome {
        let outcome = match self.observed {
            None => BindOutcome::First,
            Some(from) if from == observed => BindOutcome::Unchanged,
            Some(from) => BindOutcome::Moved { from },
        };
        self.observed = Some(observed);
        outcome
    }

    /// The public address the relay last confirmed.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// Whether to start a bind now (no attempt is under way). `local_moved`: routing picks
    /// another local address than at the last bind.
    pub fn due(&mut self, now: Instant, local_moved: bool) -> Option<RebindReason> {
        if local_moved {
            return Some(RebindReason::LocalAddressChanged);
        }
        let recent = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < self.silence);
        let peer_went_quiet = self
            .last_from_peer
            .is_some_and(|t| now.duration_since(t) >= self.silence);
        if !self.checked_this_silence
            && recent(self.last_from_app)
            && peer_went_quiet
            && now.duration_since(self.last_bind) >= self.silence
        {
            self.checked_this_silence = true;
            return Some(RebindReason::PathCheck);
        }
        if now.duration_since(self.last_bind) >= self.keepalive {
            return Some(RebindReason::Keepalive);
        }
        None
    }
}

/// At most one log line per `every`, with how many occurrences it stands for.
#[derive(Clone, Debug)]
pub struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    /// A gate that opens at most once per `every`.
    pub fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            last: None,
            since: 0,
        }
    }

    /// Records one occurrence; returns how many occurrences (this one included) the log line
    /// to write now stands for, or `None` when it is too soon to log again.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn delivery_defaults_to_wireguards_port_then_follows_the_application() {
        let mut d = Delivery::new(None, addr("127.0.0.1:51821"));
        assert_eq!(d.target(), addr("127.0.0.1:51820"));
        assert_eq!(d.source(), DeliverySource::Default);
        // WireGuard sends from its ListenPort: nothing changes.
        assert!(!d.on_app_datagram(addr("127.0.0.1:51820")));
        assert_eq!(d.source(), DeliverySource::Learned);
        // An application on another port is followed.
        assert!(d.on_app_datagram(addr("127.0.0.1:40000")));
        assert_eq!(d.target(), addr("127.0.0.1:40000"));
        assert!(!d.on_app_datagram(addr("127.0.0.1:40000")));
    }

    #[test]
    fn an_explicit_app_address_is_never_replaced() {
        let mut d = Delivery::new(Some(addr("127.0.0.1:7000")), addr("127.0.0.1:51821"));
        assert!(!d.on_app_datagram(addr("127.0.0.1:40000")));
        assert_eq!(d.target(), addr("127.0.0.1:7000"));
        assert_eq!(d.source(), DeliverySource::Configured);
    }

    #[test]
    fn the_default_address_is_on_the_listen_host() {
        assert_eq!(
            default_app_address(addr("0.0.0.0:9")),
            addr("127.0.0.1:51820")
        );
        assert_eq!(default_app_address(addr("[::]:9")), addr("[::1]:51820"));
        assert_eq!(default_app_address(addr("[::1]:9")), addr("[::1]:51820"));
        assert_eq!(
            default_app_address(addr("10.0.0.5:9")),
            addr("10.0.0.5:51820")
        );
    }

    const KEEPALIVE: Duration = Duration::from_secs(25);
    const SILENCE: Duration = Duration::from_secs(5);

    /// Runs the schedule for `seconds`, the application sending every 100 ms and the peer
    /// answering while `peer_answers(t)`; returns the reasons of the binds it started.
    fn run(seconds: u64, peer_answers: impl Fn(Duration) -> bool) -> Vec<RebindReason> {
        let t0 = Instant::now();
        let mut s = BindSchedule::new(KEEPALIVE, SILENCE, t0);
        assert_eq!(s.on_bound(addr("198.51.100.9:4000")), BindOutcome::First);
        let mut binds = Vec::new();
        for tick in 0..seconds * 10 {
            let t = Duration::from_millis(tick * 100);
            let now = t0 + t;
            s.on_app_datagram(now);
            if peer_answers(t) {
                s.on_peer_datagram(now);
            }
            if let Some(reason) = s.due(now, false) {
                binds.push(reason);
                s.on_bind_started(now);
                assert_eq!(
                    s.on_bound(addr("198.51.100.9:4000")),
                    BindOutcome::Unchanged
                );
            }
        }
        binds
    }

    #[test]
    fn one_way_traffic_binds_only_for_keepalives() {
        let binds = run(60, |_| false);
        assert_eq!(binds, vec![RebindReason::Keepalive; 2]);
    }

    #[test]
    fn two_way_traffic_binds_only_for_keepalives() {
        let binds = run(60, |_| true);
        assert_eq!(binds, vec![RebindReason::Keepalive; 2]);
    }

    #[test]
    fn a_peer_that_goes_quiet_costs_one_check_per_silence() {
        // Two-way for 10 s, one-way for 40 s, two-way again for 10 s, one-way again.
        let binds = run(80, |t| {
            let s = t.as_secs();
            s < 10 || (50..60).contains(&s)
        });
        use RebindReason::*;
        // One check 5 s into each silence; the keepalive runs 25 s after the last bind.
        assert_eq!(binds, vec![PathCheck, Keepalive, PathCheck]);
    }

    #[test]
    fn a_moved_address_and_a_new_local_address_are_reported() {
        let t0 = Instant::now();
        let mut s = BindSchedule::new(KEEPALIVE, SILENCE, t0);
        s.on_bound(addr("198.51.100.9:4000"));
        assert_eq!(
            s.on_bound(addr("198.51.100.9:5000")),
            BindOutcome::Moved {
                from: addr("198.51.100.9:4000")
            }
        );
        assert_eq!(s.observed(), Some(addr("198.51.100.9:5000")));
        assert_eq!(s.due(t0, true), Some(RebindReason::LocalAddressChanged));
        assert_eq!(s.due(t0, false), None);
    }

    #[test]
    fn log_every_reports_how_many_lines_it_stands_for() {
        let t0 = Instant::now();
        let mut gate = LogEvery::new(Duration::from_secs(10));
        assert_eq!(gate.hit(t0), Some(1));
        assert_eq!(gate.hit(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.hit(t0 + Duration::from_secs(2)), None);
        assert_eq!(gate.hit(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(gate.hit(t0 + Duration::from_secs(11)), None);
    }
}
