//! TURN over TCP and TLS: messages per server CPU-second and loss, the relay against coturn, at
//! a ladder of offered loads (`cargo xtask bench --only turn`, `relay-lab bench-turn-streams`).
//!
//! The stream path is all userspace, so unlike the UDP benchmark ([`crate::turn_bench`]) the
//! load comes from real connections: clients on the lab's internet router, each with its own
//! allocation made with the real protocol (Allocate with a REST credential, CreatePermission,
//! ChannelBind), sending ChannelData at a steady rate — every millisecond what is due, one write
//! per message as a WebRTC stack sends its packets — to an echo peer ([`EchoPeer`], on the load core), and
//! counting the echoes that come back, each numbered, once. The clients and the peer run on the load core, the server alone on the relay
//! core (`taskset`); its CPU time is its threads' run time (`/proc/<pid>/task/*/schedstat`), the
//! core's busy share kept as a cross-check. A message relayed is one ChannelData in and one
//! datagram out, either way: each echoed message is two.
//!
//! For each server and transport the report gives the highest offered load carried without
//! loss and the messages per server CPU-second there, and the loss at the highest load offered
//! (saturation). coturn runs as in the UDP benchmark (one relay thread, no quotas), with TCP
//! and TLS on and the lab's certificate; the relay with its TLS on the same port (5349) and its
//! per-connection request limit off.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use relay_userspace::fronts::turn::{
    auth::{rest_password, rest_username},
    stream::frame_len,
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

use crate::{
    load::client::{self, CHANNEL, Job, Server, Stream, Transport},
    nat_lab::{Host, LAB_BPFFS, NatLab, addr},
    scenario::{TURN_SECRET, TURNS_PORT},
    throughput::{
        cpu,
        load::{LOAD_CORE, RELAY_CORE},
        report::Mode,
    },
    turn_clients::{EchoPeer, PEER_PORT},
};

/// How long a connection waits for its last echoes after it sent its last message.
const DRAIN: Duration = Duration::from_secs(1);
/// How often a client sends what is due.
const TICK: Duration = Duration::from_millis(1);
/// The target: relay / coturn, messages per server CPU-second at each one's best loss-free load.
pub const TARGET: f64 = 1.5;

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct StreamBenchOptions {
    /// The `relay` binary.
    #[serde(skip)]
    pub relay_bin: PathBuf,
    /// Rounds (each server once per round, the relay first; medians are reported).
    pub rounds: usize,
    /// Connections, each with its own allocation.
    pub connections: usize,
    /// Bytes of each message (ChannelData data).
    pub payload: usize,
    /// Offered loads, messages per second over all connections, in increasing order.
    pub loads: Vec<u32>,
    /// Seconds each load is offered.
    pub seconds: f64,
}

impl StreamBenchOptions {
    /// The full benchmark.
    pub fn full(relay_bin: PathBuf) -> StreamBenchOptions {
        StreamBenchOptions {
            relay_bin,
            rounds: 3,
            connections: 10,
            payload: 100,
            loads: vec![10_000, 40_000, 80_000, 120_000, 160_000],
            seconds: 2.0,
        }
    }

    /// A few seconds: keeps the harness from rotting.
    pub fn quick(relay_bin: PathBuf) -> StreamBenchOptions {
        StreamBenchOptions {
            relay_bin,
            rounds: 1,
            connections: 2,
            payload: 100,
            loads: vec![500, 2_000],
            seconds: 0.5,
        }
    }
}

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamServer {
    /// This relay (XDP native; the stream path is its userspace).
    Relay,
    /// coturn.
    Coturn,
}

impl StreamServer {
    /// For reports.
    pub fn name(self) -> &'static str {
        match self {
            StreamServer::Relay => "relay",
            StreamServer::Coturn => "coturn",
        }
    }
}

/// One load offered to one server over one transport.
#[derive(Clone, Debug, Serialize)]
pub struct StreamCell {
    /// Which server.
    pub server: StreamServer,
    /// TCP or TLS.
    pub transport: Transport,
    /// Messages per second offered, all connections.
    pub offered: u32,
    /// Which round.
    pub round: usize,
    /// Messages sent to the peer.
    pub sent: u64,
    /// Messages echoed back, each counted once.
    pub echoed: u64,
    /// Seconds from the first message to the last echo waited for.
    pub seconds: f64,
    /// The server's CPU time over those seconds, ns.
    pub server_cpu_ns: u64,
    /// How busy the server's core was (0..=1), from `/proc/stat`.
    pub core_busy: f64,
}

impl StreamCell {
    /// Share of the messages sent that did not come back.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.echoed as f64 / self.sent as f64
    }

    /// Messages relayed (each echoed one twice: to the peer and back) per server CPU-second.
    pub fn per_cpu_second(&self) -> f64 {
        (self.sent + self.echoed) as f64 / (self.server_cpu_ns.max(1) as f64 / 1e9)
    }
}

/// One server and transport over all loads.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSummary {
    /// Which server.
    pub server: StreamServer,
    /// TCP or TLS.
    pub transport: Transport,
    /// The highest load carried without loss in every round (none: every load lost some).
    pub best_lossless: Option<u32>,
    /// Messages per server CPU-second there (median over rounds).
    pub per_cpu_at_best: Option<f64>,
    /// CPU µs per relayed message there.
    pub cpu_us_per_message_at_best: Option<f64>,
    /// The highest load offered, and the loss there (worst round).
    pub most_offered: u32,
    /// Loss at the highest load.
    pub loss_at_most: f64,
    /// Messages per server CPU-second at the highest load (median).
    pub per_cpu_at_most: f64,
}

/// Relay against coturn for one transport.
#[derive(Clone, Debug, Serialize)]
pub struct StreamRatio {
    /// TCP or TLS.
    pub transport: Transport,
    /// Relay / coturn, messages per server CPU-second at each one's best loss-free load.
    pub relay_vs_coturn_per_cpu: Option<f64>,
    /// Whether the relay carried without loss every load coturn carried without loss.
    pub lossless_where_coturn_is: bool,
}

/// Everything measured, in the JSON's shape.
#[derive(Clone, Debug, Serialize)]
pub struct StreamBenchResult {
    /// The options.
    pub options: StreamBenchOptions,
    /// How coturn ran.
    pub coturn: String,
    /// Every cell of every round.
    pub cells: Vec<StreamCell>,
    /// Per server and transport.
    pub summaries: Vec<StreamSummary>,
    /// Relay against coturn.
    pub ratios: Vec<StreamRatio>,
    /// The target for `relay_vs_coturn_per_cpu`.
    pub target: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The cells of one server, transport and load (one per round).
fn cells_at(
    cells: &[StreamCell],
    server: StreamServer,
    transport: Transport,
    load: u32,
) -> Vec<&StreamCell> {
    cells
        .iter()
        .filter(|c| c.server == server && c.transport == transport && c.offered == load)
        .collect()
}

/// Whether every round of a load got every echo back (no rounds: not measured, so not).
fn lossless(cells: &[&StreamCell]) -> bool {
    !cells.is_empty() && cells.iter().all(|c| c.echoed >= c.sent)
}

/// Sums up the cells per server and transport.
pub fn summarise(cells: &[StreamCell], loads: &[u32]) -> Vec<StreamSummary> {
    let mut out = Vec::new();
    for server in [StreamServer::Relay, StreamServer::Coturn] {
        for transport in [Transport::Tcp, Transport::Tls] {
            let at = |load: u32| cells_at(cells, server, transport, load);
            let Some(&most) = loads.iter().filter(|l| !at(**l).is_empty()).max() else {
                continue;
            };
            let best = loads.iter().copied().filter(|l| lossless(&at(*l))).max();
            let per_cpu = |load: u32| median(at(load).iter().map(|c| c.per_cpu_second()).collect());
            out.push(StreamSummary {
                server,
                transport,
                best_lossless: best,
                per_cpu_at_best: best.map(per_cpu),
                cpu_us_per_message_at_best: best.map(|b| 1e6 / per_cpu(b)),
                most_offered: most,
                loss_at_most: at(most).iter().map(|c| c.loss()).fold(0.0, f64::max),
                per_cpu_at_most: per_cpu(most),
            });
        }
    }
    out
}

/// Relay against coturn per transport.
pub fn ratios(summaries: &[StreamSummary], cells: &[StreamCell]) -> Vec<StreamRatio> {
    [Transport::Tcp, Transport::Tls]
        .into_iter()
        .filter_map(|transport| {
            let find = |server| {
                summaries
                    .iter()
                    .find(|s| s.server == server && s.transport == transport)
            };
            let (relay, coturn) = (find(StreamServer::Relay)?, find(StreamServer::Coturn)?);
            // Every load coturn carried without loss, the relay carried without loss too.
            let everywhere = cells
                .iter()
                .filter(|c| c.server == StreamServer::Coturn && c.transport == transport)
                .map(|c| c.offered)
                .filter(|l| lossless(&cells_at(cells, StreamServer::Coturn, transport, *l)))
                .all(|l| lossless(&cells_at(cells, StreamServer::Relay, transport, l)));
            Some(StreamRatio {
                transport,
                relay_vs_coturn_per_cpu: relay
                    .per_cpu_at_best
                    .zip(coturn.per_cpu_at_best)
                    .map(|(r, c)| r / c),
                lossless_where_coturn_is: everywhere,
            })
        })
        .collect()
}

/// coturn's command line: the UDP benchmark's, with TCP and TLS on and the lab's certificate.
pub fn coturn_args(relay: std::net::Ipv4Addr, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = crate::turn_bench::coturn_args(relay, &dir.join("coturn.log"))
        .into_iter()
        .filter(|a| a != "--no-tls" && a != "--no-tcp")
        .collect();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    args.extend([
        "--tls-listening-port".to_string(),
        TURNS_PORT.to_string(),
        "--cert".to_string(),
        path("turn.crt"),
        "--pkey".to_string(),
        path("turn.key"),
    ]);
    args
}

/// The relay's configuration: the UDP benchmark's (XDP native), with TLS on the TURNS port and
/// no per-connection request limit.
fn relay_config(pin_dir: &Path, dir: &Path) -> String {
    crate::turn_bench::relay_config(Mode::TurnNative, pin_dir).replace(
        "turn:\n",
        &format!(
            "turn:\n  requests_per_sec_per_connection: 0\n  tls:\n    cert: {}\n    key: {}\n    \
             ports: [{TURNS_PORT}]\n",
            dir.join("turn.crt").display(),
            dir.join("turn.key").display(),
        ),
    )
}

/// Runs the benchmark. Needs root, two CPUs and coturn.
pub fn run(options: StreamBenchOptions) -> Result<StreamBenchResult> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(
        cpus > RELAY_CORE,
        "the stream benchmark needs 2 CPUs, this machine has {cpus}"
    );
    crate::nat_lab::require_tool("turnserver")?;
    let mut lab = NatLab::create()?;
    crate::scenario::write_turn_certificate(&lab.dir)?;
    let at = SocketAddr::V4(SocketAddrV4::new(addr::PEER_V4.parse()?, PEER_PORT));
    let peer = EchoPeer::start(&lab, at, Some(LOAD_CORE))?;
    let server = crate::load::lab_server(&lab)?;
    let relay_ip: std::net::Ipv4Addr = addr::RELAY_V4.parse()?;
    let pin_dir = Path::new(LAB_BPFFS).join(lab.ns(Host::Relay).name());
    let mut cells = Vec::new();
    for round in 0..options.rounds {
        for which in [StreamServer::Relay, StreamServer::Coturn] {
            start(&mut lab, which, &options, &pin_dir)?;
            let pid = lab.pid("server").context("the server is not running")?;
            for transport in [Transport::Tcp, Transport::Tls] {
                for &offered in &options.loads {
                    let cell = measure(&lab, &server, pid, which, transport, offered, &options)
                        .with_context(|| {
                            format!(
                                "{} over {} at {offered}/s:\n{}",
                                which.name(),
                                transport.name(),
                                lab.log("server")
                            )
                        })?;
                    eprintln!(
                        "round {round} {:<6} {} {offered:>6}/s: echoed {} of {} ({:.2} % lost), \
                         {:.0} messages per CPU-second, core {:.0} % busy",
                        which.name(),
                        transport.name(),
                        cell.echoed,
                        cell.sent,
                        cell.loss() * 100.0,
                        cell.per_cpu_second(),
                        cell.core_busy * 100.0
                    );
                    cells.push(StreamCell { round, ..cell });
                }
            }
            stop(&mut lab, &pin_dir)?;
        }
    }
    peer.stop();
    let summaries = summarise(&cells, &options.loads);
    Ok(StreamBenchResult {
        // As it ran, with the lab's files named relative to its directory.
        coturn: coturn_args(relay_ip, Path::new("")).join(" "),
        ratios: ratios(&summaries, &cells),
        target: TARGET,
        options,
        cells,
        summaries,
    })
}

/// Starts `which` on the relay core and waits until it takes TCP connections.
fn start(
    lab: &mut NatLab,
    which: StreamServer,
    options: &StreamBenchOptions,
    pin_dir: &Path,
) -> Result<()> {
    let core = RELAY_CORE.to_string();
    let relay_ip: std::net::Ipv4Addr = addr::RELAY_V4.parse()?;
    let mut argv: Vec<String> = vec!["-c".into(), core];
    match which {
        StreamServer::Coturn => {
            argv.push("turnserver".into());
            argv.extend(coturn_args(relay_ip, &lab.dir));
        }
        StreamServer::Relay => {
            let config = lab.dir.join("relay.yaml");
            std::fs::write(&config, relay_config(pin_dir, &lab.dir))?;
            argv.extend([
                options.relay_bin.to_str().context("path")?.to_string(),
                "serve".into(),
                "--config".into(),
                config.to_str().context("path")?.to_string(),
            ]);
        }
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    lab.spawn(Host::Relay, "server", Path::new("taskset"), &argv)?;
    let turns = SocketAddr::new(relay_ip.into(), TURNS_PORT);
    let up = NatLab::wait_until(Duration::from_secs(15), || {
        lab.in_host(Host::Inet, || std::net::TcpStream::connect(turns).is_ok())
            .unwrap_or(false)
    });
    if !up {
        bail!("{} did not come up:\n{}", which.name(), lab.log("server"));
    }
    Ok(())
}

/// Stops the server, and removes the relay's pinned state (nothing of it may touch coturn's
/// traffic).
fn stop(lab: &mut NatLab, pin_dir: &Path) -> Result<()> {
    if lab.running("server") {
        lab.stop("server")?;
    }
    relay_userspace::dataplane::loader::remove_pins(pin_dir)?;
    Ok(())
}

/// Offers `offered` messages a second over `options.connections` fresh connections for
/// `options.seconds`, from the router.
fn measure(
    lab: &NatLab,
    server: &Server,
    pid: u32,
    which: StreamServer,
    transport: Transport,
    offered: u32,
    options: &StreamBenchOptions,
) -> Result<StreamCell> {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let username = rest_username("bench", expiry);
    let password = rest_password(TURN_SECRET.as_bytes(), &username);
    let peer = SocketAddr::V4(SocketAddrV4::new(addr::PEER_V4.parse()?, PEER_PORT));
    let jobs: Vec<Job> = (0..options.connections as u32)
        .map(|id| Job {
            transport,
            username: username.clone(),
            password: password.clone(),
            peer,
            messages: 0,
            size: options.payload,
            id,
            refresh: false,
            pad_first: false,
            stall: false,
        })
        .collect();
    let rate = f64::from(offered) / options.connections as f64;
    let total = (rate * options.seconds).round() as u64;
    let (payload, seconds) = (options.payload, options.seconds);
    let server = server.clone();
    lab.in_host(Host::Inet, move || -> Result<StreamCell> {
        cpu::pin(0, LOAD_CORE)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut streams = Vec::with_capacity(jobs.len());
            for job in &jobs {
                streams.push(client::open_channel(&server, job).await?);
            }
            let core_before = core_busy()?;
            let cpu_before = cpu::process_ns(pid)?;
            let started = Instant::now();
            let tasks: Vec<_> = streams
                .into_iter()
                .enumerate()
                .map(|(id, (io, buf))| {
                    tokio::spawn(drive(io, buf, id as u32, rate, total, payload, started))
                })
                .collect();
            let (mut sent, mut echoed) = (0, 0);
            for t in tasks {
                let (s, e) = t.await??;
                sent += s;
                echoed += e;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let server_cpu_ns = cpu::process_ns(pid)? - cpu_before;
            let core_after = core_busy()?;
            let busy = (core_after.0 - core_before.0) as f64
                / (core_after.1 - core_before.1).max(1) as f64;
            ensure!(elapsed >= seconds, "the load ended early");
            Ok(StreamCell {
                server: which,
                transport,
                offered,
                round: 0,
                sent,
                echoed,
                seconds: elapsed,
                server_cpu_ns,
                core_busy: busy,
            })
        })
    })?
}

/// The relay core's busy and total jiffies.
fn core_busy() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    cpu::parse_cpu_line(&stat, RELAY_CORE).context("no relay core in /proc/stat")
}

/// One connection: `total` messages at `rate` a second from `started` (what is due every
/// [`TICK`], one write each), while counting the echoes, each once, until all came back or
/// [`DRAIN`] after the last was sent. Returns (sent, echoed).
async fn drive(
    io: Box<dyn Stream>,
    mut buf: Vec<u8>,
    id: u32,
    rate: f64,
    total: u64,
    payload: usize,
    started: Instant,
) -> Result<(u64, u64)> {
    let (mut reader, mut writer) = tokio::io::split(io);
    let send = async move {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut sent, mut batch) = (0u64, Vec::new());
        while sent < total {
            ticks.tick().await;
            let due = ((rate * started.elapsed().as_secs_f64()) as u64).min(total);
            // One write per message, as a WebRTC stack sends each packet (each its own TLS
            // record): the server's per-message cost is what is measured, not a batch's.
            for seq in sent..due {
                batch.clear();
                push_message(&mut batch, id, seq, payload);
                writer.write_all(&batch).await?;
            }
            sent = due;
        }
        writer.flush().await?;
        anyhow::Ok((sent, Instant::now()))
    };
    let receive = async move {
        let mut seen = vec![false; total as usize];
        let mut echoed = 0u64;
        // Until the sender is done, then DRAIN more: the sender's end is not known here, so
        // the deadline is where it would be at the offered rate.
        let deadline = started + Duration::from_secs_f64(total as f64 / rate) + DRAIN;
        loop {
            while let Some(len) = frame_len(&buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                let frame: Vec<u8> = buf.drain(..len).collect();
                if let Some(seq) = echo_of(&frame, id)
                    && let Some(s) = seen.get_mut(seq as usize)
                    && !*s
                {
                    *s = true;
                    echoed += 1;
                }
            }
            if echoed == total {
                break;
            }
            buf.reserve(16 * 1024);
            match tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)).await {
                Ok(Ok(0)) => bail!("the server closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(echoed)
    };
    let (sent, echoed) = tokio::join!(send, receive);
    Ok((sent?.0, echoed?))
}

/// Appends message `seq` of connection `id` as ChannelData, padded for a stream.
fn push_message(out: &mut Vec<u8>, id: u32, seq: u64, payload: usize) {
    let start = out.len();
    out.extend_from_slice(&CHANNEL.to_be_bytes());
    out.extend_from_slice(&(payload as u16).to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(start + 4 + payload, 0x5a);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// The sequence number of an echo of connection `id`'s message.
fn echo_of(frame: &[u8], id: u32) -> Option<u64> {
    if frame.len() < 16 || u16::from_be_bytes([frame[0], frame[1]]) != CHANNEL {
        return None;
    }
    if frame[4..8] != id.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(frame[8..16].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_padded_channel_data_and_their_echoes_are_recognised() {
        let mut out = Vec::new();
        push_message(&mut out, 7, 41, 101);
        assert_eq!(out.len(), 108, "4 + 101, padded to 4");
        assert_eq!(frame_len(&out), Ok(Some(108)));
        assert_eq!(echo_of(&out, 7), Some(41));
        assert_eq!(echo_of(&out, 8), None, "another connection's");
        out[0] = 0x41;
        assert_eq!(echo_of(&out, 7), None, "another channel");
    }

    fn cell(server: StreamServer, offered: u32, sent: u64, echoed: u64, cpu_ms: u64) -> StreamCell {
        StreamCell {
            server,
            transport: Transport::Tcp,
            offered,
            round: 0,
            sent,
            echoed,
            seconds: 1.0,
            server_cpu_ns: cpu_ms * 1_000_000,
            core_busy: 0.5,
        }
    }

    #[test]
    fn the_best_loss_free_loads_are_compared() {
        let cells = vec![
            cell(StreamServer::Relay, 1000, 1000, 1000, 10),
            cell(StreamServer::Relay, 2000, 2000, 2000, 16),
            cell(StreamServer::Relay, 4000, 4000, 3900, 30),
            cell(StreamServer::Coturn, 1000, 1000, 1000, 20),
            cell(StreamServer::Coturn, 2000, 2000, 1990, 40),
            cell(StreamServer::Coturn, 4000, 4000, 3000, 50),
        ];
        let s = summarise(&cells, &[1000, 2000, 4000]);
        assert_eq!(s.len(), 2, "TLS was not measured");
        assert_eq!(s[0].best_lossless, Some(2000));
        assert_eq!(s[0].per_cpu_at_best, Some(4000.0 / 0.016));
        assert_eq!(s[1].best_lossless, Some(1000));
        assert!((s[1].loss_at_most - 0.25).abs() < 1e-9);
        let r = ratios(&s, &cells);
        assert_eq!(r.len(), 1);
        assert!((r[0].relay_vs_coturn_per_cpu.unwrap() - 2.5).abs() < 1e-9);
        assert!(r[0].lossless_where_coturn_is);
    }
}
