//! Stock WireGuard through the relay with no client software. Each peer of a pair gets a relay
//! port of its own as its `Endpoint` for the other; the relay learns which address is which
//! peer from their handshakes, verified by `mac1` (keyed by the receiver's public key, the only
//! key material the relay has, [`mac`]) and by both peers using the session the handshake made
//! ([`legs`]), then forwards their transport data — in the kernel once the legs are learnt, by
//! the rule [`relaying::Pair`] applies first too.
//!
//! This module runs that logic on sockets:
//!
//! * a pair is a session of kind WireGuard in the control plane (`control::plane::pairs`:
//!   tokens, quotas, idempotency, persistence, idle release of legs), allocated by
//!   `POST /v1/wireguard` ([`api`]);
//! * each running pair binds its two relay ports on the relay's addresses; a task per socket
//!   feeds what arrives — handshakes and whatever the XDP program hands up, or everything with
//!   `xdp.mode: off` — to [`relaying::Pair::on_datagram`], sends what it says from the right
//!   port, and writes the pair's new record through the plane when legs are learnt or move
//!   (so the next data crosses in the kernel);
//! * a ticker keeps the running pairs in step with the plane's (new, deleted, adopted after a
//!   restart, legs released for idleness).

pub mod api;
pub mod legs;
pub mod mac;
pub mod ports;
pub mod relaying;
pub mod simulation;
pub mod snippet;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use relay_common::{maps::SessionLimits, verdict::Reason, wireguard::TYPE_DATA};
use tracing::{info, warn};

use self::{
    legs::{Policy, Side},
    relaying::{Outcome, Pair},
};
use super::{Front, FrontContext};
use crate::{
    api::types::Endpoints,
    config::WireGuardConfig,
    control::{
        address_policy::AddressPolicy,
        plane::{PairPlane, SharedPlane},
        session::{Session, SessionState, address_of_leg},
    },
    dataplane::wireguard_maps::WireGuardMaps,
    forwarder::counters::{LocalVerdicts, UserCounters},
    metrics::FrontMetrics,
};

static INITIATION_RATE: crate::logging::Throttle =
    crate::logging::Throttle::new(crate::logging::THROTTLE_EVERY);

/// How often running pairs are matched against the plane's.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Receive buffer of a pair port's socket.
const RECV_BUFFER: usize = 1 << 20;

/// A pair with its sockets and reader tasks.
struct RunningPair {
    id: u32,
    slot: u32,
    limits: SessionLimits,
    pair: Mutex<Pair>,
    /// `[side][family]`: the socket of each side's port on each family the relay listens on.
    sockets: [[Option<Arc<UdpSocket>>; 2]; 2],
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RunningPair {
    /// Stops the reader tasks and waits until they are gone, so the pair's ports are closed
    /// when the caller drops the pair (and a new pair may bind them at once).
    async fn stop(&self) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for RunningPair {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Binds `ip`:`port`, waiting briefly if a just-deleted pair's socket still holds it (the ticker
/// stops pairs deleted elsewhere asynchronously).
fn open_socket(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let mut tries = 0;
    loop {
        match super::bind_udp(ip, port, RECV_BUFFER) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// What the front's parts share.
pub struct PairsCore {
    plane: SharedPlane,
    counters: Arc<UserCounters>,
    policy: AddressPolicy,
    /// The relay's own addresses, one per family.
    listen: Vec<IpAddr>,
    /// The addresses snippets name (a 1:1 NAT's public ones, else the listen addresses).
    endpoints: Endpoints,
    keepalive: u32,
    running: Mutex<HashMap<u32, Arc<RunningPair>>>,
    runtime: tokio::runtime::Handle,
    me: Weak<PairsCore>,
    /// Legs learnt (bound or moved) since start, and socket failures.
    events: Mutex<HashMap<&'static str, u64>>,
}

impl fmt::Debug for PairsCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairsCore").finish_non_exhaustive()
    }
}

impl PairsCore {
    fn count(&self, event: &'static str) {
        *self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(event)
            .or_default() += 1;
    }

    /// The relay endpoints of `port`, per family.
    pub fn endpoints_of(&self, port: u16) -> Endpoints {
        Endpoints {
            v4: self.endpoints.v4.map(|a| SocketAddr::new(a.ip(), port)),
            v6: self.endpoints.v6.map(|a| SocketAddr::new(a.ip(), port)),
        }
    }

    /// `PersistentKeepalive` of the snippets.
    pub fn keepalive(&self) -> u32 {
        self.keepalive
    }

    /// Opens `session`'s ports and starts reading them.
    fn start_pair(&self, session: &Session) -> std::io::Result<Arc<RunningPair>> {
        let w = session.wireguard().expect("a WireGuard pair");
        let record = session.wireguard_record().expect("a WireGuard pair");
        let keys = [session.legs[0].key, session.legs[1].key];
        let pair = Pair::new(
            record,
            &keys[0],
            &keys[1],
            Policy {
                shared_address: w.shared_address,
            },
        );
        let mut sockets: [[Option<Arc<UdpSocket>>; 2]; 2] = Default::default();
        for (side, port) in w.ports.iter().enumerate() {
            for ip in &self.listen {
                sockets[side][super::family_index(*ip)] = Some(Arc::new(open_socket(*ip, *port)?));
            }
        }
        let running = Arc::new(RunningPair {
            id: session.vni,
            slot: session.slot,
            limits: session.limits,
            pair: Mutex::new(pair),
            sockets,
            tasks: Mutex::new(Vec::new()),
        });
        let core = self.me.upgrade().expect("the core outlives its calls");
        let mut tasks = Vec::new();
        for (side, family) in running.sockets.iter().enumerate() {
            for socket in family.iter().flatten() {
                let _guard = self.runtime.enter();
                let side = if side == 0 { Side::A } else { Side::B };
                tasks.push(self.runtime.spawn(read_port(
                    core.clone(),
                    Arc::downgrade(&running),
                    side,
                    socket.clone(),
                )));
            }
        }
        *running.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        Ok(running)
    }

    /// Starts the pair the API just allocated (its sockets must be open before the response
    /// names its ports). Fails when a port cannot be bound (another process holds it).
    pub fn start_allocated(&self, session: &Session) -> std::io::Result<()> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(&session.vni) {
            return Ok(());
        }
        let pair = self.start_pair(session)?;
        running.insert(session.vni, pair);
        Ok(())
    }

    /// Stops pair `id` (deleted through the API); returns once its ports are closed.
    pub async fn stop_pair(&self, id: u32) {
        let pair = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(pair) = pair {
            pair.stop().await;
        }
    }

    /// Matches the running pairs with the plane's: starts new ones (adopted after a restart),
    /// stops deleted ones, and forgets the legs the plane released for idleness.
    fn reconcile(&self) {
        let pairs: HashMap<u32, Session> = {
            let plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
            plane
                .table()
                .iter()
                .filter(|s| s.wireguard().is_some())
                .map(|s| (s.vni, s.clone()))
                .collect()
        };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|id, _| pairs.contains_key(id));
        for (id, session) in &pairs {
            match running.get(id) {
                None => match self.start_pair(session) {
                    Ok(pair) => {
                        running.insert(*id, pair);
                    }
                    Err(e) => {
                        self.count("socket_errors");
                        warn!(id, error = %e, "opening a WireGuard pair's ports failed");
                    }
                },
                Some(pair) => self.sync_released(pair),
            }
        }
    }

    /// Forgets the legs of `running` if the plane released them. Reads the plane under the
    /// pair's lock: the datagram path writes the plane under that lock too, so a leg it has
    /// just learnt is never mistaken for a release.
    fn sync_released(&self, running: &RunningPair) {
        let mut pair = running.pair.lock().unwrap_or_else(|p| p.into_inner());
        let released = {
            let plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
            plane
                .table()
                .get(running.id)
                .is_some_and(|s| s.state() == SessionState::Allocated)
        };
        if released && pair.record.legs.iter().any(|l| l.is_bound()) {
            pair.release();
            info!(id = running.id, "WireGuard pair's idle legs forgotten");
        }
    }

    /// Handles one datagram that arrived on `side`'s port of `running`; returns its verdict.
    fn on_datagram(
        &self,
        running: &RunningPair,
        side: Side,
        from: SocketAddr,
        payload: &[u8],
    ) -> Reason {
        if !self.policy.allows_leg(from.ip()) {
            return Reason::DroppedWireGuardNotLeg;
        }
        let now = Instant::now();
        let mut pair = running.pair.lock().unwrap_or_else(|p| p.into_inner());
        let (from_port, to, reason, update) = match pair.on_datagram(side, from, payload, now) {
            Outcome::Refuse(reason) => {
                if reason == Reason::DroppedWireGuardHandshakeRate
                    && let Some(held) = INITIATION_RATE.allow(now)
                {
                    warn!(
                        id = running.id,
                        source = %from,
                        held,
                        "WireGuard initiations beyond a pair's initiation rate dropped (1 a \
                         second per address, bursts of 3; the bound leg has its own budget): \
                         a flood of forged initiations, or a peer misbehaving (docs/security.md)"
                    );
                }
                return reason;
            }
            Outcome::Relay {
                from_port,
                to,
                reason,
                update,
            } => (from_port, to, reason, update),
            Outcome::Bound {
                record,
                from_port,
                to,
            } => {
                self.count("legs_learnt");
                let [a, b] = record.legs.map(|l| address_of_leg(&l));
                info!(id = running.id, a = ?a, b = ?b, "WireGuard pair's legs learnt");
                (
                    from_port,
                    vec![to],
                    Reason::ForwardedWireGuard,
                    Some(record),
                )
            }
        };
        if let Some(record) = update {
            // Before sending: the next data must find the new legs in the kernel.
            let mut plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = plane.update_pair(&record) {
                warn!(id = running.id, error = %e, "writing a WireGuard pair's legs failed");
            }
        }
        let out_side = usize::from(pair.port(Side::B) == from_port);
        drop(pair);
        let data = payload.first() == Some(&TYPE_DATA);
        if data
            && !self.counters.admit(
                running.slot,
                side.index(),
                &running.limits,
                payload.len(),
                now,
            )
        {
            return Reason::DroppedRateLimited;
        }
        let mut sent = false;
        for addr in &to {
            if let Some(socket) = &running.sockets[out_side][super::family_index(addr.ip())] {
                sent |= super::send_nonblocking(socket, payload, *addr);
            }
        }
        if !sent {
            return Reason::DroppedSendError;
        }
        if data {
            self.counters
                .forwarded(running.slot, side.index(), payload.len(), now);
        }
        reason
    }
}

/// Reads one socket of a pair's port until the pair stops.
async fn read_port(
    core: Arc<PairsCore>,
    running: Weak<RunningPair>,
    side: Side,
    socket: Arc<UdpSocket>,
) {
    let read = super::read_datagrams(
        socket,
        LocalVerdicts::default(),
        |verdicts, payload, from| {
            // The pair is being stopped: its task is aborted at the next await.
            let Some(running) = running.upgrade() else {
                return;
            };
            let reason = core.on_datagram(&running, side, from, payload);
            verdicts.add(reason, payload.len());
        },
        |verdicts| core.counters.publish(verdicts),
    );
    if let Err(e) = read.await {
        warn!(error = %e, "reading a WireGuard pair's port failed");
    }
}

/// The running WireGuard front.
pub struct WireGuardFront {
    core: Arc<PairsCore>,
    ticker: tokio::task::JoinHandle<()>,
    api: crate::api::ApiState,
}

impl WireGuardFront {
    /// Serves pairs on `config`'s port range: hands the plane the range (and the pinned maps),
    /// adopts the pairs a previous daemon left, and opens their ports.
    pub fn start(context: &FrontContext, config: &WireGuardConfig) -> Result<WireGuardFront> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("the WireGuard front starts inside the daemon's runtime")?;
        let ports = ports::PortPairs::new(config.relay_ports.first..=config.relay_ports.last)
            .context("wireguard.relay_ports holds no pair")?;
        let maps = context
            .pin_dir
            .map(WireGuardMaps::open_pinned)
            .transpose()
            .context("opening the WireGuard maps")?;
        let policy = {
            let mut plane = context.plane.lock().unwrap_or_else(|p| p.into_inner());
            plane.enable_pairs(PairPlane::new(ports, config.idle_lifetime, maps));
            let adopted = plane.adopt_pairs()?;
            if adopted > 0 {
                info!(adopted, "took over WireGuard pairs from the pinned maps");
            }
            plane.table_and_policy().1.clone()
        };
        let core = Arc::new_cyclic(|me| PairsCore {
            plane: context.plane.clone(),
            counters: context.counters.clone(),
            policy,
            listen: context.listen.to_vec(),
            endpoints: super::geneve::endpoints(context.config, context.listen),
            keepalive: config.keepalive,
            running: Mutex::new(HashMap::new()),
            runtime: runtime.clone(),
            me: me.clone(),
            events: Mutex::new(HashMap::new()),
        });
        core.reconcile();
        let ticking = core.clone();
        let ticker = runtime.spawn(async move {
            let mut interval = tokio::time::interval(RECONCILE_EVERY);
            loop {
                interval.tick().await;
                ticking.reconcile();
            }
        });
        Ok(WireGuardFront {
            core,
            ticker,
            api: context.api.clone(),
        })
    }

    /// Pairs whose ports are open.
    pub fn running(&self) -> usize {
        self.core
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Removes the pairs a previous daemon left in the maps when this configuration has no
/// `wireguard:` section (their ports would otherwise stay claimed in the kernel).
pub fn forget_pinned(pin_dir: &std::path::Path) -> Result<()> {
    let mut maps = WireGuardMaps::open_pinned(pin_dir)?;
    let mut relay = crate::dataplane::RelayMaps::open_pinned(pin_dir)?;
    let records = maps.all()?;
    for record in &records {
        maps.delete(record.slot)?;
        relay.delete_session(record.id)?;
    }
    if !records.is_empty() {
        warn!(
            pairs = records.len(),
            "the configuration has no wireguard section: removed the pinned WireGuard pairs"
        );
    }
    Ok(())
}

impl FrontMetrics for PairsCore {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).len();
        let gauge = ConstGauge::new(running as i64);
        let metric = encoder.encode_descriptor(
            "relay_wireguard_pairs_running",
            "WireGuard pairs whose relay ports are open",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        let events = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut family = encoder.encode_descriptor(
            "relay_wireguard_events",
            "WireGuard front events: legs learnt from handshakes, ports that could not be opened",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for event in ["legs_learnt", "socket_errors"] {
            let counter = ConstCounter::new(events.get(event).copied().unwrap_or(0));
            counter.encode(family.encode_family(&[("event", event)])?)?;
        }
        Ok(())
    }
}

impl Front for WireGuardFront {
    fn name(&self) -> &'static str {
        "wireguard"
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        Vec::new()
    }

    fn api_routes(&self) -> axum::Router {
        api::routes(&self.api, &self.core)
    }

    fn metrics(&self) -> Option<Arc<dyn FrontMetrics>> {
        Some(self.core.clone())
    }

    fn stop(&self) {
        self.ticker.abort();
        self.core
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
