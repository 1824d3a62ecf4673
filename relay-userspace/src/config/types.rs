//! The configuration tree. Defaults live next to the fields (and in
//! `deploy/relay.example.yaml`, which documents every one of them).

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use relay_common::{geneve::VNI_MAX, maps::DEFAULT_PIN_DIR};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP program attaches to; their addresses are the default listen addresses.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// The kernel fast path.
    #[serde(default)]
    pub xdp: XdpConfig,
    /// The relay's UDP side.
    #[serde(default)]
    pub relay: RelaySection,
    /// The allocation API.
    pub api: ApiConfig,
    /// Session limits and lifetimes.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// bpffs directory for the pinned maps and XDP links.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Prometheus metrics (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// The TURN server front (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnConfig>,
    /// The stock WireGuard front (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardConfig>,
    /// This relay's fleet: the other relays clients are sent to while it drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetConfig>,
}

/// `fleet:` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The fleet's other relays, in the order clients should try them while this one drains.
    pub alternates: Vec<AlternateConfig>,
}

/// One other relay of the fleet.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlternateConfig {
    /// Its API's base URL, named in the 503 that refuses new sessions and pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// Its TURN addresses (UDP and TCP), per family: TURN's ALTERNATE-SERVER.
    pub turn: Vec<SocketAddr>,
    /// Its TURN-over-TLS addresses, per family.
    pub turns: Vec<SocketAddr>,
}

/// `wireguard:` section: pairs of stock WireGuard peers relayed without client software. A
/// pair is a kind of session (same tokens, quotas, rate limits); it lives until deleted.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WireGuardConfig {
    /// The pairs' relay ports, two consecutive ones per pair (peer a's, peer b's), written
    /// `first-last`.
    pub relay_ports: PortRange,
    /// `PersistentKeepalive` of the `[Peer]` snippets, in seconds (1 to 600): it keeps the
    /// peers' NAT mappings open and makes them shake hands as soon as they are configured.
    pub keepalive: u32,
    /// A learnt leg that has sent nothing for this long is released; the next handshake
    /// learns it again (the pair itself stays until deleted).
    #[serde(with = "duration")]
    pub idle_lifetime: Duration,
}

/// Default WireGuard relay ports: 2000 pairs, apart from TURN's default range.
pub const DEFAULT_WIREGUARD_PORTS: PortRange = PortRange {
    first: 45_000,
    last: 48_999,
};

impl Default for WireGuardConfig {
    fn default() -> Self {
        WireGuardConfig {
            relay_ports: DEFAULT_WIREGUARD_PORTS,
            keepalive: 25,
            idle_lifetime: Duration::from_secs(180),
        }
    }
}

/// `metrics:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` endpoint (no authentication: keep it on loopback or a private
    /// network).
    pub listen: SocketAddr,
    /// Export per-session byte counters for this many of the busiest sessions (0: none; each
    /// scrape then reads every session's counters).
    #[serde(default)]
    pub top_sessions: usize,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (fails when the driver lacks native XDP).
    Native,
    /// In the stack (works everywhere, slower).
    Generic,
    /// Native, falling back to generic (the fallback is logged and shown by `relay stats`).
    #[default]
    Auto,
    /// No XDP: the userspace forwarder carries everything.
    Off,
}

impl XdpMode {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Auto => "auto",
            XdpMode::Off => "off",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `xdp:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// Attach mode.
    pub mode: XdpMode,
    /// Enable IPv4/IPv6 forwarding on the XDP interfaces (the kernel's route lookup for XDP
    /// requires it). With `false` the operator must enable it, else everything takes the slow
    /// path (counted as `passed_fib_forwarding_disabled`).
    pub manage_forwarding: bool,
    /// How long a cached route lookup is trusted.
    #[serde(with = "duration")]
    pub nexthop_cache_ttl: Duration,
    /// Entries of the per-CPU next-hop cache (rounded up to a power of two).
    pub nexthop_cache_entries: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig {
            mode: XdpMode::Auto,
            manage_forwarding: true,
            nexthop_cache_ttl: Duration::from_secs(1),
            nexthop_cache_entries: relay_common::maps::DEFAULT_NEXTHOP_CACHE_ENTRIES,
        }
    }
}

/// Default relay UDP port: Geneve's IANA port, since every relay datagram is Geneve.
pub const DEFAULT_RELAY_PORT: u16 = 6081;

/// `relay:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// UDP port clients send to.
    pub port: u16,
    /// Local addresses the relay receives on (at most one per family). Empty: the addresses of
    /// `interfaces`.
    pub listen: Vec<IpAddr>,
    /// Public endpoints handed to clients, per family (behind a 1:1 NAT these differ from
    /// `listen`). Missing: the listen address and port of that family.
    pub advertise: Advertise,
    /// Userspace forwarder threads (sockets per family with SO_REUSEPORT); 0 = one per CPU.
    pub workers: usize,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            port: DEFAULT_RELAY_PORT,
            listen: Vec::new(),
            advertise: Advertise::default(),
            workers: 0,
        }
    }
}

/// Advertised endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    /// IPv4 endpoint, e.g. `198.51.100.7:6081`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<SocketAddr>,
    /// IPv6 endpoint, e.g. `[2001:db8::7]:6081`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<SocketAddr>,
}

/// `api:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on. Anything but a loopback address needs `tls`: tokens and
    /// session keys must not cross a network in clear text.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (reloaded on SIGHUP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Who may allocate sessions (reloaded on SIGHUP).
    pub tokens: Vec<TokenConfig>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests per second accepted from one source address, with bursts of up to a second's
    /// worth; the excess gets 429 before its token is even looked at. 0 = unlimited.
    #[serde(default = "default_requests_per_sec")]
    pub requests_per_sec_per_source: u32,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> usize {
    4096
}

fn default_requests_per_sec() -> u32 {
    20
}

/// `api.tls:` the API's certificate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Longest session lifetime or rotation period: pinned sessions keep their lifetimes in
/// 32-bit milliseconds (49.7 days), and longer ones serve no purpose a restart should change.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Minimum length of a plaintext API token (guessing must be hopeless).
pub const MIN_TOKEN_LEN: usize = 16;

/// One API token.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name shown in logs, the CLI and metrics.
    pub name: String,
    /// The secret, in plaintext (at least 16 characters)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// ...or its SHA-256 in hex, so the file holds no secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Sessions this token may hold at once.
    #[serde(default = "default_token_quota")]
    pub max_sessions: u32,
    /// May drain and undrain this relay (`relay drain`): an operator's token, not an
    /// application's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

fn default_token_quota() -> u32 {
    1000
}

/// `sessions:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Sessions the relay holds at once (all tokens); also the BPF map capacity.
    pub max_sessions: u32,
    /// An allocated session whose legs are not both bound within this time expires.
    #[serde(with = "duration")]
    pub bind_lifetime: Duration,
    /// A bound session expires when one leg has sent nothing (data or bind) for this long.
    /// Clients re-bind every 25 s by default, so live tunnels never reach it.
    #[serde(with = "duration")]
    pub idle_lifetime: Duration,
    /// How often the bind-cookie secret rotates (the previous one stays valid once more).
    #[serde(with = "duration")]
    pub cookie_rotation: Duration,
    /// Packets per second each leg of a session may send (enforced in the kernel and in the
    /// userspace forwarder; the excess is dropped and counted as `dropped_rate_limited`);
    /// 0 = unlimited.
    pub packets_per_sec: u32,
    /// Kilobytes (1000 bytes) of UDP payload per second each leg may send; 0 = unlimited.
    pub kbytes_per_sec: u32,
    /// Bind handshake messages per second accepted from one source address (a fixed table of
    /// buckets: bounded memory whatever the flood); 0 = unlimited.
    pub binds_per_sec_per_source: u32,
    /// Which addresses may be legs.
    pub leg_addresses: LegAddressesConfig,
}

/// `sessions.leg_addresses:` which addresses may be legs. Loopback, link-local, multicast,
/// broadcast, unspecified and the relay's own addresses never may, in any spelling.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LegAddressesConfig {
    /// Refuse private (RFC 1918, 100.64/10) and unique-local (fc00::/7) addresses.
    pub refuse_private: bool,
    /// Ranges admitted although private.
    pub allow: Vec<ipnet::IpNet>,
    /// Ranges always refused.
    pub deny: Vec<ipnet::IpNet>,
}

impl Default for LegAddressesConfig {
    fn default() -> Self {
        LegAddressesConfig {
            refuse_private: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// Default bind messages per second per source address (a bind is two messages; clients
/// refresh every 25 s, so this leaves room for many clients behind one NAT).
pub const DEFAULT_BINDS_PER_SEC_PER_SOURCE: u32 = 100;

/// Default per-leg packet rate: above what WireGuard at 2 Gbit/s of full-size packets needs.
pub const DEFAULT_PACKETS_PER_SEC: u32 = 250_000;
/// Default per-leg byte rate: 2 Gbit/s.
pub const DEFAULT_KBYTES_PER_SEC: u32 = 250_000;

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_sessions: relay_common::maps::DEFAULT_MAX_SESSIONS,
            bind_lifetime: Duration::from_secs(30),
            idle_lifetime: Duration::from_secs(300),
            cookie_rotation: Duration::from_secs(120),
            packets_per_sec: DEFAULT_PACKETS_PER_SEC,
            kbytes_per_sec: DEFAULT_KBYTES_PER_SEC,
            binds_per_sec_per_source: DEFAULT_BINDS_PER_SEC_PER_SOURCE,
            leg_addresses: LegAddressesConfig::default(),
        }
    }
}

/// Default TURN port (UDP and TCP), IANA's.
pub const DEFAULT_TURN_PORT: u16 = 3478;
/// Default TURN over TLS port, IANA's.
pub const DEFAULT_TURNS_PORT: u16 = 5349;

/// Which channel numbers a ChannelBind may use.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChannelNumbers {
    /// 0x4000–0x7FFF (RFC 5766): what coturn's clients and older stacks use.
    #[default]
    Rfc5766,
    /// 0x4000–0x4FFF (RFC 8656).
    Rfc8656,
}

/// `turn:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    /// Realm of the long-term credentials (required; usually the relay's domain name).
    pub realm: String,
    /// UDP and TCP port of the TURN server.
    pub port: u16,
    /// TURN over TLS (`turns:` URLs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TurnTlsConfig>,
    /// Relayed ports are taken from this range, written `first-last`.
    pub relay_ports: PortRange,
    /// Relayed addresses handed to clients behind a 1:1 NAT, per family (addresses only).
    /// Default: the IPs of `relay.advertise`, else the listen addresses.
    pub advertise: TurnAdvertise,
    /// Shared secrets of the TURN REST API convention (several at once for rotation; reloaded
    /// on SIGHUP).
    pub secrets: Vec<String>,
    /// Files holding one shared secret each (a Kubernetes Secret's keys, mounted), besides
    /// `secrets`; read at start and on SIGHUP.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<PathBuf>,
    /// Static users (reloaded on SIGHUP).
    pub users: Vec<TurnUserConfig>,
    /// Longest a REST credential may still be valid for when it is used.
    #[serde(with = "duration")]
    pub max_credential_ttl: Duration,
    /// Allocation lifetime when the client asks for none.
    #[serde(with = "duration")]
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    #[serde(with = "duration")]
    pub max_lifetime: Duration,
    /// Channel numbers accepted.
    pub channel_numbers: ChannelNumbers,
    /// Allocations held at once, all users; also the BPF map capacity.
    pub max_allocations: u32,
    /// Allocations one user may hold at once.
    pub max_allocations_per_user: u32,
    /// Permissions (peer addresses) per allocation.
    pub max_permissions: u32,
    /// Channels per allocation.
    pub max_channels: u32,
    /// Packets per second each allocation may relay per direction; 0 = unlimited.
    pub packets_per_sec: u32,
    /// Kilobytes per second each allocation may relay per direction; 0 = unlimited.
    pub kbytes_per_sec: u32,
    /// STUN requests per second accepted over UDP from one source address, with bursts of
    /// [`TURN_REQUEST_BURST`] of it, checked before any other work (the excess is dropped:
    /// UDP clients retransmit); 0 = unlimited. Sized for a NAT of many users (docs/turn.md).
    pub requests_per_sec_per_source: u32,
    /// STUN requests per second one TCP or TLS connection may send, with bursts of
    /// [`TURN_REQUEST_BURST`] of it. A stream has proven its address, so it is limited on its
    /// own rather than by its address; the excess is not dropped (nothing would retransmit it)
    /// but waits: the connection is read no faster. 0 = unlimited.
    pub requests_per_sec_per_connection: u32,
    /// TCP and TLS connections held at once, all sources. When full, a new connection takes
    /// the place of the oldest one that has no allocation yet.
    pub max_connections: u32,
    /// TCP and TLS connections held at once from one source address.
    pub max_connections_per_source: u32,
    /// Mebibytes that data waiting for TCP and TLS clients (beyond their sockets' send
    /// buffers) may take in all, each client at most 512 KiB of it. Past half of it, a client
    /// holding more than an equal share is refused first (`dropped_turn_client_slow`).
    pub stream_buffers_mib: u32,
}

/// How much of a TURN request rate a full bucket holds: two seconds' worth, so the requests of
/// many ICE agents starting at once behind one NAT pass together (docs/turn.md).
pub const TURN_REQUEST_BURST: Duration = Duration::from_secs(2);
/// Default `turn.requests_per_sec_per_source` (derived in docs/turn.md).
pub const DEFAULT_TURN_REQUESTS_PER_SOURCE: u32 = 500;
/// Default `turn.requests_per_sec_per_connection`.
pub const DEFAULT_TURN_REQUESTS_PER_CONNECTION: u32 = 50;
/// Default `turn.max_connections`: as many as allocations, each at a few kilobytes idle.
pub const DEFAULT_TURN_MAX_CONNECTIONS: u32 = 16_384;
/// Default `turn.max_connections_per_source`: a thousand users behind one NAT address, each
/// browser with a TCP and a TLS allocation, twice over. A single hostile address holding them
/// all idle costs a few megabytes, for at most 10 s each.
pub const DEFAULT_TURN_MAX_CONNECTIONS_PER_SOURCE: u32 = 4096;
/// Default `turn.stream_buffers_mib`: an eighth of the Kubernetes manifest's memory limit, room
/// for 512 clients each 512 KiB behind (and far more that are only a little behind).
pub const DEFAULT_TURN_STREAM_BUFFERS_MIB: u32 = 256;

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            realm: String::new(),
            port: DEFAULT_TURN_PORT,
            tls: None,
            relay_ports: PortRange {
                first: 49152,
                last: 65535,
            },
            advertise: TurnAdvertise::default(),
            secrets: Vec::new(),
            secret_files: Vec::new(),
            users: Vec::new(),
            max_credential_ttl: Duration::from_secs(7 * 24 * 3600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            channel_numbers: ChannelNumbers::Rfc5766,
            max_allocations: relay_common::turn::DEFAULT_MAX_ALLOCATIONS,
            max_allocations_per_user: 100,
            max_permissions: 64,
            max_channels: 64,
            packets_per_sec: DEFAULT_PACKETS_PER_SEC,
            kbytes_per_sec: DEFAULT_KBYTES_PER_SEC,
            requests_per_sec_per_source: DEFAULT_TURN_REQUESTS_PER_SOURCE,
            requests_per_sec_per_connection: DEFAULT_TURN_REQUESTS_PER_CONNECTION,
            max_connections: DEFAULT_TURN_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_TURN_MAX_CONNECTIONS_PER_SOURCE,
            stream_buffers_mib: DEFAULT_TURN_STREAM_BUFFERS_MIB,
        }
    }
}

/// `turn.tls:` certificate and ports of TURN over TLS.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnTlsConfig {
    /// PEM certificate chain, leaf first (reloaded on SIGHUP).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// TCP ports to serve TLS on (5349; 443 gets through firewalls that allow only HTTPS).
    #[serde(default = "default_turns_ports")]
    pub ports: Vec<u16>,
}

fn default_turns_ports() -> Vec<u16> {
    vec![DEFAULT_TURNS_PORT]
}

/// A port range, written `first-last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = text
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
        match parsed {
            Some((first, last)) if first <= last && first > 0 => Ok(PortRange { first, last }),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not a port range like 49152-65535"
            ))),
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}-{}", self.first, self.last))
    }
}

/// `turn.advertise:` public relayed addresses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnAdvertise {
    /// IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<std::net::Ipv4Addr>,
    /// IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<std::net::Ipv6Addr>,
}

/// One static TURN user.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TurnUserConfig {
    /// Username.
    pub name: String,
    /// Password.
    pub password: String,
}

/// Shortest TURN REST secret: it is all that stands between the internet and the relay.
pub const MIN_TURN_SECRET_LEN: usize = 16;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `log:` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `relay_userspace=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Most sessions a relay can hold: the VNI space (24 bits, 0 excluded) must stay sparse enough
/// that random VNIs are found quickly and cannot be guessed.
pub const MAX_SESSIONS_LIMIT: u32 = (VNI_MAX + 1) / 8;

impl Config {
    /// Checks that span fields. Returns the key path and the reason.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.xdp.mode != XdpMode::Off && self.interfaces.is_empty() {
            return err(
                "interfaces",
                format!(
                    "xdp.mode is {:?}: name the interface(s) to attach to, or set xdp.mode: off",
                    self.xdp.mode
                )
                .to_lowercase(),
            );
        }
        if self.relay.port == 0 {
            return err("relay.port", "must not be 0".into());
        }
        if self.interfaces.is_empty() && self.relay.listen.is_empty() {
            return err(
                "relay.listen",
                "give the local address(es) to listen on (or `interfaces` to take theirs)".into(),
            );
        }
        let v4 = self.relay.listen.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.relay.listen.len() - v4;
        if v4 > 1 || v6 > 1 {
            return err(
                "relay.listen",
                "at most one address per family (the fast path has one source address each)".into(),
            );
        }
        if let Some((i, a)) = self
            .relay
            .listen
            .iter()
            .enumerate()
            .find(|(_, a)| a.is_unspecified() || a.is_multicast())
        {
            return err(
                &format!("relay.listen[{i}]"),
                format!("{a} is not a unicast address of this host"),
            );
        }
        for (key, addr, want_v6) in [
            ("relay.advertise.v4", self.relay.advertise.v4, false),
            ("relay.advertise.v6", self.relay.advertise.v6, true),
        ] {
            if let Some(a) = addr {
                if a.is_ipv6() != want_v6 {
                    return err(key, format!("{a} is not of this key's family"));
                }
                if a.port() == 0 || a.ip().is_unspecified() {
                    return err(key, format!("{a} is not a usable endpoint"));
                }
            }
        }
        if self.xdp.nexthop_cache_entries == 0 || self.xdp.nexthop_cache_entries > 1 << 20 {
            return err(
                "xdp.nexthop_cache_entries",
                "must be between 1 and 1048576".into(),
            );
        }
        if self.api.tokens.is_empty() {
            return err("api.tokens", "at least one token is needed".into());
        }
        let mut names = HashSet::new();
        for (i, t) in self.api.tokens.iter().enumerate() {
            let key = |f: &str| format!("api.tokens[{i}].{f}");
            if t.name.trim().is_empty() || t.name.len() > 32 {
                return err(&key("name"), "must be 1 to 32 characters".into());
            }
            if !names.insert(t.name.as_str()) {
                return err(&key("name"), format!("duplicate token name {:?}", t.name));
            }
            match (&t.token, &t.token_sha256) {
                (Some(_), Some(_)) | (None, None) => {
                    return err(
                        &format!("api.tokens[{i}]"),
                        "give exactly one of `token` and `token_sha256`".into(),
                    );
                }
                (Some(token), None) if token.len() < MIN_TOKEN_LEN => {
                    return err(
                        &key("token"),
                        format!("must be at least {MIN_TOKEN_LEN} characters"),
                    );
                }
                (None, Some(hash))
                    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    return err(&key("token_sha256"), "must be 64 hex digits".into());
                }
                _ => {}
            }
            if t.max_sessions == 0 {
                return err(&key("max_sessions"), "must be at least 1".into());
            }
        }
        if !self.api.listen.ip().is_loopback() && self.api.tls.is_none() {
            return err(
                "api.listen",
                format!(
                    "{} is not a loopback address: serving the API beyond this host needs \
                     api.tls (cert and key), or put it on 127.0.0.1 behind a TLS proxy",
                    self.api.listen
                ),
            );
        }
        if let Some(tls) = &self.api.tls {
            for (key, path) in [("api.tls.cert", &tls.cert), ("api.tls.key", &tls.key)] {
                if !path.is_absolute() {
                    return err(key, "must be an absolute path".into());
                }
            }
        }
        if self.api.max_body_bytes < 64 {
            return err("api.max_body_bytes", "must be at least 64".into());
        }
        let s = &self.sessions;
        if s.max_sessions == 0 || s.max_sessions > MAX_SESSIONS_LIMIT {
            return err(
                "sessions.max_sessions",
                format!("must be between 1 and {MAX_SESSIONS_LIMIT}"),
            );
        }
        for (key, d) in [
            ("sessions.bind_lifetime", s.bind_lifetime),
            ("sessions.idle_lifetime", s.idle_lifetime),
            ("sessions.cookie_rotation", s.cookie_rotation),
        ] {
            if d < Duration::from_secs(1) || d > MAX_LIFETIME {
                return err(key, "must be between 1s and 30days".into());
            }
        }
        if let Some(m) = &self.metrics {
            if m.listen == self.api.listen {
                return err("metrics.listen", "must differ from api.listen".into());
            }
            if m.top_sessions > 1000 {
                return err(
                    "metrics.top_sessions",
                    "at most 1000 (series cardinality)".into(),
                );
            }
        }
        if !self.pin_dir.is_absolute() {
            return err("pin_dir", "must be an absolute path on bpffs".into());
        }
        if let Some(turn) = &self.turn {
            self.validate_turn(turn)?;
        }
        if let Some(wireguard) = &self.wireguard {
            self.validate_wireguard(wireguard)?;
        }
        if let Some(fleet) = &self.fleet {
            validate_fleet(fleet)?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return err(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            );
        }
        Ok(())
    }
}

/// A secret file's content, without the trailing newline editors and `kubectl create secret
/// --from-file` leave.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim_end().to_string())
}

impl TurnConfig {
    /// `secrets` and the contents of `secret_files` (validated at load: a file that went away
    /// since is skipped with a warning).
    pub fn all_secrets(&self) -> Vec<String> {
        let mut all = self.secrets.clone();
        for path in &self.secret_files {
            match read_secret_file(path) {
                Ok(secret) if !secret.is_empty() => all.push(secret),
                Ok(_) => tracing::warn!(file = %path.display(), "turn.secret_files: empty now"),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "turn.secret_files: unreadable now")
                }
            }
        }
        all
    }
}

fn validate_fleet(f: &FleetConfig) -> Result<(), (String, String)> {
    for (i, a) in f.alternates.iter().enumerate() {
        let err = |key: &str, msg: String| Err((format!("fleet.alternates[{i}].{key}"), msg));
        if let Some(api) = &a.api {
            match url::Url::parse(api) {
                Ok(u) if ["http", "https"].contains(&u.scheme()) => {}
                _ => return err("api", format!("{api:?} is not an http(s) URL")),
            }
        }
        for (key, list) in [("turn", &a.turn), ("turns", &a.turns)] {
            for addr in list.iter() {
                if addr.ip().is_unspecified() || addr.port() == 0 {
                    return err(key, format!("{addr} is not an address clients can reach"));
                }
            }
        }
        if a.api.is_none() && a.turn.is_empty() && a.turns.is_empty() {
            return Err((
                format!("fleet.alternates[{i}]"),
                "give its api URL, its turn addresses or both".into(),
            ));
        }
    }
    Ok(())
}

impl Config {
    fn validate_wireguard(&self, w: &WireGuardConfig) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((format!("wireguard.{key}"), msg));
        let range = w.relay_ports;
        if range.last - range.first < 1 {
            return err("relay_ports", "needs at least 2 ports (one pair)".into());
        }
        if range.contains(self.relay.port) {
            return err(
                "relay_ports",
                format!("must not include relay.port {}", self.relay.port),
            );
        }
        if let Some(t) = &self.turn {
            if range.contains(t.port) {
                return err(
                    "relay_ports",
                    format!("must not include turn.port {}", t.port),
                );
            }
            let r = t.relay_ports;
            if range.first <= r.last && r.first <= range.last {
                return err(
                    "relay_ports",
                    format!("overlaps turn.relay_ports {}-{}", r.first, r.last),
                );
            }
        }
        if !(1..=600).contains(&w.keepalive) {
            return err("keepalive", "must be 1 to 600 seconds".into());
        }
        let keepalive = Duration::from_secs(w.keepalive.into());
        if w.idle_lifetime < 2 * keepalive || w.idle_lifetime > Duration::from_secs(24 * 3600) {
            return err(
                "idle_lifetime",
                "must be at least twice keepalive and at most 1day".into(),
            );
        }
        Ok(())
    }

    fn validate_turn(&self, t: &TurnConfig) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((format!("turn.{key}"), msg));
        if t.realm.trim().is_empty() || t.realm.len() > 127 {
            return err(
                "realm",
                "give the realm (1 to 127 characters), e.g. the relay's domain".into(),
            );
        }
        if t.port == 0 {
            return err("port", "must not be 0".into());
        }
        if t.port == self.relay.port {
            return err(
                "port",
                format!("{} is relay.port (the session protocol's)", t.port),
            );
        }
        let range = t.relay_ports;
        if range.last - range.first < 15 {
            return err("relay_ports", "needs at least 16 ports".into());
        }
        for (name, port) in [("port", t.port), ("relay.port", self.relay.port)] {
            if range.contains(port) {
                return err("relay_ports", format!("must not include {name} {port}"));
            }
        }
        for (i, path) in t.secret_files.iter().enumerate() {
            let key = format!("secret_files[{i}]");
            if !path.is_absolute() {
                return err(&key, "must be an absolute path".into());
            }
            match read_secret_file(path) {
                Ok(secret) if secret.len() < MIN_TURN_SECRET_LEN => {
                    return err(
                        &key,
                        format!(
                            "{} holds {} characters; a secret needs at least {MIN_TURN_SECRET_LEN}",
                            path.display(),
                            secret.len()
                        ),
                    );
                }
                Ok(_) => {}
                Err(e) => return err(&key, format!("cannot read {}: {e}", path.display())),
            }
        }
        if t.secrets.is_empty() && t.users.is_empty() && t.secret_files.is_empty() {
            return err(
                "secrets",
                "give shared secrets, static users, or both: nobody could authenticate".into(),
            );
        }
        for (i, secret) in t.secrets.iter().enumerate() {
            if secret.len() < MIN_TURN_SECRET_LEN {
                return err(
                    &format!("secrets[{i}]"),
                    format!("must be at least {MIN_TURN_SECRET_LEN} characters"),
                );
            }
        }
        let mut names = HashSet::new();
        for (i, u) in t.users.iter().enumerate() {
            if u.name.is_empty() || u.name.len() > relay_common::turn::META_USERNAME_LEN {
                return err(
                    &format!("users[{i}].name"),
                    format!(
                        "must be 1 to {} bytes",
                        relay_common::turn::META_USERNAME_LEN
                    ),
                );
            }
            if !names.insert(u.name.as_str()) {
                return err(
                    &format!("users[{i}].name"),
                    format!("duplicate user {:?}", u.name),
                );
            }
            if u.password.is_empty() {
                return err(&format!("users[{i}].password"), "must not be empty".into());
            }
        }
        if t.max_credential_ttl < Duration::from_secs(60)
            || t.max_credential_ttl > Duration::from_secs(366 * 24 * 3600)
        {
            return err(
                "max_credential_ttl",
                "must be between 1m and 366days".into(),
            );
        }
        if t.default_lifetime < Duration::from_secs(60) || t.default_lifetime > t.max_lifetime {
            return err(
                "default_lifetime",
                "must be at least 1m and at most max_lifetime".into(),
            );
        }
        if t.max_lifetime > MAX_LIFETIME {
            return err("max_lifetime", "must be at most 30days".into());
        }
        if t.max_allocations == 0 || t.max_allocations > 1 << 20 {
            return err("max_allocations", "must be between 1 and 1048576".into());
        }
        if t.max_allocations_per_user == 0 {
            return err("max_allocations_per_user", "must be at least 1".into());
        }
        if t.max_connections == 0 || t.max_connections > 1 << 20 {
            return err("max_connections", "must be between 1 and 1048576".into());
        }
        if t.max_connections_per_source == 0 || t.max_connections_per_source > t.max_connections {
            return err(
                "max_connections_per_source",
                "must be at least 1 and at most max_connections".into(),
            );
        }
        if t.stream_buffers_mib == 0 || t.stream_buffers_mib > 1 << 16 {
            return err("stream_buffers_mib", "must be between 1 and 65536".into());
        }
        for (key, n) in [
            ("max_permissions", t.max_permissions),
            ("max_channels", t.max_channels),
        ] {
            if n == 0 || n > 4096 {
                return err(key, "must be between 1 and 4096".into());
            }
        }
        if let Some(tls) = &t.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_absolute() {
                    return err(key, "must be an absolute path".into());
                }
            }
            if tls.ports.is_empty() {
                return err("tls.ports", "give at least one port (5349)".into());
            }
            for port in &tls.ports {
                if *port == 0 || *port == t.port || range.contains(*port) {
                    return err(
                        "tls.ports",
                        format!("{port} is 0, the TURN port or a relayed port"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Durations written the human way: `30s`, `5m`, `1h 30m`, `250ms`.
mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 30s or 5m: {e}"))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
