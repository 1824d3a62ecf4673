//! The TURN server front (RFC 8656): unmodified WebRTC and TURN clients relay through the
//! appliance. [`server`] is the protocol's state machine (sans-IO), [`auth`] its credentials and
//! nonces, [`relaying`] the data path's decisions; the rest runs them on sockets:
//!
//! * `core.rs`: what every part shares, and what a client's message does on any transport;
//! * `udp_port.rs`: the TURN port over UDP (the shared batched forwarder, with `TurnPort`
//!   deciding); `listeners.rs` and [`stream`]: over TCP and TLS;
//! * `relayed_ports.rs`: one socket per relayed port and family, bound for as long as its
//!   allocation lives, each read by a task that frames peers' datagrams for their client;
//! * [`adoption`]: a restarted daemon takes over the pinned allocations;
//! * `metrics.rs`: the front's series;
//! * here: starting and stopping the front, and a ticker that expires allocations,
//!   permissions and channels and flushes counters — every change mirrored into the TURN maps,
//!   so a restarted daemon adopts the allocations and the CLI shows them.

pub mod adoption;
pub mod amplification;
pub mod auth;
pub mod connections;
mod core;
mod listeners;
mod metrics;
pub mod outbox;
pub mod persist;
mod relayed_ports;
pub mod relaying;
pub mod reply;
pub mod return_path;
pub mod server;
pub mod stream;
mod udp_port;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use rand::RngCore;
use relay_common::maps::SessionLimits;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::info;

use self::{
    auth::{Credentials, Nonces, StaticUser},
    connections::{ConnectionLimits, Connections},
    core::TurnCore,
    relayed_ports::RelaySockets,
    relaying::RelayTables,
    server::{RelayedAddress, Transport, TurnServer, TurnSettings},
    udp_port::TurnPort,
};
use super::{Front, FrontContext};
use crate::{
    config::{ChannelNumbers, TlsConfig, TurnConfig},
    control::{address_policy::AddressPolicy, source_limit::SourceLimiter},
    dataplane::turn_maps::TurnMaps,
    forwarder::{Forwarder, counters::UserCounters},
    metrics::FrontMetrics,
};

/// How often allocations are checked for expiry and counters flushed.
const TICK: Duration = Duration::from_secs(1);

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
        &turn.all_secrets(),
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

/// The running TURN front.
pub struct TurnFront {
    core: Arc<TurnCore>,
    forwarder: Mutex<Option<Forwarder>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    local: Vec<SocketAddr>,
    max_allocations: u32,
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
        let mut server =
            TurnServer::new(settings, credentials(turn), Nonces::new(nonce_key), policy);
        server.set_fleet(context.api.fleet.clone());
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
            stream_budget: outbox::Budget::new(turn.stream_buffers_mib as usize * 1024 * 1024),
            maps,
            results: Mutex::new(HashMap::new()),
            requests: Mutex::new(SourceLimiter::with_burst(
                turn.requests_per_sec_per_source,
                crate::config::TURN_REQUEST_BURST.as_millis() as u64,
                Instant::now(),
            )),
            requests_per_connection: turn.requests_per_sec_per_connection,
            connections: Connections::new(ConnectionLimits {
                total: turn.max_connections,
                per_source: turn.max_connections_per_source,
            }),
            port_tasks: Mutex::new(HashMap::new()),
            flushed: Mutex::new(HashMap::new()),
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
        let adopted = adoption::adopt(&core);
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
            tasks.push(runtime.spawn(listeners::accept(
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
                    tasks.push(runtime.spawn(listeners::accept(
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
            max_allocations: turn.max_allocations,
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

    fn allocations(&self) -> Option<(u64, u64)> {
        Some((self.allocations() as u64, u64::from(self.max_allocations)))
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
            secrets = turn.secrets.len() + turn.secret_files.len(),
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
