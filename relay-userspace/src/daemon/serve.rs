//! Starting and stopping the daemon.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_common::maps::SessionLimits;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tracing::{info, warn};

use super::{
    attach::{self, AttachedMode},
    host,
    plane::{KernelState, Plane, SharedPlane},
};
use crate::{
    api::{self, ApiState, auth::TokenStore, types::Endpoints},
    config::{Config, XdpMode},
    control::{address_policy::AddressPolicy, table::TableSettings},
    dataplane::{Dataplane, LoadOptions, settings::FastPathSettings},
    forwarder::{Forwarder, counters::UserCounters, table::ForwardTable},
    metrics::{self, ApiMetrics, RelayCollector},
};

/// How often sessions are checked for expiry and userspace counters copied to the maps.
const TICK: Duration = Duration::from_secs(1);

/// What the daemon resolved at start, for logs and tests.
#[derive(Clone, Debug)]
pub struct Started {
    /// Relay sockets' local addresses (one per family).
    pub relay: Vec<SocketAddr>,
    /// API address.
    pub api: SocketAddr,
    /// Metrics endpoint address, if enabled.
    pub metrics: Option<SocketAddr>,
    /// XDP mode per interface.
    pub xdp: Vec<(String, AttachedMode)>,
    /// Sessions taken over from a previous daemon.
    pub adopted: usize,
}

/// The local addresses to listen on: configured, or the interfaces' own.
fn listen_addresses(config: &Config) -> Result<Vec<IpAddr>> {
    if !config.relay.listen.is_empty() {
        return Ok(config.relay.listen.clone());
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for interface in &config.interfaces {
        for ip in host::interface_addresses(interface)? {
            if !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no address found on {:?}: set relay.listen",
            config.interfaces
        );
    }
    Ok(out)
}

/// The kernel side and the mode each interface runs in.
type KernelSetup = (Option<KernelState>, Vec<(String, AttachedMode)>);

/// Loads the XDP object, configures and attaches it (unless `xdp.mode: off`, where only the
/// maps are used, and only if they can be).
fn kernel_state(config: &Config, settings: &FastPathSettings) -> Result<KernelSetup> {
    let options = LoadOptions {
        pin_dir: config.pin_dir.clone(),
        max_sessions: config.sessions.max_sessions,
        nexthop_cache_entries: settings.cache_entries(),
        shared_from: None,
    };
    let mut dataplane = match Dataplane::load(&options) {
        Ok(d) => d,
        Err(e) if config.xdp.mode == XdpMode::Off => {
            warn!(
                error = format!("{e:#}"),
                "xdp.mode is off and the BPF maps are unavailable: sessions live in memory only \
                 (the CLI cannot show them, a restart drops them)"
            );
            return Ok((None, Vec::new()));
        }
        Err(e) => {
            return Err(e.context("loading the XDP fast path (xdp.mode: off runs without it)"));
        }
    };
    // The program's rare warnings (rate-limited in the kernel) join the daemon's logs.
    if let Some(reader) = dataplane.logger(log::logger()) {
        spawn_kernel_log_reader(reader);
    }
    let clock = dataplane.clock().context("calibrating the kernel clock")?;
    dataplane.pin_clock_probe()?;
    let mut attached = Vec::new();
    if config.xdp.mode == XdpMode::Off {
        // Maps only (sessions survive a later switch back); no program on any interface.
        dataplane.maps.set_config(&Default::default())?;
        attach::detach_all(&dataplane)?;
    } else {
        dataplane.maps.set_config(&settings.to_map_value(&clock))?;
        for interface in &config.interfaces {
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str())
                .with_context(|| format!("interface {interface} not found"))?;
            dataplane
                .maps
                .redirect
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("adding {interface} to the redirect map"))?;
            if config.xdp.manage_forwarding
                && let Err(e) = host::enable_forwarding(interface)
            {
                // Still a working relay, only slower: every packet takes the userspace path
                // (counted as passed_fib_forwarding_disabled, and logged by the program).
                warn!(
                    interface,
                    error = format!("{e:#}"),
                    "could not enable IP forwarding: the fast path will hand every packet to userspace"
                );
            }
            let mode = attach::attach(&mut dataplane, interface, config.xdp.mode)?;
            info!(interface, %mode, "XDP fast path attached");
            attached.push((interface.clone(), mode));
        }
        attach::record_build(&mut dataplane)?;
    }
    Ok((Some(KernelState { dataplane, clock }), attached))
}

/// Forwards aya-log records from the XDP program to the `log` facade (and so to tracing)
/// whenever its ring buffer has data.
fn spawn_kernel_log_reader(reader: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's file descriptor, which stays open and unchanged
    // for as long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        warn!("cannot poll the XDP program's log buffer; its warnings will not be shown");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                break;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// A running daemon.
pub struct Daemon {
    /// The control plane.
    pub plane: SharedPlane,
    /// What was started.
    pub started: Started,
    forwarder: Forwarder,
    pin_dir: Option<std::path::PathBuf>,
    api: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Daemon {
    /// Starts every component. Must run inside a tokio runtime.
    pub async fn start(config: &Config) -> Result<Daemon> {
        let listen = listen_addresses(config)?;
        let v4 = listen.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            _ => None,
        });
        let v6 = listen.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            _ => None,
        });
        let mut settings = FastPathSettings::new(v4, v6, config.relay.port);
        settings.nexthop_ttl = config.xdp.nexthop_cache_ttl;
        settings.nexthop_cache_entries = config.xdp.nexthop_cache_entries;
        let (kernel, xdp) = kernel_state(config, &settings)?;

        let forward = Arc::new(ForwardTable::new());
        let counters = Arc::new(UserCounters::new(config.sessions.max_sessions));
        let endpoints = Endpoints {
            v4: config
                .relay
                .advertise
                .v4
                .or(v4.map(|ip| SocketAddr::new(ip.into(), config.relay.port))),
            v6: config
                .relay
                .advertise
                .v6
                .or(v6.map(|ip| SocketAddr::new(ip.into(), config.relay.port))),
        };
        let mut own: Vec<IpAddr> = listen.clone();
        own.extend(endpoints.all().iter().map(|e| e.ip()));
        let legs = &config.sessions.leg_addresses;
        let policy = AddressPolicy {
            refuse_private: legs.refuse_private,
            allow: legs.allow.clone(),
            deny: legs.deny.clone(),
            ..AddressPolicy::strict(own)
        };
        let table = TableSettings {
            max_sessions: config.sessions.max_sessions,
            quotas: config
                .api
                .tokens
                .iter()
                .map(|t| (t.name.clone(), t.max_sessions))
                .collect(),
            bind_lifetime: config.sessions.bind_lifetime,
            idle_lifetime: config.sessions.idle_lifetime,
            limits: SessionLimits {
                packets_per_sec: config.sessions.packets_per_sec,
                kbytes_per_sec: config.sessions.kbytes_per_sec,
            },
        };
        let mut plane = Plane::new(
            table,
            config.sessions.cookie_rotation,
            policy,
            forward.clone(),
            counters.clone(),
            kernel,
        )
        .with_binds_per_source(config.sessions.binds_per_sec_per_source);
        let has_kernel = plane.has_kernel();
        let adopted = plane.adopt_pinned()?;
        if adopted > 0 {
            info!(adopted, "took over sessions from the pinned maps");
        }
        let plane: SharedPlane = Arc::new(Mutex::new(plane));

        let sockets: Vec<SocketAddr> = listen
            .iter()
            .map(|ip| SocketAddr::new(*ip, config.relay.port))
            .collect();
        let workers = match config.relay.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let forwarder =
            Forwarder::start(&sockets, workers, forward, counters.clone(), plane.clone())
                .with_context(|| format!("opening the relay sockets {sockets:?}"))?;

        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("binding the API to {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let api_metrics = Arc::new(ApiMetrics::default());
        let router = api::router(
            ApiState {
                plane: plane.clone(),
                tokens: Arc::new(TokenStore::new(&config.api.tokens)),
                endpoints,
                metrics: api_metrics.clone(),
            },
            config.api.max_body_bytes,
        );
        let metrics_addr = match &config.metrics {
            Some(m) => {
                let source = MetricsSource {
                    plane: plane.clone(),
                    pin_dir: has_kernel.then(|| config.pin_dir.clone()),
                    counters: counters.clone(),
                    api: api_metrics,
                    interfaces: config.interfaces.clone(),
                    top_sessions: m.top_sessions,
                };
                let listener = TcpListener::bind(m.listen)
                    .await
                    .with_context(|| format!("binding the metrics endpoint to {}", m.listen))?;
                let addr = listener.local_addr()?;
                let mut metrics_stopped = stopped.clone();
                tokio::spawn(async move {
                    let app = axum::Router::new().route(
                        "/metrics",
                        axum::routing::get(move || {
                            let source = source.clone();
                            async move { source.scrape() }
                        }),
                    );
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = metrics_stopped.wait_for(|s| *s).await;
                    });
                    if let Err(e) = serve.await {
                        warn!(error = %e, "metrics server failed");
                    }
                });
                info!(%addr, "metrics endpoint");
                Some(addr)
            }
            None => None,
        };
        let mut api_stopped = stopped.clone();
        let api = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = api_stopped.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "API server failed");
            }
        });
        let ticking = plane.clone();
        // Under systemd with WatchdogSec=, a ping per tick proves the control plane still turns
        // over (a stuck lock stops the pings and systemd restarts the daemon).
        let mut watchdog_usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                {
                    let mut plane = ticking.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    plane.expire(now);
                    plane.flush_counters(now);
                }
                if watchdog {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
            }
        });
        let started = Started {
            relay: forwarder.local_addrs().to_vec(),
            api: api_addr,
            metrics: metrics_addr,
            xdp,
            adopted,
        };
        info!(relay = ?started.relay, api = %started.api, "relay running");
        Ok(Daemon {
            plane,
            started,
            forwarder,
            pin_dir: has_kernel.then(|| config.pin_dir.clone()),
            api,
            ticker,
            shutdown,
        })
    }

    /// Stops accepting API requests and datagrams, writes the final counters, and leaves the
    /// pinned fast-path state in place: bound sessions keep being forwarded in the kernel and
    /// the next daemon adopts them. With `detach`, the XDP program is detached from the
    /// interfaces too (nothing is relayed until a daemon runs again), but sessions stay pinned.
    pub async fn stop(self, detach: bool) {
        let _ = self.shutdown.send(true);
        let _ = self.api.await;
        let _ = self.ticker.await;
        self.forwarder.stop();
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

/// What the metrics endpoint reads on each scrape.
#[derive(Clone)]
struct MetricsSource {
    plane: SharedPlane,
    pin_dir: Option<std::path::PathBuf>,
    counters: Arc<UserCounters>,
    api: Arc<ApiMetrics>,
    interfaces: Vec<String>,
    top_sessions: usize,
}

impl MetricsSource {
    fn scrape(&self) -> axum::response::Response {
        use axum::response::IntoResponse;
        let collector = RelayCollector {
            plane: self.plane.clone(),
            pin_dir: self.pin_dir.clone(),
            counters: self.counters.clone(),
            api: self.api.clone(),
            interfaces: self.interfaces.clone(),
            top_sessions: self.top_sessions,
        };
        match metrics::render(collector) {
            Ok(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; `detach_on_exit` see [`Daemon::stop`].
pub async fn run(config: Config, detach_on_exit: bool) -> Result<()> {
    // Handlers first: a stop request that arrives the moment we report ready must still stop
    // us gracefully (leaving the fast path running), not kill us.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(&config).await?;
    let status = format!(
        "relaying on {:?}, {} sessions adopted",
        daemon.started.relay, daemon.started.adopted
    );
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    );
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.stop(detach_on_exit).await;
    Ok(())
}
