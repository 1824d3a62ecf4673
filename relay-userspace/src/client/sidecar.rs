//! The client sidecar: a local UDP port that carries any UDP application's datagrams through a
//! relay session. The application (stock WireGuard, say, with `Endpoint = 127.0.0.1:PORT`)
//! talks to the sidecar; the sidecar wraps each datagram in a Geneve data header for the
//! session and sends it to the relay, and unwraps what the relay forwards from the peer.
//!
//! It keeps the leg bound: it binds at start, refreshes the bind every `keepalive` (which also
//! keeps its NAT mapping open and the session from expiring), and re-binds at once when its
//! local address changes or when the relay has gone silent while the application is sending
//! (the NAT mapping changed under it).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use relay_common::wire::{Datagram, GENEVE_HLEN, GENEVE_PROTOCOL_DATA, GeneveHdr};
use tokio::{net::UdpSocket, sync::watch};
use tracing::{debug, info, warn};

use super::handshake::{Handshake, Step};
use crate::control::ticket::Ticket;

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
    /// Where to deliver the peer's datagrams; default: wherever the application last sent from.
    pub app: Option<SocketAddr>,
    /// Relay endpoint family.
    pub family: Family,
    /// Local address to send to the relay from (default: chosen by routing).
    pub bind: Option<IpAddr>,
    /// Bind refresh interval (keeps the NAT mapping and the session alive).
    pub keepalive: Duration,
    /// Re-bind when the relay has sent nothing this long while the application is sending.
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
    let app_socket = UdpSocket::bind(options.listen)
        .await
        .with_context(|| format!("binding the application port {}", options.listen))?;
    info!(listen = %app_socket.local_addr()?, vni = options.ticket.vni, leg = options.ticket.leg, "sidecar listening");
    let mut app_addr = options.app;
    let header = GeneveHdr::new(options.ticket.vni, false, GENEVE_PROTOCOL_DATA).to_bytes();
    let mut endpoint_index = 0;
    'endpoints: loop {
        let relay = endpoints[endpoint_index % endpoints.len()];
        endpoint_index += 1;
        let relay_socket = UdpSocket::bind(local_for(relay, options.bind))
            .await
            .context("opening the relay socket")?;
        let mut hs = Handshake::new(options.ticket.vni, options.ticket.leg, options.ticket.key);
        relay_socket
            .send_to(&hs.start(Instant::now(), unix_ms()), relay)
            .await?;
        let mut bound = false;
        let mut last_bind = Instant::now();
        let mut last_from_relay = Instant::now();
        let mut last_from_app: Option<Instant> = None;
        let mut source = route_source(relay, options.bind);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut from_relay = vec![0u8; 65536];
        let mut from_app = vec![0u8; 65536 + GENEVE_HLEN];
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return Ok(()),
                r = relay_socket.recv_from(&mut from_relay) => {
                    let (n, src) = r.context("receiving from the relay")?;
                    if src != relay {
                        continue;
                    }
                    let datagram = &from_relay[..n];
                    match Datagram::classify(datagram) {
                        Datagram::Control { .. } => match hs.on_datagram(datagram, Instant::now()) {
                            Step::Send(answer) => {
                                relay_socket.send_to(&answer, relay).await?;
                            }
                            Step::Bound { observed } => {
                                last_from_relay = Instant::now();
                                let changed = *status.borrow() != Some(observed);
                                if !bound || changed {
                                    info!(%relay, %observed, "bound to the relay");
                                }
                                bound = true;
                                stats.binds.fetch_add(1, Relaxed);
                                let _ = status.send(Some(observed));
                            }
                            _ => {}
                        },
                        Datagram::Data { vni } if vni == options.ticket.vni => {
                            last_from_relay = Instant::now();
                            if let Some(app) = app_addr {
                                app_socket.send_to(&datagram[GENEVE_HLEN..], app).await?;
                                stats.to_app.fetch_add(1, Relaxed);
                            }
                        }
                        _ => {}
                    }
                }
                r = app_socket.recv_from(&mut from_app[GENEVE_HLEN..]) => {
                    let (n, src) = r.context("receiving from the application")?;
                    if options.app.is_none() {
                        app_addr = Some(src);
                    }
                    last_from_app = Some(Instant::now());
                    if bound {
                        from_app[..GENEVE_HLEN].copy_from_slice(&header);
                        relay_socket.send_to(&from_app[..GENEVE_HLEN + n], relay).await?;
                        stats.to_relay.fetch_add(1, Relaxed);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    match hs.poll(now) {
                        Step::Send(m) => { relay_socket.send_to(&m, relay).await?; }
                        Step::GaveUp => {
                            warn!(%relay, "no answer from the relay; trying again");
                            if !bound || endpoints.len() > 1 {
                                let _ = status.send(None);
                                continue 'endpoints;
                            }
                            relay_socket.send_to(&hs.start(now, unix_ms()), relay).await?;
                        }
                        _ => {}
                    }
                    if hs.in_progress() {
                        continue;
                    }
                    let moved = route_source(relay, options.bind);
                    let silent = bound
                        && last_from_app.is_some_and(|a| now - a < options.silence)
                        && now - last_from_relay > options.silence
                        && now - last_bind > options.silence;
                    let reason = if moved != source {
                        Some("local address changed")
                    } else if silent {
                        Some("relay silent while sending")
                    } else if now - last_bind >= options.keepalive {
                        Some("keepalive")
                    } else {
                        None
                    };
                    if let Some(reason) = reason {
                        debug!(reason, "re-binding");
                        if reason != "keepalive" {
                            info!(reason, "re-binding to the relay");
                        }
                        source = moved;
                        last_bind = now;
                        relay_socket.send_to(&hs.start(now, unix_ms()), relay).await?;
                    }
                }
            }
        }
    }
}
