//! Floods of connections that prove nothing — idle TCP connections to the TURN port and TLS
//! handshakes that never finish — from one address or from many, while legitimate clients
//! allocate from another NAT: what the daemon's memory does, what the caps refuse, and how the
//! legitimate clients fare.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;
use tokio::{io::AsyncWriteExt, net::TcpSocket, sync::Semaphore};

use super::{
    client::{Job, Server},
    crowd::{self, Latency},
    process,
};
use crate::nat_lab::{Host, NatLab};

/// How long a flood connection stays open unless the server closes it first (longer than the
/// server's 10 s allocation deadline, so the deadline is what closes them).
const HOLD: Duration = Duration::from_secs(15);
/// Flood connections open at once, at most (the harness's own descriptors).
const OPEN_AT_ONCE: usize = 15_000;
/// Connection attempts per second.
const RATE: u64 = 4000;

/// One flood.
#[derive(Clone, Debug, Serialize)]
pub struct FloodOptions {
    /// What it is, for the report.
    pub name: String,
    /// Idle TCP connections attempted.
    pub idle_tcp: u64,
    /// TLS handshakes attempted that never finish.
    pub tls_handshakes: u64,
    /// Source addresses of the flood (one: the flooding host's; more: extra addresses on
    /// it).
    pub sources: Vec<IpAddr>,
}

/// What a flood showed.
#[derive(Clone, Debug, Serialize)]
pub struct FloodReport {
    /// What ran.
    pub options: FloodOptions,
    /// Connections the server kept open for more than a second (before its deadline or a
    /// newer connection closed them).
    pub held: u64,
    /// Connections refused (reset) or that failed to connect.
    pub refused: u64,
    /// The daemon's resident memory before the flood and at its peak, MiB.
    pub rss_before_mib: f64,
    /// Peak during the flood.
    pub rss_peak_mib: f64,
    /// The daemon's descriptors before the flood and at their peak: the connections it held
    /// at once.
    pub descriptors_before: usize,
    /// Peak during the flood.
    pub descriptors_peak: usize,
    /// Legitimate clients started during the flood, and how many relayed everything.
    pub legit_clients: usize,
    /// Those that succeeded.
    pub legit_succeeded: usize,
    /// Their first Allocate to first relayed byte.
    pub legit_first_byte: Latency,
}

/// Runs `options`' flood from `host` against `server` while `legit` clients start from client
/// B over the flood's first seconds; samples the daemon `pid`'s memory.
pub fn run(
    lab: &NatLab,
    host: Host,
    pid: u32,
    server: &Server,
    options: FloodOptions,
    legit: Vec<Job>,
) -> Result<FloodReport> {
    let rss_before = process::rss_kib(pid);
    let descriptors_before = process::descriptors(pid);
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_before));
    let peak_descriptors = Arc::new(AtomicU64::new(descriptors_before as u64));
    std::thread::scope(|scope| -> Result<FloodReport> {
        let sampler = {
            let (done, peak, peak_descriptors) =
                (done.clone(), peak.clone(), peak_descriptors.clone());
            scope.spawn(move || {
                while !done.load(Relaxed) {
                    peak.fetch_max(process::rss_kib(pid), Relaxed);
                    peak_descriptors.fetch_max(process::descriptors(pid) as u64, Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let flood = {
            let (options, server) = (options.clone(), server.clone());
            scope.spawn(move || {
                lab.in_host(host, move || -> Result<(u64, u64)> {
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(flood(options, server))
                })
            })
        };
        // The legitimate clients start a second in, while the flood builds up.
        std::thread::sleep(Duration::from_secs(1));
        let n = legit.len();
        let outcomes = crowd::run(
            lab,
            Host::ClientB,
            server,
            legit,
            Duration::from_secs(3),
            || {},
        )?;
        let (held, refused) = flood.join().expect("no panic")??;
        done.store(true, Relaxed);
        let _ = sampler.join();
        Ok(FloodReport {
            options,
            held,
            refused,
            rss_before_mib: rss_before as f64 / 1024.0,
            rss_peak_mib: peak.load(Relaxed) as f64 / 1024.0,
            descriptors_before,
            descriptors_peak: peak_descriptors.load(Relaxed) as usize,
            legit_clients: n,
            legit_succeeded: outcomes.iter().filter(|o| o.error.is_none()).count(),
            legit_first_byte: Latency::of(outcomes.iter().filter_map(|o| o.first_byte).collect()),
        })
    })
}

/// The flood itself: connections paced at [`RATE`], at most [`OPEN_AT_ONCE`] open; returns
/// (held, refused).
async fn flood(options: FloodOptions, server: Server) -> Result<(u64, u64)> {
    let open = Arc::new(Semaphore::new(OPEN_AT_ONCE));
    let held = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let total = options.idle_tcp + options.tls_handshakes;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = Duration::from_micros(i * 1_000_000 / RATE);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let permit = open.clone().acquire_owned().await.expect("never closed");
        let source = options.sources[i as usize % options.sources.len()];
        let tls = i >= options.idle_tcp;
        let to = if tls { server.turns } else { server.turn };
        let (held, refused) = (held.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            match connection(source, to, tls).await {
                Ok(true) => held.fetch_add(1, Relaxed),
                _ => refused.fetch_add(1, Relaxed),
            };
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok((held.load(Relaxed), refused.load(Relaxed)))
}

/// One flood connection from `source`: connect, send a TLS record header that promises more
/// than comes (for TLS), then wait until the server closes it or [`HOLD`] passes. Whether the
/// server held it more than a second.
async fn connection(source: IpAddr, to: SocketAddr, tls: bool) -> Result<bool> {
    let socket = if to.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(to).await?;
    if tls {
        // A handshake record of 512 bytes, of which 16 arrive: the server waits for the rest.
        let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        partial.resize(5 + 16, 0);
        stream.write_all(&partial).await?;
    }
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(HOLD, async {
        loop {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Ok::<_, std::io::Error>(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    Ok(opened.elapsed() > Duration::from_secs(1))
}
