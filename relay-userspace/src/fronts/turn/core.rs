//! What every part of the TURN front shares ([`TurnCore`]): the server, the relayed ports'
//! sockets, the data path's tables, the counters and the maps; and what a client's message does
//! there, on any transport.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use relay_common::{
    maps::{SessionLimits, SessionStats},
    turn::TO_PEER,
    verdict::Reason,
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    auth,
    connections::Connections,
    outbox::{self, CLIENT_BUFFER_BYTES, Outbox, Push},
    persist,
    relayed_ports::{PortSockets, RelaySockets},
    relaying::{self, FromClient, RelayTables},
    return_path::ReturnPath,
    server::{Change, Clock, FiveTuple, NO_DESCRIPTORS_RESULT, Transport, TurnServer},
};
use crate::{
    control::source_limit::SourceLimiter,
    dataplane::turn_maps::TurnMaps,
    descriptors,
    forwarder::{
        Action,
        counters::{LocalVerdicts, SlotSnapshot, UserCounters},
    },
    logging::{THROTTLE_EVERY, Throttle},
};

pub(super) fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

/// What every part of the TURN front shares.
pub struct TurnCore {
    pub(super) me: std::sync::Weak<TurnCore>,
    pub(super) server: Mutex<TurnServer>,
    pub(super) sockets: Mutex<RelaySockets>,
    pub(super) ports: Arc<DashMap<u16, PortSockets>>,
    pub(super) tables: RelayTables,
    pub(super) counters: Arc<UserCounters>,
    pub(super) verdicts: Arc<UserCounters>,
    /// The TURN port's sockets per family, for sending to UDP clients (set once its forwarder
    /// runs).
    pub(super) listeners: std::sync::OnceLock<[Option<Arc<UdpSocket>>; 2]>,
    /// The TURN port's addresses per family (the server side of UDP 5-tuples).
    pub(super) listen: [Option<SocketAddr>; 2],
    /// TCP and TLS clients' outgoing bytes.
    pub(super) streams: DashMap<FiveTuple, Arc<Outbox>>,
    /// The bytes all of `streams` may hold together (`turn.stream_buffers_mib`).
    pub(super) stream_budget: Arc<outbox::Budget>,
    pub(super) maps: Option<Mutex<TurnMaps>>,
    pub(super) results: Mutex<HashMap<&'static str, u64>>,
    /// UDP requests per source address (`turn.requests_per_sec_per_source`).
    pub(super) requests: Mutex<SourceLimiter>,
    /// Requests per second of one TCP or TLS connection (0: unlimited).
    pub(super) requests_per_connection: u32,
    /// TCP and TLS connections held, per source and in all.
    pub(super) connections: Arc<Connections>,
    pub(super) port_tasks: Mutex<HashMap<u16, Vec<JoinHandle<()>>>>,
    /// The userspace counters last written to the maps, per slot.
    pub(super) flushed: Mutex<HashMap<u32, SlotSnapshot>>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) limits: SessionLimits,
    /// The relay's own addresses: peers there are only allocations' relayed ports.
    pub(super) own: Vec<IpAddr>,
    pub(super) tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
}

/// Throttles of the front's recurring warnings.
static REQUEST_RATE: Throttle = Throttle::new(THROTTLE_EVERY);
static OUT_OF_DESCRIPTORS: Throttle = Throttle::new(THROTTLE_EVERY);
static DRAINING: Throttle = Throttle::new(THROTTLE_EVERY);
static SLOW_CLIENT: Throttle = Throttle::new(THROTTLE_EVERY);

impl fmt::Debug for TurnCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCore").finish_non_exhaustive()
    }
}

impl TurnCore {
    pub(super) fn count(&self, result: &'static str) {
        self.count_by(result, 1);
    }

    /// Adds `n` to a request result or connection event counter.
    pub(super) fn count_by(&self, result: &'static str, n: u64) {
        *self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(result)
            .or_default() += n;
    }

    /// Handles a STUN request; returns the response to send back. Over UDP the caller has
    /// applied the per-source limit ([`TurnCore::on_client_datagram`]).
    pub(super) fn handle_stun(&self, datagram: &[u8], five_tuple: FiveTuple) -> Option<Vec<u8>> {
        let clock = clock();
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
        if outcome.result == NO_DESCRIPTORS_RESULT {
            if let Some(held) = OUT_OF_DESCRIPTORS.allow(clock.now) {
                warn!(
                    client = %five_tuple.client,
                    held,
                    limit = %descriptors::Limit::current(),
                    "TURN Allocate answered 508: the relay is out of file descriptors; raise \
                     LimitNOFILE in the unit (`relay check` computes what the configuration needs)"
                );
            }
        } else if matches!(outcome.result, "error_300" | "error_508_draining") {
            if let Some(held) = DRAINING.allow(clock.now) {
                info!(
                    client = %five_tuple.client,
                    result = outcome.result,
                    held,
                    "draining: a new TURN Allocate was sent to fleet.alternates (508 when none \
                     has the client's family); `relay undrain` takes allocations again"
                );
            }
        } else if let Some(reason) = &outcome.reason {
            debug!(client = %five_tuple.client, transport = five_tuple.transport.name(), result = outcome.result, reason, "TURN request refused");
        }
        outcome.reply
    }

    /// Whether a UDP request from `source` is within `turn.requests_per_sec_per_source`;
    /// counts and logs (throttled) the refusal when it is not.
    fn udp_request_allowed(&self, source: IpAddr, now: Instant) -> bool {
        let mut limiter = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.allow(source, now) {
            return true;
        }
        let rate = limiter.rate();
        drop(limiter);
        self.count("rate_limited");
        if let Some(held) = REQUEST_RATE.allow(now) {
            warn!(
                source = %source,
                rate,
                held,
                "TURN requests over UDP beyond turn.requests_per_sec_per_source dropped \
                 (the client retransmits; raise the key if a NAT of many users is behind it)"
            );
        }
        false
    }

    /// Mirrors a change into the data path's tables, the maps and the relayed ports' tasks.
    pub(super) fn apply(&self, server: &TurnServer, change: Change, clock: &Clock) {
        self.mirror(server, change, clock, false);
    }

    /// [`TurnCore::apply`]; `adopted`: the allocation comes from a previous daemon's maps, so
    /// its counters (the kernel's, and what [`super::adoption::adopt`] restored) carry on rather than restart.
    pub(super) fn mirror(&self, server: &TurnServer, change: Change, clock: &Clock, adopted: bool) {
        match change {
            Change::Updated(slot) => {
                let Some(allocation) = server.allocation(slot) else {
                    return;
                };
                let new = self.tables.route(slot).is_none();
                self.tables.sync(allocation, server.settings(), clock.now);
                if new {
                    self.forget_flushed(slot);
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
                    if allocation.five_tuple.transport != Transport::Udp {
                        self.connections.established(&allocation.five_tuple);
                    }
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
                self.forget_flushed(slot);
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

    /// Whether `peer` is one of the relay's own addresses on a port no allocation holds: the
    /// relay must not become a way to its host's other services.
    pub(super) fn own_but_not_relayed(&self, peer: SocketAddr) -> bool {
        let ip = crate::control::address_policy::normalise(peer.ip());
        self.own.contains(&ip) && !self.ports.contains_key(&peer.port())
    }

    /// What to do with a datagram from a client, on any transport: STUN goes to the server
    /// (its response is the reply), data to its peer through the relayed port's socket.
    pub(super) fn on_client_datagram(
        &self,
        payload: &[u8],
        five_tuple: FiveTuple,
        verdicts: &mut LocalVerdicts,
    ) -> Action {
        match relaying::from_client(payload, &five_tuple, &self.tables) {
            FromClient::Stun => {
                if five_tuple.transport == Transport::Udp
                    && !self.udp_request_allowed(five_tuple.client.ip(), Instant::now())
                {
                    verdicts.add(Reason::DroppedTurnRequestRate, payload.len());
                    return Action::Drop;
                }
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
    /// for a peer is sent here, as the forwarder does for UDP. The caller publishes `verdicts`
    /// (once per read, not per frame).
    pub(super) fn on_stream_frame(
        &self,
        frame: &[u8],
        five_tuple: &FiveTuple,
        verdicts: &mut LocalVerdicts,
        return_path: &mut ReturnPath,
    ) -> Option<Vec<u8>> {
        match self.on_client_datagram(frame, *five_tuple, verdicts) {
            Action::Reply(reply) => Some(reply),
            Action::Relay { from, to, range } => {
                return_path.sent_from(&from);
                if !crate::fronts::send_nonblocking(&from, frame.get(range).unwrap_or_default(), to)
                {
                    verdicts.add(Reason::DroppedSendError, 0);
                }
                None
            }
            Action::Forward { .. } | Action::Drop => None,
        }
    }

    fn forget_flushed(&self, slot: u32) {
        self.flushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
    }

    /// Whether `five_tuple` holds an allocation.
    pub(super) fn has_allocation(&self, five_tuple: &FiveTuple) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocation_of(five_tuple)
            .is_some()
    }

    /// The checks before data leaves for a peer: the relay's own addresses, the relayed
    /// socket, the rate limit; counts it when it passes.
    pub(super) fn admit_to_peer(
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
    pub(super) fn client_gone(&self, five_tuple: &FiveTuple) {
        let clock = clock();
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(change) = server.remove_client(five_tuple, &mut *sockets) {
            self.apply(&server, change, &clock);
        }
    }

    /// Sends `frame` to the client of `five_tuple`, or says why not.
    pub(super) fn to_client(&self, five_tuple: &FiveTuple, frame: &[u8]) -> Result<(), Reason> {
        let pushed = match five_tuple.transport {
            Transport::Udp => {
                let sent = self
                    .listeners
                    .get()
                    .and_then(|l| l[crate::fronts::family_index(five_tuple.client.ip())].as_ref())
                    .is_some_and(|s| crate::fronts::send_nonblocking(s, frame, five_tuple.client));
                return if sent {
                    Ok(())
                } else {
                    Err(Reason::DroppedSendError)
                };
            }
            Transport::Tcp | Transport::Tls => self.streams.get(five_tuple).map(|o| o.push(frame)),
        };
        match pushed {
            Some(Push::Queued) => Ok(()),
            Some(Push::Full) => {
                if let Some(held) = SLOW_CLIENT.allow(std::time::Instant::now()) {
                    warn!(
                        client = %five_tuple.client,
                        held,
                        "a TCP/TLS client reads slower than its peers send: dropping its data \
                         beyond {} KiB waiting",
                        CLIENT_BUFFER_BYTES / 1024
                    );
                }
                Err(Reason::DroppedTurnClientSlow)
            }
            Some(Push::OverBudget) => {
                if let Some(held) = SLOW_CLIENT.allow(std::time::Instant::now()) {
                    warn!(
                        client = %five_tuple.client,
                        held,
                        buffered = self.stream_budget.held(),
                        "TCP/TLS clients together hold turn.stream_buffers_mib of data waiting: \
                         dropping data for a client that holds more than its share"
                    );
                }
                Err(Reason::DroppedTurnClientSlow)
            }
            // The connection is closing or gone.
            Some(Push::Closed) | None => Err(Reason::DroppedSendError),
        }
    }

    /// Once a tick: expiry, and the userspace counters into the maps.
    pub(super) fn tick(&self) {
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
            let mut flushed = self.flushed.lock().unwrap_or_else(|p| p.into_inner());
            for slot in slots {
                // Only what changed: a full relay's allocations mostly relay in the kernel, and
                // writing all 16 384 every second cost a system call each.
                let snap = self.counters.slot(slot);
                if flushed.get(&slot) == Some(&snap) {
                    continue;
                }
                let stats = SessionStats {
                    packets: snap.packets,
                    bytes: snap.bytes,
                    ..Default::default()
                };
                if maps.set_userspace_stats(slot, &stats).is_ok() {
                    flushed.insert(slot, snap);
                }
            }
        }
    }
}
