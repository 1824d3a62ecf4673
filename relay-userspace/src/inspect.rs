//! What the relay is doing, read from the pinned maps alone: sessions with their legs, labels,
//! owners and counters per path, TURN allocations with their permissions, channels and
//! counters, and the verdict counters. Works whether the daemon runs, has
//! stopped or has crashed, because everything lives in bpffs. The CLI, `relay top` and the
//! metrics endpoint all read through here.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use relay_common::{
    maps::{Leg, SessionMeta, SessionStats},
    verdict::VerdictCounter,
};
use serde::Serialize;

use crate::{
    control::{
        persist::{leg_address, meta_strings},
        session::SessionState,
    },
    dataplane::{RelayMaps, clock::JiffiesClock, wireguard_maps::WireGuardMaps},
    fronts::turn::persist as turn_persist,
};

/// One leg as seen in the maps.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LegView {
    /// Its label.
    pub label: Option<String>,
    /// The address it is bound to.
    pub bound: Option<SocketAddr>,
}

/// Counters of one direction (packets sent by one leg).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Forwarded by the XDP program.
    pub kernel_packets: u64,
    /// Bytes (UDP payload incl. Geneve) forwarded by the XDP program.
    pub kernel_bytes: u64,
    /// Forwarded by the userspace forwarder.
    pub userspace_packets: u64,
    /// Bytes forwarded by the userspace forwarder.
    pub userspace_bytes: u64,
    /// How long ago this leg last sent, by either path.
    #[serde(serialize_with = "seconds")]
    pub last_seen: Option<Duration>,
}

impl DirectionCounters {
    /// Packets by both paths.
    pub fn packets(&self) -> u64 {
        self.kernel_packets + self.userspace_packets
    }

    /// Bytes by both paths.
    pub fn bytes(&self) -> u64 {
        self.kernel_bytes + self.userspace_bytes
    }
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Which forwarder carried a session's packets.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Path_ {
    /// Nothing forwarded yet.
    None,
    /// Only the XDP program.
    Kernel,
    /// Only the userspace forwarder.
    Userspace,
    /// Both.
    Both,
}

impl Path_ {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Path_::None => "-",
            Path_::Kernel => "kernel",
            Path_::Userspace => "userspace",
            Path_::Both => "both",
        }
    }
}

/// A session as the maps show it (a stock WireGuard pair is a session of another kind).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SessionView {
    /// Session id (a pair's id).
    pub vni: u32,
    /// "geneve": the session protocol's; "wireguard": a pair of stock WireGuard peers.
    pub kind: &'static str,
    /// A WireGuard pair's relay ports (peer a's, peer b's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<[u16; 2]>,
    /// allocated | half_bound | bound.
    pub state: &'static str,
    /// Owning token (from the metadata map).
    pub token: Option<String>,
    /// Allocation time, ms since the Unix epoch.
    pub created_unix_ms: Option<u64>,
    /// Seconds both legs have to bind (from the metadata).
    pub bind_lifetime_s: Option<u64>,
    /// Idle seconds after which a bound session expires (from the metadata).
    pub idle_lifetime_s: Option<u64>,
    /// Legs a and b.
    pub legs: [LegView; 2],
    /// Packets sent by leg a (to b) and by leg b (to a).
    pub directions: [DirectionCounters; 2],
    /// Which path carried it.
    pub path: Path_,
    /// Counter slot.
    pub slot: u32,
    /// Current rate per direction, when measured over an interval (see [`with_rates`]).
    pub rates: Option<[Rate; 2]>,
}

/// A rate over an interval.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Rate {
    /// Packets per second.
    pub packets_per_sec: f64,
    /// Bits per second.
    pub bits_per_sec: f64,
}

/// Fills each session's `rates` from its counters in `before` (sessions new since then count
/// from zero). Counters that went down (a reused slot) give no rate.
pub fn with_rates(after: &mut Snapshot, before: &Snapshot) {
    let secs = after
        .taken
        .saturating_duration_since(before.taken)
        .as_secs_f64()
        .max(1e-3);
    for s in &mut after.sessions {
        let old = before.sessions.iter().find(|o| o.vni == s.vni);
        let rate = |leg: usize| {
            let (p0, b0) = old.map_or((0, 0), |o| {
                (o.directions[leg].packets(), o.directions[leg].bytes())
            });
            let d = &s.directions[leg];
            Rate {
                packets_per_sec: d.packets().saturating_sub(p0) as f64 / secs,
                bits_per_sec: 8.0 * d.bytes().saturating_sub(b0) as f64 / secs,
            }
        };
        s.rates = Some([rate(0), rate(1)]);
    }
}

/// Total packets and bytes per second over all sessions, per path, between two snapshots:
/// `[kernel, userspace]`.
pub fn path_rates(after: &Snapshot, before: &Snapshot) -> [Rate; 2] {
    let secs = after
        .taken
        .saturating_duration_since(before.taken)
        .as_secs_f64()
        .max(1e-3);
    let sum = |v: &[VerdictCounter]| {
        relay_common::verdict::Reason::ALL
            .iter()
            .filter(|r| r.outcome() == relay_common::verdict::Outcome::Forwarded)
            .fold((0u64, 0u64), |(p, b), r| {
                (p + v[*r as usize].packets, b + v[*r as usize].bytes)
            })
    };
    let rate = |a: (u64, u64), b: (u64, u64)| Rate {
        packets_per_sec: a.0.saturating_sub(b.0) as f64 / secs,
        bits_per_sec: 8.0 * a.1.saturating_sub(b.1) as f64 / secs,
    };
    [
        rate(sum(&after.kernel_verdicts), sum(&before.kernel_verdicts)),
        rate(
            sum(&after.userspace_verdicts),
            sum(&before.userspace_verdicts),
        ),
    ]
}

/// A TURN allocation as the maps show it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AllocationView {
    /// Its slot (the key of its records).
    pub slot: u32,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// udp | tcp | tls.
    pub transport: &'static str,
    /// Relayed port.
    pub relayed_port: u16,
    /// Relayed families (v4, v6).
    pub families: Vec<&'static str>,
    /// The username it authenticated with.
    pub username: String,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Expiry, ms since the Unix epoch (unless refreshed).
    pub expires_unix_ms: u64,
    /// Peer IPs with a permission.
    pub permissions: Vec<std::net::IpAddr>,
    /// Bound channels: number and peer.
    pub channels: Vec<(u16, SocketAddr)>,
    /// Client → peer and peer → client.
    pub directions: [DirectionCounters; 2],
    /// Which path carried it.
    pub path: Path_,
}

/// Everything at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Sessions, by VNI.
    pub sessions: Vec<SessionView>,
    /// TURN allocations, by slot.
    pub allocations: Vec<AllocationView>,
    /// Capacity of the TURN allocation map.
    pub allocation_capacity: u32,
    /// The XDP program's verdict counters, by reason.
    #[serde(skip)]
    pub kernel_verdicts: Vec<VerdictCounter>,
    /// The userspace forwarder's verdict counters, as last flushed by the daemon.
    #[serde(skip)]
    pub userspace_verdicts: Vec<VerdictCounter>,
    /// Capacity of the session map.
    pub capacity: u32,
    /// When it was taken.
    #[serde(skip)]
    pub taken: Instant,
}

fn direction(
    kernel: &SessionStats,
    user: &SessionStats,
    leg: usize,
    clock: Option<&JiffiesClock>,
    now: Instant,
) -> DirectionCounters {
    let age = |j: u64| clock.and_then(|c| c.age(j, now));
    let last_seen = [age(kernel.last_seen[leg]), age(user.last_seen[leg])]
        .into_iter()
        .flatten()
        .min();
    DirectionCounters {
        kernel_packets: kernel.packets[leg],
        kernel_bytes: kernel.bytes[leg],
        userspace_packets: user.packets[leg],
        userspace_bytes: user.bytes[leg],
        last_seen,
    }
}

/// Which paths carried these counters.
fn path_of(directions: &[DirectionCounters; 2]) -> Path_ {
    let k = directions.iter().any(|d| d.kernel_packets > 0);
    let u = directions.iter().any(|d| d.userspace_packets > 0);
    match (k, u) {
        (false, false) => Path_::None,
        (true, false) => Path_::Kernel,
        (false, true) => Path_::Userspace,
        (true, true) => Path_::Both,
    }
}

/// Reads everything from the maps pinned in `pin_dir`. Ages need the pinned clock probe; without
/// it (an old daemon) they are left out.
pub fn snapshot(pin_dir: &Path) -> Result<Snapshot> {
    let maps = RelayMaps::open_pinned(pin_dir)?;
    let clock = JiffiesClock::from_pinned(pin_dir).ok();
    let now = Instant::now();
    let view = |vni: u32, legs: &[Leg; 2], slot: u32, meta: Option<SessionMeta>| {
        let kernel = maps.kernel_session_stats(slot)?;
        let user = maps.userspace_session_stats(slot)?;
        let (token, labels) = match &meta {
            Some(m) => {
                let (t, l) = meta_strings(m);
                (Some(t), l)
            }
            None => (None, [None, None]),
        };
        let [label_a, label_b] = labels;
        let legs = [
            LegView {
                label: label_a,
                bound: leg_address(&legs[0]),
            },
            LegView {
                label: label_b,
                bound: leg_address(&legs[1]),
            },
        ];
        let state = match (legs[0].bound.is_some(), legs[1].bound.is_some()) {
            (true, true) => SessionState::Bound,
            (false, false) => SessionState::Allocated,
            _ => SessionState::HalfBound,
        };
        let directions = [0, 1].map(|leg| direction(&kernel, &user, leg, clock.as_ref(), now));
        let path = path_of(&directions);
        anyhow::Ok(SessionView {
            vni,
            kind: "geneve",
            ports: None,
            state: state.name(),
            token,
            created_unix_ms: meta.map(|m| m.created_unix_ms),
            bind_lifetime_s: meta.map(|m| m.bind_lifetime_ms as u64 / 1000),
            idle_lifetime_s: meta.map(|m| m.idle_lifetime_ms as u64 / 1000),
            legs,
            directions,
            path,
            slot,
            rates: None,
        })
    };
    let mut sessions = Vec::new();
    for (vni, fast, meta) in maps.all_sessions()? {
        sessions.push(view(vni, &fast.legs, fast.slot, meta)?);
    }
    // WireGuard pairs (absent when the pinned maps predate them).
    if let Ok(pairs) = WireGuardMaps::open_pinned(pin_dir) {
        for pair in pairs.all()? {
            let mut pair_view = view(pair.id, &pair.legs, pair.slot, maps.meta(pair.id)?)?;
            pair_view.kind = "wireguard";
            pair_view.ports = Some(pair.ports.map(u16::from_be));
            // Pairs wait for their peers as long as they live: no bind lifetime.
            pair_view.bind_lifetime_s = None;
            sessions.push(pair_view);
        }
    }
    sessions.sort_by_key(|s| s.vni);
    let mut allocations = Vec::new();
    for record in maps.turn.all()? {
        use relay_common::turn::{CLIENT_TCP, CLIENT_TLS, RELAYED_V4, RELAYED_V6};
        let a = &record.allocation;
        let kernel = maps.turn.kernel_stats(a.slot)?;
        let user = maps.turn.userspace_stats(a.slot)?;
        let directions = [0, 1].map(|d| direction(&kernel, &user, d, clock.as_ref(), now));
        allocations.push(AllocationView {
            slot: a.slot,
            client: turn_persist::client_of(a),
            transport: match a.transport {
                CLIENT_TCP => "tcp",
                CLIENT_TLS => "tls",
                _ => "udp",
            },
            relayed_port: u16::from_be(a.relay_port),
            families: [(RELAYED_V4, "v4"), (RELAYED_V6, "v6")]
                .iter()
                .filter(|(bit, _)| a.families & bit != 0)
                .map(|(_, name)| *name)
                .collect(),
            username: turn_persist::username_of(&record.meta),
            created_unix_ms: record.meta.created_unix_ms,
            expires_unix_ms: record.meta.expires_unix_ms,
            permissions: record
                .permissions
                .iter()
                .filter_map(|(k, _)| {
                    leg_address(&relay_common::maps::Leg {
                        addr: k.addr,
                        port: 0,
                        family: k.family,
                        bound: 1,
                    })
                    .map(|a| a.ip())
                })
                .collect(),
            channels: record
                .channels
                .iter()
                .filter_map(|(k, b)| Some((u16::from_be(k.channel), leg_address(&b.peer)?)))
                .collect(),
            path: path_of(&directions),
            directions,
        });
    }
    Ok(Snapshot {
        sessions,
        allocations,
        allocation_capacity: maps.turn.capacity(),
        kernel_verdicts: maps.kernel_verdicts()?,
        userspace_verdicts: maps.userspace_verdicts()?,
        capacity: maps.session_capacity(),
        taken: now,
    })
}
