//! Starting and stopping the daemon.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use relay_common::maps::SessionLimits;
use tokio::{net::TcpListener, signal::unix::SignalKind};
use tracing::{error, info, warn};

use super::{
    attach::{self, AttachedMode},
    host,
    plane::{KernelState, Plane, SharedPlane},
};
use crate::{
    api::{self, ApiState, auth::TokenStore, types::Endpoints},
    config::{Config, XdpMode},
    control::{address_policy::AddressPolicy, source_limit::SourceLimiter, table::TableSettings},
    dataplane::{Dataplane, LoadOptions, settings::FastPathSettings},
    forwarder::{Forwarder, counters::UserCounters, table::ForwardTable},
    metrics::{self, ApiMetrics, RelayCollector},
};

/// How often sessions are checked for expiry and userspace counters copied to the maps.
const TICK: Duration = Duration::from_secs(1);

/// How long a stopping daemon lets API requests in flight finish.
const API_DRAIN: Duration = Duration::from_secs(5);

/// How long an API connection may take to send its first request (after the TLS handshake,
/// which has its own 10 s limit): idle connections must not pile up.
const API_FIRST_REQUEST: Duration = Duration::from_secs(10);

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
    /// The configuration in force (the last one reloaded, for reload's comparison).
    config: Config,
    tokens: Arc<ArcSwap<TokenStore>>,
    requests: Arc<Mutex<SourceLimiter>>,
    tls: Option<RustlsConfig>,
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

        let tls = match &config.api.tls {
            Some(t) => Some(RustlsConfig::from_config(api::tls::server_config(t)?)),
            None => None,
        };
        let listener = std::net::TcpListener::bind(config.api.listen)
            .with_context(|| format!("binding the API to {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let api_state = ApiState::new(
            plane.clone(),
            TokenStore::new(&config.api.tokens),
            endpoints,
            config.api.requests_per_sec_per_source,
        );
        let api_metrics = api_state.metrics.clone();
        let (tokens, requests) = (api_state.tokens.clone(), api_state.requests.clone());
        let router = api::router(api_state, config.api.max_body_bytes);
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
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(listener)?
            .handle(handle.clone())
            .first_request_timeout(API_FIRST_REQUEST);
        // The peer address feeds the per-source request limit.
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let acceptor = tls.clone().map(RustlsAcceptor::new);
        let mut api_stopped = stopped.clone();
        tokio::spawn(async move {
            let _ = api_stopped.wait_for(|s| *s).await;
            handle.graceful_shutdown(Some(API_DRAIN));
        });
        let api = tokio::spawn(async move {
            let served = match acceptor {
                Some(acceptor) => server.acceptor(acceptor).serve(app).await,
                None => server.serve(app).await,
            };
            if let Err(e) = served {
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
            api_tls: tls.is_some(),
        };
        info!(relay = ?started.relay, api = %started.api, tls = started.api_tls, "relay running");
        Ok(Daemon {
            plane,
            started,
            forwarder,
            pin_dir: has_kernel.then(|| config.pin_dir.clone()),
            config: config.clone(),
            tokens,
            requests,
            tls,
            api,
            ticker,
            shutdown,
        })
    }

    /// Applies a re-read configuration: the API's tokens and their quotas, its certificate
    /// files and its request rate take effect at once (requests in flight finish with the old
    /// ones); other changes are named in the result and wait for a restart. Nothing is applied
    /// when the new certificate cannot be loaded.
    pub fn reload(&mut self, new: Config) -> Result<Reloaded> {
        let certificate = match (&self.tls, &new.api.tls) {
            (Some(_), Some(files)) => Some(api::tls::server_config(files)?),
            _ => None,
        };
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
        self.tokens
            .store(Arc::new(TokenStore::new(&new.api.tokens)));
        self.plane
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_quotas(
                new.api
                    .tokens
                    .iter()
                    .map(|t| (t.name.clone(), t.max_sessions))
                    .collect(),
            );
        let rate = new.api.requests_per_sec_per_source;
        if rate != self.config.api.requests_per_sec_per_source {
            *self.requests.lock().unwrap_or_else(|p| p.into_inner()) = api::request_limiter(rate);
        }
        if let (Some(tls), Some(config)) = (&self.tls, &certificate) {
            tls.reload_from_config(config.clone());
        }
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
            certificate: certificate.is_some(),
            restart_needed,
        };
        // What a restart would apply stays as it runs now; the next reload compares against
        // what runs, so it keeps saying so.
        let mut running = self.config.clone();
        running.api.tokens = new.api.tokens;
        running.api.requests_per_sec_per_source = rate;
        if let (Some(old), Some(files)) = (&mut running.api.tls, new.api.tls) {
            *old = files;
        }
        self.config = running;
        Ok(reloaded)
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

/// Runs the daemon until SIGTERM or SIGINT; `detach_on_exit` see [`Daemon::stop`]. SIGHUP
/// re-reads the configuration at `path` and applies what can be applied in place.
pub async fn run(path: &std::path::Path, config: Config, detach_on_exit: bool) -> Result<()> {
    // Handlers first: a stop request that arrives the moment we report ready must still stop
    // us gracefully (leaving the fast path running), not kill us.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut daemon = Daemon::start(&config).await?;
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
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = hup.recv() => reload(&mut daemon, path),
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.stop(detach_on_exit).await;
    Ok(())
}

/// SIGHUP: re-reads and applies the configuration, telling systemd (`systemctl reload`) when
/// done. A file that does not load leaves everything as it runs.
fn reload(daemon: &mut Daemon, path: &std::path::Path) {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    states.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(false, &states);
    let outcome = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| daemon.reload(config));
    match outcome {
        Ok(r) => {
            info!(
                tokens = r.tokens,
                certificate = r.certificate,
                "SIGHUP: configuration reloaded"
            );
            if !r.restart_needed.is_empty() {
                warn!(
                    keys = ?r.restart_needed,
                    "SIGHUP: these changes take effect at the next restart"
                );
            }
        }
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: reload refused; the running configuration stays"
        ),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}
