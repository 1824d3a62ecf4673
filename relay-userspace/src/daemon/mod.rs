//! `relay serve`: the daemon. It composes the parts and holds no protocol or forwarding logic
//! itself; [`Daemon::start`] reads as the order they come up in:
//!
//! 1. configuration (already validated) → the relay's addresses;
//! 2. the data plane: the XDP fast path loaded, attached and pinned ([`fast_path`]);
//! 3. the shared services: the session plane over the pinned maps (adopting what a previous
//!    daemon left), the forwarder's table and counters, the API's shared state;
//! 4. the protocol fronts ([`crate::fronts::start_all`]), each on its own ports;
//! 5. the metrics endpoint, the API server with every front's routes, and the ticker (expiry,
//!    counter flush, watchdog).

pub mod api_server;
pub mod attach;
pub mod fast_path;
pub mod host;
pub mod metrics_server;
pub mod serve;
pub mod ticker;

use std::{
    any::Any,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Result;
use relay_common::maps::SessionLimits;
use tokio::sync::watch;
use tracing::{info, warn};

use self::{api_server::ApiServer, attach::AttachedMode, metrics_server::MetricsSource};
use crate::{
    api::{ApiState, auth::TokenStore},
    config::Config,
    control::{
        address_policy::AddressPolicy,
        plane::{KernelState, Plane, SharedPlane},
        table::TableSettings,
    },
    descriptors,
    forwarder::{counters::UserCounters, table::ForwardTable},
    fronts::{self, Front, FrontContext},
};

/// What the daemon resolved at start, for logs and tests.
#[derive(Clone, Debug)]
pub struct Started {
    /// The fronts' sockets' local addresses.
    pub relay: Vec<SocketAddr>,
    /// API address.
    pub api: SocketAddr,
    /// Metrics endpoint address, if enabled.
    pub metrics: Option<SocketAddr>,
    /// XDP mode per interface.
    pub xdp: Vec<(String, AttachedMode)>,
    /// Sessions taken over from a previous daemon.
    pub adopted: usize,
    /// Whether the API speaks HTTPS.
    pub api_tls: bool,
}

/// What a configuration reload changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Reloaded {
    /// Tokens now configured.
    pub tokens: usize,
    /// Whether the API certificate was re-read.
    pub certificate: bool,
    /// Changed settings that wait for a restart.
    pub restart_needed: Vec<&'static str>,
}

/// A running daemon.
pub struct Daemon {
    /// The session control plane.
    pub plane: SharedPlane,
    /// What was started.
    pub started: Started,
    fronts: Vec<Arc<dyn Front>>,
    api: ApiServer,
    ticker: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    pin_dir: Option<std::path::PathBuf>,
    /// The configuration in force (the last one reloaded, for reload's comparison).
    config: Config,
    fleet: Arc<crate::fleet::Fleet>,
}

/// The session plane over `kernel` (when loaded), with the sessions a previous daemon pinned.
fn session_plane(
    config: &Config,
    listen: &[IpAddr],
    forward: Arc<ForwardTable>,
    counters: Arc<UserCounters>,
    kernel: Option<KernelState>,
) -> Result<(Plane, usize)> {
    // Legs may not be the relay itself: neither an address it listens on nor one it advertises.
    let mut own: Vec<IpAddr> = listen.to_vec();
    own.extend(
        [config.relay.advertise.v4, config.relay.advertise.v6]
            .iter()
            .flatten()
            .map(|a| a.ip()),
    );
    let legs = &config.sessions.leg_addresses;
    let policy = AddressPolicy {
        refuse_private: legs.refuse_private,
        allow: legs.allow.clone(),
        deny: legs.deny.clone(),
        ..AddressPolicy::strict(own)
    };
    let table = TableSettings {
        max_sessions: config.sessions.max_sessions,
        quotas: quotas(config),
        bind_lifetime: config.sessions.bind_lifetime,
        idle_lifetime: config.sessions.idle_lifetime,
        limits: SessionLimits {
            packets_per_sec: config.sessions.packets_per_sec,
            kbytes_per_sec: config.sessions.kbytes_per_sec,
        },
    };
    let mut plane = Plane::new(table, policy, forward, counters, kernel);
    let adopted = plane.adopt_pinned()?;
    if adopted > 0 {
        info!(adopted, "took over sessions from the pinned maps");
    }
    Ok((plane, adopted))
}

/// Sessions each token may hold.
fn quotas(config: &Config) -> std::collections::HashMap<String, u32> {
    config
        .api
        .tokens
        .iter()
        .map(|t| (t.name.clone(), t.max_sessions))
        .collect()
}

/// Raises the soft open-files limit to the hard one (systemd gives services 1024 unless the
/// unit says otherwise) and says whether the configuration fits.
fn open_files_limit(config: &Config, families: u64) {
    let needs = descriptors::needed(config, families, descriptors::configured_workers(config));
    match descriptors::raise_soft_limit() {
        Ok((before, after)) if after.soft >= needs.total() => info!(
            before = %before,
            after = %after,
            needed = %needs,
            "open files limit"
        ),
        Ok((before, after)) => warn!(
            before = %before,
            after = %after,
            needed = %needs,
            "open files limit below what this configuration can need: allocations, pairs or \
             connections beyond it are refused; raise LimitNOFILE in the unit"
        ),
        Err(e) => warn!(error = %e, "raising the open files limit failed"),
    }
}

impl Daemon {
    /// Starts every component. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Daemon> {
        let listen = fast_path::listen_addresses(config)?;
        open_files_limit(config, listen.len() as u64);
        let (kernel, xdp) = fast_path::start(config, &fast_path::settings(config, &listen))?;
        let has_kernel = kernel.is_some();
        let pin_dir = has_kernel.then(|| config.pin_dir.clone());

        let forward = Arc::new(ForwardTable::new());
        let counters = Arc::new(UserCounters::new(config.sessions.max_sessions));
        let (plane, adopted) =
            session_plane(config, &listen, forward.clone(), counters.clone(), kernel)?;
        let plane: SharedPlane = Arc::new(Mutex::new(plane));
        let fleet = crate::fleet::Fleet::open(
            crate::fleet::Alternates::from_config(config.fleet.as_ref()),
            pin_dir.as_deref(),
        );
        let api_state = ApiState::new(
            plane.clone(),
            TokenStore::new(&config.api.tokens),
            config.api.requests_per_sec_per_source,
        )
        .with_fleet(fleet);

        let fronts = fronts::start_all(&FrontContext {
            config,
            listen: &listen,
            plane: &plane,
            forward: &forward,
            counters: &counters,
            api: &api_state,
            pin_dir: pin_dir.as_deref(),
        })?;

        let _ = api_state.readiness.set(crate::api::fleet::ReadinessSource {
            xdp_off: config.xdp.mode == crate::config::XdpMode::Off,
            interfaces: config.interfaces.clone(),
            pin_dir: pin_dir.clone(),
            max_sessions: config.sessions.max_sessions,
            fronts: fronts.clone(),
        });
        let (shutdown, stopped) = watch::channel(false);
        let metrics = match &config.metrics {
            Some(m) => {
                let source = MetricsSource {
                    plane: plane.clone(),
                    pin_dir: pin_dir.clone(),
                    counters: counters.clone(),
                    api: api_state.metrics.clone(),
                    interfaces: config.interfaces.clone(),
                    fronts: fronts.iter().filter_map(|f| f.metrics()).collect(),
                    fleet: api_state.fleet.clone(),
                };
                Some(metrics_server::start(m, source, stopped.clone()).await?)
            }
            None => None,
        };
        let api = ApiServer::start(config, &api_state, &fronts, stopped.clone())?;
        let ticker = ticker::start(plane.clone(), api_state.fleet.clone(), stopped);
        let started = Started {
            relay: fronts.iter().flat_map(|f| f.local_addrs()).collect(),
            api: api.addr,
            metrics,
            xdp,
            adopted,
            api_tls: api.is_tls(),
        };
        info!(
            version = crate::VERSION,
            relay = ?started.relay,
            api = %started.api,
            tls = started.api_tls,
            "relay running"
        );
        Ok(Daemon {
            plane,
            started,
            fronts,
            api,
            ticker,
            shutdown,
            pin_dir,
            config: config.clone(),
            fleet: api_state.fleet.clone(),
        })
    }

    /// The running front of type `F`.
    pub fn front<F: Front>(&self) -> Option<&F> {
        self.fronts
            .iter()
            .find_map(|f| (f.as_ref() as &dyn Any).downcast_ref::<F>())
    }

    /// Applies a re-read configuration: the API's tokens and their quotas, its certificate
    /// files and its request rate, TURN's secrets, users and certificate take effect at once
    /// (requests in flight finish with the old ones); other changes are named in the result and
    /// wait for a restart. Nothing is applied when a new certificate cannot be loaded.
    pub fn reload(&mut self, new: Config) -> Result<Reloaded> {
        let certificate = self.api.prepare(&new)?;
        for front in &self.fronts {
            front.check_reload(&new)?;
        }
        let restart_needed = self.config.restart_needed_for(&new);
        let old_tokens = &self.config.api.tokens;
        let old_names: Vec<&str> = old_tokens.iter().map(|t| t.name.as_str()).collect();
        let new_names: Vec<&str> = new.api.tokens.iter().map(|t| t.name.as_str()).collect();
        // Same name, another secret: a rotation (the name keeps its sessions).
        let rotated: Vec<&str> = new
            .api
            .tokens
            .iter()
            .filter(|t| {
                old_tokens.iter().any(|o| {
                    o.name == t.name && (o.token != t.token || o.token_sha256 != t.token_sha256)
                })
            })
            .map(|t| t.name.as_str())
            .collect();
        let reloaded_certificate = certificate.is_some();
        self.api.apply(&self.config, &new, certificate);
        for front in &self.fronts {
            front.apply_reload(&new);
        }
        self.plane
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_quotas(quotas(&new));
        info!(
            target: "audit",
            added = ?new_names.iter().filter(|n| !old_names.contains(n)).collect::<Vec<_>>(),
            removed = ?old_names.iter().filter(|n| !new_names.contains(n)).collect::<Vec<_>>(),
            rotated = ?rotated,
            tokens = new_names.len(),
            "API tokens reloaded"
        );
        let reloaded = Reloaded {
            tokens: new_names.len(),
            certificate: reloaded_certificate,
            restart_needed,
        };
        // What a restart would apply stays as it runs now; the next reload compares against
        // what runs, so it keeps saying so.
        let mut running = self.config.clone();
        running.api.tokens = new.api.tokens;
        running.api.requests_per_sec_per_source = new.api.requests_per_sec_per_source;
        if let (Some(old), Some(files)) = (&mut running.api.tls, new.api.tls) {
            *old = files;
        }
        if let (Some(old), Some(turn)) = (&mut running.turn, new.turn) {
            old.secrets = turn.secrets;
            old.users = turn.users;
            if let (Some(old), Some(files)) = (&mut old.tls, turn.tls) {
                old.cert = files.cert;
                old.key = files.key;
            }
        }
        self.config = running;
        Ok(reloaded)
    }

    /// Draining, and the fleet's alternates.
    pub fn fleet(&self) -> &crate::fleet::Fleet {
        &self.fleet
    }

    /// Stops accepting API requests and datagrams, writes the final counters, and leaves the
    /// pinned fast-path state in place: bound sessions keep being forwarded in the kernel and
    /// the next daemon adopts them. With `detach`, the XDP program is detached from the
    /// interfaces too (nothing is relayed until a daemon runs again), but sessions stay pinned.
    pub async fn stop(self, detach: bool) {
        let _ = self.shutdown.send(true);
        self.api.stopped().await;
        let _ = self.ticker.await;
        for front in &self.fronts {
            front.stop();
        }
        let mut plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
        plane.flush_counters(Instant::now());
        if detach && let Some(dir) = &self.pin_dir {
            for interface in crate::dataplane::attachment::pinned_interfaces(dir) {
                let pin = crate::dataplane::loader::link_pin_path(dir, &interface);
                match std::fs::remove_file(&pin) {
                    Ok(()) => info!(interface, "XDP detached on exit (--detach-on-exit)"),
                    Err(e) => warn!(interface, error = %e, "could not unpin the XDP link"),
                }
            }
            // The link's last reference is this process's, closed when it exits.
            plane.release_kernel();
        }
        info!(
            sessions = plane.table().len(),
            kernel = plane.has_kernel(),
            "relay stopped; pinned sessions stay in the fast path"
        );
    }
}
