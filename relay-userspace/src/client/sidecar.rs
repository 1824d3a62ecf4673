//! The client sidecar: a local UDP port that carries any UDP application's datagrams through a
//! relay session. The application (stock WireGuard, say, with `Endpoint = 127.0.0.1:PORT`)
//! talks to the sidecar; the sidecar wraps each datagram in a Geneve data header for the
//! session and sends it to the relay, and unwraps what the relay forwards from the peer.
//!
//! The peer's datagrams go to `--app`, or else to where the application last sent from, or
//! before it has sent anything to WireGuard's `ListenPort` on the listen host (see
//! [`super::link::Delivery`]): a peer that only answers must receive the handshake it answers.
//! A datagram that cannot be delivered either way is counted and logged, never dropped quietly.
//!
//! It keeps the leg bound: it binds at start, refreshes the bind every `keepalive` (which also
//! keeps its NAT mapping open and the session from expiring), and binds again at once when its
//! local address changes, or once when the peer's datagrams stop while the application keeps
//! sending (see [`super::link::BindSchedule`]).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use relay_common::geneve::{Datagram, GENEVE_HLEN, GENEVE_PROTOCOL_DATA, GeneveHdr};
use tokio::{net::UdpSocket, sync::watch};
use tracing::{debug, info, warn};

use super::{
    handshake::{Handshake, Step},
    link::{BindOutcome, BindSchedule, Delivery, DeliverySource, LogEvery, RebindReason},
};
use crate::fronts::geneve::ticket::Ticket;

/// Which of the ticket's relay endpoints to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// The first that binds, in ticket order.
    Auto,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// Sidecar settings.
#[derive(Clone, Debug)]
pub struct SidecarOptions {
    /// The leg to join.
    pub ticket: Ticket,
    /// Local address the application sends to.
    pub listen: SocketAddr,
    /// Where to deliver the peer's datagrams. Default: where the application last sent from,
    /// and before it has sent, WireGuard's `ListenPort` (51820) on the listen host.
    pub app: Option<SocketAddr>,
    /// Relay endpoint family.
    pub family: Family,
    /// Local address to send to the relay from (default: chosen by routing).
    pub bind: Option<IpAddr>,
    /// Bind refresh interval (keeps the NAT mapping and the session alive).
    pub keepalive: Duration,
    /// Check the path with one bind when the peer's datagrams have stopped this long while the
    /// application keeps sending.
    pub silence: Duration,
}

/// Counters and state of a running sidecar.
#[derive(Debug, Default)]
pub struct SidecarStats {
    /// Datagrams from the application sent to the relay.
    pub to_relay: AtomicU64,
    /// Datagrams from the peer delivered to the application.
    pub to_app: AtomicU64,
    /// Completed binds (first bind, refreshes and re-binds).
    pub binds: AtomicU64,
    /// Datagrams from the peer that did not reach the application (nothing listens at the
    /// delivery address, or the send failed).
    pub undeliverable: AtomicU64,
    /// Datagrams from the application dropped because the leg was not bound yet (or the send
    /// to the relay failed).
    pub unsent: AtomicU64,
}

/// Milliseconds since the Unix epoch (bind generations).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local address of the relay socket: `bind` if given (of the endpoint's family), else any.
fn local_for(relay: SocketAddr, bind: Option<IpAddr>) -> SocketAddr {
    match bind {
        Some(ip) if ip.is_ipv4() == relay.is_ipv4() => SocketAddr::new(ip, 0),
        _ => unspecified(relay),
    }
}

fn unspecified(of: SocketAddr) -> SocketAddr {
    match of {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// The source address the kernel would use towards `relay` now (no packet is sent).
fn route_source(relay: SocketAddr, bind: Option<IpAddr>) -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind(local_for(relay, bind)).ok()?;
    probe.connect(relay).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// The endpoints to try, in order.
fn candidates(ticket: &Ticket, family: Family, bind: Option<IpAddr>) -> Vec<SocketAddr> {
    ticket
        .relay
        .iter()
        .copied()
        .filter(|e| match family {
            Family::Auto => bind.is_none_or(|b| b.is_ipv4() == e.is_ipv4()),
            Family::V4 => e.is_ipv4(),
            Family::V6 => e.is_ipv6(),
        })
        .collect()
}

/// Resolves when `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// How often a repeated problem is logged (each line says how many times it happened).
const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The application side: the socket the application talks to and where the peer's datagrams
/// go.
struct AppPort {
    socket: UdpSocket,
    delivery: Delivery,
    undeliverable_log: LogEvery,
}

impl AppPort {
    async fn bind(listen: SocketAddr, app: Option<SocketAddr>) -> Result<AppPort> {
        let socket = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("binding the application port {listen}"))?;
        // Report ICMP errors on this unconnected socket: "port unreachable" after a delivery
        // means nothing listens at the delivery address, which the user must hear about.
        let recv_err = match listen {
            SocketAddr::V4(_) => {
                nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv4RecvErr, &true)
            }
            SocketAddr::V6(_) => {
                nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6RecvErr, &true)
            }
        };
        recv_err.context("enabling ICMP error reports on the application port")?;
        Ok(AppPort {
            socket,
            delivery: Delivery::new(app, listen),
            undeliverable_log: LogEvery::new(PROBLEM_LOG_INTERVAL),
        })
    }

    /// Hands one datagram of the peer to the application.
    async fn deliver(&mut self, payload: &[u8], stats: &SidecarStats) {
        let target = self.delivery.target();
        let mut result = self.socket.send_to(payload, target).await;
        if let Err(e) = &result
            && e.kind() == io::ErrorKind::ConnectionRefused
        {
            // An ICMP error about an earlier datagram, reported on this send: count that one
            // and send this one again.
            self.refused(stats);
            result = self.socket.send_to(payload, target).await;
        }
        match result {
            Ok(_) => {
                stats.to_app.fetch_add(1, Relaxed);
            }
            Err(e) => self.undeliverable(stats, &e),
        }
    }

    /// The kernel reported that a datagram to the application was refused (ICMP port
    /// unreachable): nothing listens at the delivery address.
    fn refused(&mut self, stats: &SidecarStats) {
        self.drain_error_queue();
        self.undeliverable(
            stats,
            &io::Error::new(io::ErrorKind::ConnectionRefused, "nothing listens there"),
        );
    }

    fn undeliverable(&mut self, stats: &SidecarStats, error: &io::Error) {
        let total = stats.undeliverable.fetch_add(1, Relaxed) + 1;
        let Some(count) = self.undeliverable_log.hit(Instant::now()) else {
            return;
        };
        let target = self.delivery.target();
        let advice = match self.delivery.source() {
            DeliverySource::Configured => "check that the application listens at --app",
            DeliverySource::Learned => "the application stopped listening where it sent from",
            DeliverySource::Default => {
                "the application has not sent anything yet, so they went to WireGuard's default \
                 port: start the application, or give --app with the address it listens on \
                 (WireGuard: 127.0.0.1:<ListenPort>)"
            }
        };
        warn!(
            %target,
            %error,
            dropped = count,
            total,
            "could not deliver the peer's datagrams to the application; {advice}"
        );
    }

    /// Empties the socket's error queue (IP_RECVERR keeps each ICMP error there until read,
    /// charged to the receive buffer).
    fn drain_error_queue(&self) {
        use nix::sys::socket::{MsgFlags, recv};
        let mut buf = [0u8; 256];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        while recv(self.socket.as_raw_fd(), &mut buf, flags).is_ok() {}
    }
}

/// Sends to the relay; a failure (no route, say, while the network changes) is logged and the
/// datagram counted as unsent: the bind schedule repairs the path, the sidecar keeps running.
async fn send_to_relay(
    socket: &UdpSocket,
    datagram: &[u8],
    relay: SocketAddr,
    log: &mut LogEvery,
    stats: &SidecarStats,
) -> bool {
    match socket.send_to(datagram, relay).await {
        Ok(_) => true,
        Err(error) => {
            stats.unsent.fetch_add(1, Relaxed);
            if let Some(count) = log.hit(Instant::now()) {
                warn!(%relay, %error, failed = count, "could not send to the relay");
            }
            false
        }
    }
}

/// Runs until `shutdown` turns true. Reports the bound public address through `status`.
pub async fn run(
    options: SidecarOptions,
    stats: Arc<SidecarStats>,
    status: watch::Sender<Option<SocketAddr>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let endpoints = candidates(&options.ticket, options.family, options.bind);
    if endpoints.is_empty() {
        bail!("the ticket has no relay endpoint of the requested family");
    }
    let mut app = AppPort::bind(options.listen, options.app).await?;
    info!(
        listen = %app.socket.local_addr()?,
        vni = options.ticket.vni,
        leg = options.ticket.leg,
        "sidecar listening"
    );
    match app.delivery.source() {
        DeliverySource::Configured => {
            info!(app = %app.delivery.target(), "delivering the peer's datagrams to --app")
        }
        _ => info!(
            app = %app.delivery.target(),
            "delivering the peer's datagrams to WireGuard's default port until the application \
             sends (then to where it sends from); --app sets it"
        ),
    }
    let header = GeneveHdr::new(options.ticket.vni, false, GENEVE_PROTOCOL_DATA).to_bytes();
    let mut relay_log = LogEvery::new(PROBLEM_LOG_INTERVAL);
    let mut unbound_log = LogEvery::new(PROBLEM_LOG_INTERVAL);
    let mut endpoint_index = 0;
    'endpoints: loop {
        let relay = endpoints[endpoint_index % endpoints.len()];
        endpoint_index += 1;
        let relay_socket = UdpSocket::bind(local_for(relay, options.bind))
            .await
            .context("opening the relay socket")?;
        let mut hs = Handshake::new(options.ticket.vni, options.ticket.leg, options.ticket.key);
        let now = Instant::now();
        let first = hs.start(now, unix_ms());
        send_to_relay(&relay_socket, &first, relay, &mut relay_log, &stats).await;
        let mut schedule = BindSchedule::new(options.keepalive, options.silence, now);
        let mut bound = false;
        let mut source = route_source(relay, options.bind);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut from_relay = vec![0u8; 65536];
        let mut from_app = vec![0u8; 65536 + GENEVE_HLEN];
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                r = relay_socket.recv_from(&mut from_relay) => {
                    let Ok((n, src)) = r else {
                        // An ICMP error from the path to the relay: the handshake's retries
                        // and the bind schedule deal with a dead path.
                        continue;
                    };
                    if src != relay {
                        continue;
                    }
                    let datagram = &from_relay[..n];
                    match Datagram::classify(datagram) {
                        Datagram::Control { .. } => match hs.on_datagram(datagram, Instant::now()) {
                            Step::Send(answer) => {
                                send_to_relay(&relay_socket, &answer, relay, &mut relay_log, &stats).await;
                            }
                            Step::Bound { observed } => {
                                stats.binds.fetch_add(1, Relaxed);
                                match schedule.on_bound(observed) {
                                    BindOutcome::First => info!(%relay, %observed, "bound to the relay"),
                                    BindOutcome::Moved { from } => {
                                        info!(%relay, %from, %observed, "the relay sees us at a new address; leg moved")
                                    }
                                    BindOutcome::Unchanged => debug!(%observed, "bind refreshed"),
                                }
                                bound = true;
                                let _ = status.send(Some(observed));
                            }
                            _ => {}
                        },
                        Datagram::Data { vni } if vni == options.ticket.vni => {
                            schedule.on_peer_datagram(Instant::now());
                            app.deliver(&datagram[GENEVE_HLEN..], &stats).await;
                        }
                        _ => {}
                    }
                }
                r = app.socket.recv_from(&mut from_app[GENEVE_HLEN..]) => {
                    let (n, src) = match r {
                        Ok(received) => received,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            app.refused(&stats);
                            continue;
                        }
                        Err(e) => return Err(e).context("receiving from the application"),
                    };
                    if app.delivery.on_app_datagram(src) {
                        info!(app = %src, "delivering the peer's datagrams to where the application sends from");
                    }
                    schedule.on_app_datagram(Instant::now());
                    if !bound {
                        stats.unsent.fetch_add(1, Relaxed);
                        if let Some(count) = unbound_log.hit(Instant::now()) {
                            warn!(%relay, dropped = count, "the relay has not bound this leg yet; dropping the application's datagrams until it does");
                        }
                        continue;
                    }
                    from_app[..GENEVE_HLEN].copy_from_slice(&header);
                    if send_to_relay(&relay_socket, &from_app[..GENEVE_HLEN + n], relay, &mut relay_log, &stats).await {
                        stats.to_relay.fetch_add(1, Relaxed);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    match hs.poll(now) {
                        Step::Send(m) => {
                            send_to_relay(&relay_socket, &m, relay, &mut relay_log, &stats).await;
                        }
                        Step::GaveUp => {
                            warn!(%relay, "no answer from the relay; trying again");
                            if !bound || endpoints.len() > 1 {
                                let _ = status.send(None);
                                continue 'endpoints;
                            }
                            schedule.on_bind_started(now);
                            let m = hs.start(now, unix_ms());
                            send_to_relay(&relay_socket, &m, relay, &mut relay_log, &stats).await;
                        }
                        _ => {}
                    }
                    if hs.in_progress() {
                        continue;
                    }
                    let moved = route_source(relay, options.bind);
                    if let Some(reason) = schedule.due(now, moved != source) {
                        match reason {
                            RebindReason::Keepalive => debug!(reason = reason.as_str(), "binding again"),
                            _ => info!(reason = reason.as_str(), "binding again"),
                        }
                        source = moved;
                        schedule.on_bind_started(now);
                        let m = hs.start(now, unix_ms());
                        send_to_relay(&relay_socket, &m, relay, &mut relay_log, &stats).await;
                    }
                }
            }
        }
    }
}
