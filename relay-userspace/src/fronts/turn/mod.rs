//! The TURN server front (RFC 8656): unmodified WebRTC and TURN clients relay through the
//! appliance. [`server`] is the protocol's state machine (sans-IO), [`auth`] its credentials and
//! nonces, [`relaying`] the data path's decisions; this module runs them on sockets:
//!
//! * the TURN port over UDP (the shared batched forwarder, with `TurnPort` deciding) and over
//!   TCP and TLS ([`stream`]);
//! * one socket per relayed port and family, bound for as long as its allocation lives (so no
//!   other process can take the port), each read by a task that frames peers' datagrams for
//!   their client;
//! * a ticker that expires allocations, permissions and channels and flushes counters;
//! * every change mirrored into the TURN maps, so a restarted daemon adopts the allocations and
//!   the CLI shows them.

pub mod amplification;
pub mod auth;
pub mod persist;
pub mod relaying;
pub mod reply;
pub mod server;
pub mod stream;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus_client::encoding::DescriptorEncoder;
use rand::RngCore;
use relay_common::{
    maps::{SessionLimits, SessionStats},
    turn::{TO_CLIENT, TO_PEER},
    verdict::Reason,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use self::{
    auth::{Credentials, Nonces, StaticUser},
    relaying::{FromClient, FromPeer, RelayTables, channel_data, data_indication},
    server::{
        Change, Clock, Families, FiveTuple, PortBinder, RelayedAddress, Transport, TurnServer,
        TurnSettings,
    },
};
use super::{Front, FrontContext};
use crate::{
    config::{ChannelNumbers, TlsConfig, TurnConfig},
    control::{address_policy::AddressPolicy, source_limit::SourceLimiter},
    dataplane::turn_maps::TurnMaps,
    forwarder::{
        Action, DatagramHandler, Forwarder,
        counters::{LocalVerdicts, UserCounters},
    },
    metrics::{self, FrontMetrics, Labels},
};

/// How often allocations are checked for expiry and counters flushed.
const TICK: Duration = Duration::from_secs(1);
/// Receive buffer of a relayed port's socket: bursts of a video call fit.
const RELAYED_RECV_BUFFER: usize = 1 << 20;

fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// The sockets of one relayed port.
#[derive(Clone, Default)]
struct PortSockets {
    /// IPv4 and IPv6 sockets (as the allocation's families need).
    families: [Option<Arc<UdpSocket>>; 2],
}

/// Binds relayed ports for the server (and keeps the sockets the data path sends from).
struct RelaySockets {
    local: [Option<IpAddr>; 2],
    ports: Arc<DashMap<u16, PortSockets>>,
}

impl PortBinder for RelaySockets {
    fn bind(&mut self, port: u16, families: Families) -> bool {
        let mut sockets = PortSockets::default();
        for (i, wanted) in [families.v4, families.v6].into_iter().enumerate() {
            if !wanted {
                continue;
            }
            let Some(ip) = self.local[i] else {
                return false;
            };
            match super::bind_udp(ip, port, RELAYED_RECV_BUFFER) {
                Ok(s) => sockets.families[i] = Some(Arc::new(s)),
                Err(_) => return false,
            }
        }
        self.ports.insert(port, sockets);
        true
    }

    fn release(&mut self, port: u16) {
        self.ports.remove(&port);
    }
}

/// What every part of the TURN front shares.
pub struct TurnCore {
    me: std::sync::Weak<TurnCore>,
    server: Mutex<TurnServer>,
    sockets: Mutex<RelaySockets>,
    ports: Arc<DashMap<u16, PortSockets>>,
    tables: RelayTables,
    counters: Arc<UserCounters>,
    verdicts: Arc<UserCounters>,
    /// The TURN port's sockets per family, for sending to UDP clients (set once its forwarder
    /// runs).
    listeners: std::sync::OnceLock<[Option<Arc<UdpSocket>>; 2]>,
    /// The TURN port's addresses per family (the server side of UDP 5-tuples).
    listen: [Option<SocketAddr>; 2],
    /// TCP and TLS clients' outgoing queues.
    streams: DashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    maps: Option<Mutex<TurnMaps>>,
    results: Mutex<HashMap<&'static str, u64>>,
    requests: Mutex<SourceLimiter>,
    port_tasks: Mutex<HashMap<u16, Vec<JoinHandle<()>>>>,
    runtime: tokio::runtime::Handle,
    limits: SessionLimits,
    /// The relay's own addresses: peers there are only allocations' relayed ports.
    own: Vec<IpAddr>,
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

impl fmt::Debug for TurnCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCore").finish_non_exhaustive()
    }
}

/// The server settings of a `turn:` section, for relayed addresses `relayed_v4`/`relayed_v6`.
pub fn settings(
    turn: &TurnConfig,
    relayed_v4: Option<RelayedAddress>,
    relayed_v6: Option<RelayedAddress>,
) -> TurnSettings {
    TurnSettings {
        default_lifetime: turn.default_lifetime,
        max_lifetime: turn.max_lifetime,
        channel_max: match turn.channel_numbers {
            ChannelNumbers::Rfc5766 => relay_common::turn::CHANNEL_MAX_RFC5766,
            ChannelNumbers::Rfc8656 => relay_common::turn::CHANNEL_MAX_RFC8656,
        },
        max_allocations: turn.max_allocations,
        max_allocations_per_user: turn.max_allocations_per_user,
        max_permissions: turn.max_permissions as usize,
        max_channels: turn.max_channels as usize,
        relayed_v4,
        relayed_v6,
        limits: SessionLimits {
            packets_per_sec: turn.packets_per_sec,
            kbytes_per_sec: turn.kbytes_per_sec,
        },
        ..TurnSettings::new(turn.relay_ports.first..=turn.relay_ports.last)
    }
}

/// The credentials of a `turn:` section.
pub fn credentials(turn: &TurnConfig) -> Credentials {
    Credentials::new(
        &turn.realm,
        &turn.secrets,
        &turn
            .users
            .iter()
            .map(|u| StaticUser {
                name: u.name.clone(),
                password: u.password.clone(),
            })
            .collect::<Vec<_>>(),
        turn.max_credential_ttl,
    )
}

impl TurnCore {
    fn count(&self, result: &'static str) {
        *self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(result)
            .or_default() += 1;
    }

    /// Handles a STUN request; returns the response to send back.
    fn handle_stun(&self, datagram: &[u8], five_tuple: FiveTuple) -> Option<Vec<u8>> {
        let clock = clock();
        if !self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(five_tuple.client.ip(), clock.now)
        {
            self.count("rate_limited");
            return None;
        }
        let outcome = {
            let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
            let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            let outcome = server.handle(datagram, five_tuple, &clock, &mut *sockets);
            if let Some(change) = outcome.change {
                self.apply(&server, change, &clock);
            }
            outcome
        };
        self.count(outcome.result);
        if let Some(reason) = &outcome.reason {
            debug!(client = %five_tuple.client, transport = five_tuple.transport.name(), result = outcome.result, reason, "TURN request refused");
        }
        outcome.reply
    }

    /// Mirrors a change into the data path's tables, the maps and the relayed ports' tasks.
    fn apply(&self, server: &TurnServer, change: Change, clock: &Clock) {
        self.mirror(server, change, clock, false);
    }

    /// [`TurnCore::apply`]; `adopted`: the allocation comes from a previous daemon's maps, so
    /// its counters (the kernel's, and what [`adopt`] restored) carry on rather than restart.
    fn mirror(&self, server: &TurnServer, change: Change, clock: &Clock, adopted: bool) {
        match change {
            Change::Updated(slot) => {
                let Some(allocation) = server.allocation(slot) else {
                    return;
                };
                let new = self.tables.route(slot).is_none();
                self.tables.sync(allocation, server.settings(), clock.now);
                if new {
                    if !adopted {
                        self.counters.reset(slot);
                        if let Some(maps) = &self.maps {
                            let _ = maps
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .reset_slot(slot);
                        }
                    }
                    self.start_port_tasks(slot, allocation.port);
                    info!(
                        slot,
                        client = %allocation.five_tuple.client,
                        transport = allocation.five_tuple.transport.name(),
                        port = allocation.port,
                        user = auth::quota_user(&allocation.username),
                        "{}",
                        if adopted {
                            "TURN allocation adopted"
                        } else {
                            "TURN allocation created"
                        }
                    );
                }
                if let Some(maps) = &self.maps {
                    let record = persist::to_record(allocation, self.limits, clock);
                    if let Err(e) = maps.lock().unwrap_or_else(|p| p.into_inner()).put(&record) {
                        warn!(slot, error = %e, "writing a TURN allocation to the maps failed");
                    }
                }
            }
            Change::Removed { slot, port } => {
                self.tables.remove(slot);
                if let Some(tasks) = self
                    .port_tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&port)
                {
                    for t in tasks {
                        t.abort();
                    }
                }
                if let Some(maps) = &self.maps
                    && let Err(e) = maps.lock().unwrap_or_else(|p| p.into_inner()).delete(slot)
                {
                    warn!(slot, error = %e, "removing a TURN allocation from the maps failed");
                }
                info!(slot, port, "TURN allocation ended");
            }
        }
    }

    fn start_port_tasks(self: &TurnCore, slot: u32, port: u16) {
        let Some(sockets) = self.ports.get(&port).map(|s| s.clone()) else {
            return;
        };
        let Some(core) = self.me.upgrade() else {
            return;
        };
        let mut tasks = Vec::new();
        for socket in sockets.families.iter().flatten() {
            let Ok(clone) = socket.try_clone() else {
                continue;
            };
            let core = core.clone();
            let _guard = self.runtime.enter();
            let Ok(socket) = tokio::net::UdpSocket::from_std(clone) else {
                continue;
            };
            tasks.push(self.runtime.spawn(relay_port(core, slot, socket)));
        }
        self.port_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, tasks);
    }

    /// The relayed port's socket to send to `peer` from.
    fn relay_socket(&self, port: u16, peer: IpAddr) -> Option<Arc<UdpSocket>> {
        self.ports
            .get(&port)
            .and_then(|s| s.families[super::family_index(peer)].clone())
    }

    /// Whether `peer` is one of the relay's own addresses on a port no allocation holds: the
    /// relay must not become a way to its host's other services.
    fn own_but_not_relayed(&self, peer: SocketAddr) -> bool {
        let ip = crate::control::address_policy::normalise(peer.ip());
        self.own.contains(&ip) && !self.ports.contains_key(&peer.port())
    }

    /// What to do with a datagram from a client, on any transport: STUN goes to the server
    /// (its response is the reply), data to its peer through the relayed port's socket.
    fn on_client_datagram(
        &self,
        payload: &[u8],
        five_tuple: FiveTuple,
        verdicts: &mut LocalVerdicts,
    ) -> Action {
        match relaying::from_client(payload, &five_tuple, &self.tables) {
            FromClient::Stun => {
                verdicts.add(Reason::PassedTurnStun, payload.len());
                match self.handle_stun(payload, five_tuple) {
                    Some(reply) => Action::Reply(reply),
                    None => Action::Drop,
                }
            }
            FromClient::ToPeer {
                slot,
                port,
                peer,
                range,
                limits,
            } => match self.admit_to_peer(slot, port, peer, range.len(), &limits) {
                Ok(from) => {
                    verdicts.add(Reason::ForwardedTurnToPeer, range.len());
                    Action::Relay {
                        from,
                        to: peer,
                        range,
                    }
                }
                Err(reason) => {
                    verdicts.add(reason, payload.len());
                    Action::Drop
                }
            },
            FromClient::Drop(reason) => {
                verdicts.add(reason, payload.len());
                Action::Drop
            }
        }
    }

    /// A datagram from a client on a stream (TCP, TLS): the reply to write back, if any. Data
    /// for a peer is sent here, as the forwarder does for UDP.
    fn on_stream_frame(&self, frame: &[u8], five_tuple: &FiveTuple) -> Option<Vec<u8>> {
        let mut verdicts = LocalVerdicts::default();
        let reply = match self.on_client_datagram(frame, *five_tuple, &mut verdicts) {
            Action::Reply(reply) => Some(reply),
            Action::Relay { from, to, range } => {
                if !super::send_nonblocking(&from, frame.get(range).unwrap_or_default(), to) {
                    verdicts.add(Reason::DroppedSendError, 0);
                }
                None
            }
            Action::Forward { .. } | Action::Drop => None,
        };
        self.verdicts.publish(&mut verdicts);
        reply
    }

    /// The checks before data leaves for a peer: the relay's own addresses, the relayed
    /// socket, the rate limit; counts it when it passes.
    fn admit_to_peer(
        &self,
        slot: u32,
        port: u16,
        peer: SocketAddr,
        len: usize,
        limits: &SessionLimits,
    ) -> Result<Arc<UdpSocket>, Reason> {
        if self.own_but_not_relayed(peer) {
            return Err(Reason::DroppedTurnOwnAddress);
        }
        let socket = self
            .relay_socket(port, peer.ip())
            .ok_or(Reason::DroppedTurnNoAllocation)?;
        let now = Instant::now();
        if !self.counters.admit(slot, TO_PEER, limits, len, now) {
            return Err(Reason::DroppedRateLimited);
        }
        self.counters.forwarded(slot, TO_PEER, len, now);
        Ok(socket)
    }

    /// A TCP or TLS client went away: its allocation ends with its connection.
    fn client_gone(&self, five_tuple: &FiveTuple) {
        let clock = clock();
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(change) = server.remove_client(five_tuple, &mut *sockets) {
            self.apply(&server, change, &clock);
        }
    }

    /// Sends `frame` to the client of `five_tuple`.
    fn to_client(&self, five_tuple: &FiveTuple, frame: &[u8]) -> bool {
        match five_tuple.transport {
            Transport::Udp => self
                .listeners
                .get()
                .and_then(|l| l[super::family_index(five_tuple.client.ip())].as_ref())
                .is_some_and(|s| super::send_nonblocking(s, frame, five_tuple.client)),
            Transport::Tcp | Transport::Tls => self
                .streams
                .get(five_tuple)
                .is_some_and(|q| q.try_send(frame.to_vec()).is_ok()),
        }
    }

    /// Once a tick: expiry, and the userspace counters into the maps.
    fn tick(&self) {
        let clock = clock();
        {
            let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
            let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            for change in server.expire(&clock, &mut *sockets) {
                self.apply(&server, change, &clock);
            }
        }
        if let Some(maps) = &self.maps {
            let slots: Vec<u32> = self
                .server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allocations()
                .map(|a| a.slot)
                .collect();
            let mut maps = maps.lock().unwrap_or_else(|p| p.into_inner());
            for slot in slots {
                let snap = self.counters.slot(slot);
                let stats = SessionStats {
                    packets: snap.packets,
                    bytes: snap.bytes,
                    ..Default::default()
                };
                let _ = maps.set_userspace_stats(slot, &stats);
            }
        }
    }
}

/// Reads one relayed port (one family) and frames what peers send for the client.
async fn relay_port(core: Arc<TurnCore>, slot: u32, socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    let mut frame = Vec::with_capacity(2048);
    let mut verdicts = LocalVerdicts::default();
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let data = &buf[..n];
        let reason = deliver(&core, slot, peer, data, &mut frame);
        verdicts.add(reason, n);
        core.verdicts.publish(&mut verdicts);
    }
}

/// One peer datagram to `slot`'s client; returns the verdict.
fn deliver(
    core: &TurnCore,
    slot: u32,
    peer: SocketAddr,
    data: &[u8],
    frame: &mut Vec<u8>,
) -> Reason {
    let Some(route) = core.tables.route(slot) else {
        return Reason::DroppedTurnNoAllocation;
    };
    let stream = route.five_tuple.transport != Transport::Udp;
    let framed: &[u8] = match relaying::from_peer(slot, peer, &core.tables) {
        FromPeer::Drop(reason) => return reason,
        FromPeer::Channel(channel) => {
            channel_data(channel, data, stream, frame);
            frame
        }
        FromPeer::Indication => {
            *frame = data_indication(peer, data);
            frame
        }
    };
    let now = Instant::now();
    if !core
        .counters
        .admit(slot, TO_CLIENT, &route.limits, data.len(), now)
    {
        return Reason::DroppedRateLimited;
    }
    if !core.to_client(&route.five_tuple, framed) {
        return Reason::DroppedSendError;
    }
    core.counters.forwarded(slot, TO_CLIENT, data.len(), now);
    Reason::ForwardedTurnToClient
}

/// The TURN port over UDP, in the shared forwarder.
struct TurnPort {
    core: Arc<TurnCore>,
}

impl DatagramHandler for TurnPort {
    fn handle(
        &self,
        payload: &[u8],
        src: SocketAddr,
        _now: Instant,
        verdicts: &mut LocalVerdicts,
    ) -> Action {
        let Some(server) = self.core.listen[super::family_index(src.ip())] else {
            verdicts.add(Reason::DroppedTurnMalformed, payload.len());
            return Action::Drop;
        };
        let five_tuple = FiveTuple {
            client: src,
            server,
            transport: Transport::Udp,
        };
        self.core.on_client_datagram(payload, five_tuple, verdicts)
    }
}

impl FrontMetrics for TurnCore {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let (allocations, permissions, channels) = {
            let server = self.server.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let mut by_transport: HashMap<&'static str, i64> = HashMap::new();
            let (mut permissions, mut channels) = (0i64, 0i64);
            for a in server.allocations() {
                *by_transport
                    .entry(a.five_tuple.transport.name())
                    .or_default() += 1;
                permissions += a.permissions.values().filter(|e| **e > now).count() as i64;
                channels += a.channels.values().filter(|c| c.expires > now).count() as i64;
            }
            let allocations: Vec<(Labels, i64)> = ["udp", "tcp", "tls"]
                .iter()
                .map(|t| {
                    (
                        vec![("transport", t.to_string())],
                        by_transport.get(t).copied().unwrap_or(0),
                    )
                })
                .collect();
            (allocations, permissions, channels)
        };
        metrics::gauges(
            encoder,
            "relay_turn_allocations",
            "TURN allocations by client transport.",
            &allocations,
        )?;
        metrics::gauges(
            encoder,
            "relay_turn_permissions",
            "Live TURN permissions.",
            &[(vec![], permissions)],
        )?;
        metrics::gauges(
            encoder,
            "relay_turn_channels",
            "Live TURN channels.",
            &[(vec![], channels)],
        )?;
        let mut results: Vec<(Labels, u64)> = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (vec![("result", k.to_string())], *v))
            .collect();
        results.sort();
        let auth: Vec<(Labels, u64)> = results
            .iter()
            .filter(|(l, _)| AUTH_FAILURES.contains(&l[0].1.as_str()))
            .map(|(l, v)| (vec![("reason", l[0].1.clone())], *v))
            .collect();
        metrics::counters(
            encoder,
            "relay_turn_requests",
            "TURN requests by result (answers, error codes, unanswered).",
            &results,
        )?;
        metrics::counters(
            encoder,
            "relay_turn_auth_failures",
            "TURN requests refused for their credentials, by reason.",
            &auth,
        )?;
        // [path][direction]: 0 = kernel, 1 = userspace.
        let (mut packets, mut bytes) = ([[0u64; 2]; 2], [[0u64; 2]; 2]);
        let slots: Vec<u32> = self
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocations()
            .map(|a| a.slot)
            .collect();
        let kernel = self.maps.as_ref().map(|m| {
            let maps = m.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .map(|slot| maps.kernel_stats(*slot).unwrap_or_default())
                .collect::<Vec<_>>()
        });
        for (i, slot) in slots.iter().enumerate() {
            let user = self.counters.slot(*slot);
            let fast = kernel.as_ref().map(|k| k[i]).unwrap_or_default();
            for d in 0..2 {
                packets[0][d] += fast.packets[d];
                bytes[0][d] += fast.bytes[d];
                packets[1][d] += user.packets[d];
                bytes[1][d] += user.bytes[d];
            }
        }
        let series = |v: [[u64; 2]; 2]| -> Vec<(Labels, u64)> {
            let mut out = Vec::new();
            for (p, path) in ["kernel", "userspace"].iter().enumerate() {
                for (d, direction) in ["to_peer", "to_client"].iter().enumerate() {
                    out.push((
                        vec![
                            ("path", path.to_string()),
                            ("direction", direction.to_string()),
                        ],
                        v[p][d],
                    ));
                }
            }
            out
        };
        metrics::counters(
            encoder,
            "relay_turn_relayed_packets",
            "Packets relayed for live TURN allocations, by path and direction.",
            &series(packets),
        )?;
        metrics::counters(
            encoder,
            "relay_turn_relayed_bytes",
            "Application bytes relayed for live TURN allocations, by path and direction.",
            &series(bytes),
        )
    }
}

/// Results that are credential refusals (the auth-failure metric's reasons).
const AUTH_FAILURES: &[&str] = &[
    "error_401",
    "error_438",
    "unknown_user",
    "expired_credential",
    "credential_too_long",
    "username_too_long",
    "wrong_password",
];

/// The running TURN front.
pub struct TurnFront {
    core: Arc<TurnCore>,
    forwarder: Mutex<Option<Forwarder>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    local: Vec<SocketAddr>,
}

impl TurnFront {
    /// Starts the TURN server of `config.turn` (which must be present).
    pub fn start(context: &FrontContext, turn: &TurnConfig) -> Result<TurnFront> {
        let config = context.config;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the TURN front starts inside the daemon's runtime")?;
        let relayed = |v6: bool| -> Option<RelayedAddress> {
            let local = *context.listen.iter().find(|ip| ip.is_ipv6() == v6)?;
            let advertised = if v6 {
                turn.advertise.v6.map(IpAddr::V6)
            } else {
                turn.advertise.v4.map(IpAddr::V4)
            }
            .or_else(|| {
                let a = if v6 {
                    config.relay.advertise.v6
                } else {
                    config.relay.advertise.v4
                };
                a.map(|a| a.ip())
            })
            .unwrap_or(local);
            Some(RelayedAddress { local, advertised })
        };
        let (relayed_v4, relayed_v6) = (relayed(false), relayed(true));
        let settings = settings(turn, relayed_v4, relayed_v6);
        let legs = &config.sessions.leg_addresses;
        let policy = AddressPolicy {
            refuse_private: legs.refuse_private,
            allow: legs.allow.clone(),
            deny: legs.deny.clone(),
            own: Vec::new(),
        };
        let maps = match context.pin_dir {
            Some(dir) => Some(Mutex::new(
                TurnMaps::open_pinned(dir).context("opening the pinned TURN maps")?,
            )),
            None => None,
        };
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        let nonce_key = match &maps {
            Some(m) => m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .nonce_key(fresh)?,
            None => fresh,
        };
        let server = TurnServer::new(settings, credentials(turn), Nonces::new(nonce_key), policy);
        let ports = Arc::new(DashMap::new());
        let sockets = RelaySockets {
            local: [relayed_v4.map(|r| r.local), relayed_v6.map(|r| r.local)],
            ports: ports.clone(),
        };
        let listen_addrs: Vec<SocketAddr> = context
            .listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, turn.port))
            .collect();
        let mut own: Vec<IpAddr> = context.listen.to_vec();
        own.extend(
            [relayed_v4, relayed_v6]
                .iter()
                .flatten()
                .map(|r| r.advertised),
        );
        let tls = match &turn.tls {
            Some(t) => Some(Arc::new(ArcSwap::new(tls_config(t)?))),
            None => None,
        };
        let workers = match config.relay.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut listen: [Option<SocketAddr>; 2] = [None, None];
        for addr in &listen_addrs {
            listen[usize::from(addr.is_ipv6())] = Some(*addr);
        }
        let core = Arc::new_cyclic(|me| TurnCore {
            me: me.clone(),
            server: Mutex::new(server),
            sockets: Mutex::new(sockets),
            ports,
            tables: RelayTables::new(),
            counters: Arc::new(UserCounters::new(turn.max_allocations)),
            verdicts: context.counters.clone(),
            listeners: std::sync::OnceLock::new(),
            listen,
            streams: DashMap::new(),
            maps,
            results: Mutex::new(HashMap::new()),
            requests: Mutex::new(SourceLimiter::new(
                turn.requests_per_sec_per_source,
                Instant::now(),
            )),
            port_tasks: Mutex::new(HashMap::new()),
            runtime: runtime.clone(),
            limits: SessionLimits {
                packets_per_sec: turn.packets_per_sec,
                kbytes_per_sec: turn.kbytes_per_sec,
            },
            own: own
                .into_iter()
                .map(crate::control::address_policy::normalise)
                .collect(),
            tls,
        });
        let handler = Arc::new(TurnPort { core: core.clone() });
        let forwarder = Forwarder::start(&listen_addrs, workers, handler, context.counters.clone())
            .with_context(|| format!("binding the TURN port {listen_addrs:?}"))?;
        let _ = core.listeners.set(forwarder.senders());
        let adopted = adopt(&core);
        if adopted > 0 {
            info!(adopted, "took over TURN allocations from the pinned maps");
        }
        if let Some(maps) = &core.maps {
            // From here ChannelData on the TURN port may take the kernel path.
            maps.lock()
                .unwrap_or_else(|p| p.into_inner())
                .serve_port(turn.port)
                .context("writing the TURN port into the fast path's port map")?;
        }
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut local: Vec<SocketAddr> = forwarder.local_addrs().to_vec();
        for addr in core.listen.iter().flatten() {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding the TURN port {addr} (TCP)"))?;
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tasks.push(runtime.spawn(accept(
                core.clone(),
                listener,
                Transport::Tcp,
                stopped.clone(),
            )));
        }
        if let Some(t) = &turn.tls {
            for ip in context.listen {
                for port in &t.ports {
                    let addr = SocketAddr::new(*ip, *port);
                    let listener = std::net::TcpListener::bind(addr)
                        .with_context(|| format!("binding TURN over TLS on {addr}"))?;
                    listener.set_nonblocking(true)?;
                    local.push(listener.local_addr()?);
                    let listener = TcpListener::from_std(listener)?;
                    tasks.push(runtime.spawn(accept(
                        core.clone(),
                        listener,
                        Transport::Tls,
                        stopped.clone(),
                    )));
                }
            }
        }
        let ticking = core.clone();
        let mut tick_stopped = stopped.clone();
        tasks.push(runtime.spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = interval.tick() => ticking.tick(),
                    _ = tick_stopped.wait_for(|s| *s) => break,
                }
            }
        }));
        info!(listen = ?local, realm = %turn.realm, "TURN server running");
        Ok(TurnFront {
            core,
            forwarder: Mutex::new(Some(forwarder)),
            tasks,
            stop,
            local,
        })
    }

    /// Number of allocations.
    pub fn allocations(&self) -> usize {
        self.core
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

fn tls_config(t: &crate::config::TurnTlsConfig) -> Result<Arc<rustls::ServerConfig>> {
    crate::api::tls::files_config(
        &TlsConfig {
            cert: t.cert.clone(),
            key: t.key.clone(),
        },
        "turn.tls",
        Vec::new(),
    )
}

/// Takes over the allocations pinned by a previous daemon; returns how many.
/// TURN is not configured: removes what a previous daemon left in the pinned maps, so the fast
/// path stops relaying allocations nobody manages.
pub fn forget_pinned(pin_dir: &std::path::Path) -> Result<()> {
    let Ok(mut maps) = TurnMaps::open_pinned(pin_dir) else {
        return Ok(());
    };
    let removed = maps
        .clear()
        .context("removing TURN allocations from the pinned maps")?;
    if removed > 0 {
        warn!(
            removed,
            "TURN is not configured: ended the allocations a previous daemon left"
        );
    }
    Ok(())
}

fn adopt(core: &Arc<TurnCore>) -> usize {
    let Some(maps) = &core.maps else {
        return 0;
    };
    let records = match maps.lock().unwrap_or_else(|p| p.into_inner()).all() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "reading pinned TURN allocations failed");
            return 0;
        }
    };
    let clock = clock();
    let mut adopted = 0;
    for record in records {
        let slot = record.allocation.slot;
        let allocation = persist::from_record(&record, |v6| core.listen[usize::from(v6)], &clock);
        let taken = {
            let mut server = core.server.lock().unwrap_or_else(|p| p.into_inner());
            let mut sockets = core.sockets.lock().unwrap_or_else(|p| p.into_inner());
            match allocation.map(|a| server.adopt(a, &mut *sockets)) {
                Some(true) => {
                    let user = maps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .userspace_stats(slot)
                        .unwrap_or_default();
                    core.counters.restore(slot, user.packets, user.bytes);
                    core.mirror(&server, Change::Updated(slot), &clock, true);
                    true
                }
                _ => false,
            }
        };
        if taken {
            adopted += 1;
        } else {
            warn!(
                slot,
                "pinned TURN allocation cannot be adopted (TCP client, or port taken): removing it"
            );
            let _ = maps.lock().unwrap_or_else(|p| p.into_inner()).delete(slot);
        }
    }
    adopted
}

/// Accepts TCP (or TLS) clients.
async fn accept(
    core: Arc<TurnCore>,
    listener: TcpListener,
    transport: Transport,
    stopped: watch::Receiver<bool>,
) {
    let mut stop = stopped.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let five_tuple = FiveTuple {
            client: peer,
            server: local,
            transport,
        };
        let core = core.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            match transport {
                Transport::Tls => {
                    let Some(tls) = &core.tls else { return };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(stream)) = handshake.await {
                        stream::serve(core, stream, five_tuple, stopped).await;
                    }
                }
                _ => stream::serve(core, stream, five_tuple, stopped).await,
            }
        });
    }
}

impl Front for TurnFront {
    fn name(&self) -> &'static str {
        "turn"
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local.clone()
    }

    fn api_routes(&self) -> axum::Router {
        axum::Router::new()
    }

    fn metrics(&self) -> Option<Arc<dyn FrontMetrics>> {
        Some(self.core.clone())
    }

    fn check_reload(&self, config: &crate::config::Config) -> Result<()> {
        if let (Some(_), Some(t)) = (
            &self.core.tls,
            config.turn.as_ref().and_then(|t| t.tls.as_ref()),
        ) {
            tls_config(t)?;
        }
        Ok(())
    }

    fn apply_reload(&self, config: &crate::config::Config) {
        let Some(turn) = &config.turn else {
            return;
        };
        if let (Some(current), Some(t)) = (&self.core.tls, &turn.tls)
            && let Ok(loaded) = tls_config(t)
        {
            current.store(loaded);
        }
        self.core
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_credentials(credentials(turn));
        info!(
            target: "audit",
            secrets = turn.secrets.len(),
            users = turn.users.len(),
            "TURN credentials reloaded"
        );
    }

    fn stop(&self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for tasks in self
            .core
            .port_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            for t in tasks.1 {
                t.abort();
            }
        }
        if let Some(f) = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            f.stop();
        }
    }
}
