//! TURN relayed packets per second and relay CPU per packet: the relay's TURN front with its
//! program in the driver and without XDP, against coturn (the server people run today), on the
//! same core with the same load, interleaved round by round.
//!
//! The set-up is the session benchmark's ([`crate::throughput`]): the in-kernel generator and
//! sink on the lab's internet router (CPU 0), the relay's NAPI thread and server on CPU 1. Each
//! allocation's client and peer are addresses of the router's loopback; the allocation and its
//! channel are made with the real protocol (Allocate with REST credentials, ChannelBind) before
//! every mode, since each mode starts from a fresh server. The generator then sends, for each
//! allocation in turn, ChannelData from the client to the TURN port and a datagram from the
//! peer to the relayed port; both have the same UDP payload size at the relay's ingress (the
//! peer's data is the client's plus the 4-byte ChannelData header), so every frame has the
//! same length, as the generator needs. The sink counts what the relay sends on.
//!
//! coturn runs with the settings that suit this load best (stated in [`coturn_args`]): one
//! relay thread on its one core, UDP only, no TLS, DTLS, TCP, CLI or per-user quotas, logging
//! to a file.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use etherparse::PacketBuilder;
use relay_common::{
    bench::{TEMPLATE_LEN, Template},
    turn::ChannelDataHdr,
};
use serde::Serialize;

use crate::{
    nat_lab::{Host, INET_RELAY_IF, LAB_BPFFS, NatLab, RELAY_IF},
    scenario::{TURN_PORT, TURN_REALM, TURN_SECRET},
    throughput::{
        cpu,
        load::{self, LOAD_CORE, Load, RELAY_CORE},
        report::{self, Measurement, Mode, Summary},
        workload::{LEG_ADDRESSES, Path as FramePath},
    },
    turn_probe::TurnProbe,
};
use relay_userspace::fronts::turn::auth::{rest_password, rest_username};

/// Relayed ports, for both servers.
const RELAY_PORTS: (u16, u16) = (50_000, 51_999);
/// How long a mode may measure after allocating: TURN permissions last 300 s and only the
/// client's requests refresh them, so a cell after that would measure refusals.
const PERMISSIONS_LAST: Duration = Duration::from_secs(280);

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct TurnBenchOptions {
    /// The `relay` binary.
    #[serde(skip)]
    pub relay_bin: PathBuf,
    /// Interleaved rounds (medians are reported).
    pub rounds: usize,
    /// UDP payload sizes at the relay's ingress (ChannelData header included).
    pub payloads: Vec<usize>,
    /// Allocation counts.
    pub allocations: Vec<usize>,
    /// Seconds per pass.
    pub seconds: f64,
}

impl TurnBenchOptions {
    /// The full benchmark.
    pub fn full(relay_bin: PathBuf) -> TurnBenchOptions {
        TurnBenchOptions {
            relay_bin,
            rounds: 3,
            payloads: vec![100, 500, 1200],
            allocations: vec![1, 500],
            seconds: 1.0,
        }
    }

    /// A few seconds: keeps the harness from rotting.
    pub fn quick(relay_bin: PathBuf) -> TurnBenchOptions {
        TurnBenchOptions {
            relay_bin,
            rounds: 1,
            payloads: vec![100],
            allocations: vec![4],
            seconds: 0.25,
        }
    }
}

/// The ratios to coturn for one (payload, allocations).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TurnRatios {
    /// UDP payload bytes.
    pub payload: usize,
    /// Allocations.
    pub allocations: usize,
    /// XDP native / coturn, packets per relay CPU-second (target ≥ 20).
    pub native_vs_coturn_per_cpu: f64,
    /// Our userspace path / coturn, packets per relay CPU-second (target ≥ 1).
    pub userspace_vs_coturn_per_cpu: f64,
    /// XDP native / coturn, relayed packets per second at saturation.
    pub native_vs_coturn_pps: f64,
    /// XDP native / coturn, packets per relay CPU-second at saturation (both servers' cores
    /// full: no idle wake-ups in either cost, unlike at the loss-free loads, which differ 10×).
    pub native_vs_coturn_per_cpu_saturated: f64,
}

/// The targets the ratios are held against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TurnTargets {
    /// XDP native / coturn, packets per relay CPU-second.
    pub native_vs_coturn: f64,
    /// Userspace / coturn, packets per relay CPU-second.
    pub userspace_vs_coturn: f64,
}

/// XDP native ≥ 20× coturn's packets per relay CPU-second; userspace at least coturn's.
pub const TARGETS: TurnTargets = TurnTargets {
    native_vs_coturn: 20.0,
    userspace_vs_coturn: 1.0,
};

/// Everything measured, in the JSON's shape.
#[derive(Clone, Debug, Serialize)]
pub struct TurnBenchResult {
    /// The options.
    pub options: TurnBenchOptions,
    /// How coturn ran.
    pub coturn: String,
    /// Every pass of every round (`sessions` is the allocation count).
    pub measurements: Vec<Measurement>,
    /// Medians per cell.
    pub summaries: Vec<Summary>,
    /// The ratios the targets are stated in.
    pub ratios: Vec<TurnRatios>,
    /// The targets.
    pub targets: TurnTargets,
    /// Cores for 10 GbE, per server.
    pub extrapolation: Vec<TurnExtrapolation>,
}

/// One row of the paper extrapolation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TurnExtrapolation {
    /// Which server carries it.
    pub mode: Mode,
    /// UDP payload bytes at the relay's ingress.
    pub payload: usize,
    /// Packets per second to relay for 10 Gbit/s in (and out).
    pub line_rate_pps: f64,
    /// Measured relay CPU ns per packet.
    pub cpu_ns_per_packet: f64,
    /// Cores needed.
    pub cores: f64,
}

/// Ratios for every (payload, allocations) measured in all three modes.
pub fn ratios(summaries: &[Summary]) -> Vec<TurnRatios> {
    let find = |mode, payload, n| {
        summaries
            .iter()
            .find(|s| s.mode == mode && s.payload == payload && s.sessions == n)
    };
    summaries
        .iter()
        .filter(|s| s.mode == Mode::TurnNative)
        .filter_map(|native| {
            let off = find(Mode::TurnOff, native.payload, native.sessions)?;
            let coturn = find(Mode::Coturn, native.payload, native.sessions)?;
            Some(TurnRatios {
                payload: native.payload,
                allocations: native.sessions,
                native_vs_coturn_per_cpu: native.packets_per_cpu_second
                    / coturn.packets_per_cpu_second,
                userspace_vs_coturn_per_cpu: off.packets_per_cpu_second
                    / coturn.packets_per_cpu_second,
                native_vs_coturn_pps: native.relayed_pps / coturn.relayed_pps,
                native_vs_coturn_per_cpu_saturated: saturated_per_cpu(native)
                    / saturated_per_cpu(coturn),
            })
        })
        .collect()
}

/// Packets per relay CPU-second in the saturation pass.
fn saturated_per_cpu(s: &Summary) -> f64 {
    s.relayed_pps / s.relay_busy.max(f64::MIN_POSITIVE)
}

/// Cores each server needs for 10 GbE line rate at each size (most allocations measured).
pub fn extrapolate(summaries: &[Summary]) -> Vec<TurnExtrapolation> {
    let most = summaries.iter().map(|s| s.sessions).max().unwrap_or(1);
    let mut rows: Vec<TurnExtrapolation> = summaries
        .iter()
        .filter(|s| s.sessions == most)
        .map(|s| {
            let pps = report::line_rate_pps(report::wire_bytes(s.payload));
            TurnExtrapolation {
                mode: s.mode,
                payload: s.payload,
                line_rate_pps: pps,
                cpu_ns_per_packet: s.cpu_ns_per_packet,
                cores: pps * s.cpu_ns_per_packet / 1e9,
            }
        })
        .collect();
    rows.sort_by_key(|r| (r.payload, r.mode));
    rows
}

/// One allocation of the workload.
#[derive(Clone, Copy, Debug)]
pub struct BenchAllocation {
    /// The client (an address of the router).
    pub client: SocketAddrV4,
    /// Its peer (another address of the router).
    pub peer: SocketAddrV4,
    /// The channel bound to the peer.
    pub channel: u16,
    /// The relayed port the server gave.
    pub relayed_port: u16,
}

/// Client and peer of allocation `i`: 198.51.100.100.. and 203.0.113.100.. (documentation
/// ranges on the router's loopback), one port per allocation.
pub fn endpoints(i: usize) -> (SocketAddrV4, SocketAddrV4) {
    let host = 100 + (i % LEG_ADDRESSES as usize) as u8;
    let port = 30_000 + i as u16;
    (
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, host), port),
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, host), port),
    )
}

/// The generator's input for `allocations` at `payload` bytes of UDP payload: one full frame,
/// and the templates — the client's ChannelData, then the peer's datagram, for each allocation
/// in turn. All frames have the same length and the same bytes past the templates.
pub fn workload(
    path: &FramePath,
    allocations: &[BenchAllocation],
    payload: usize,
) -> Result<(Vec<u8>, Vec<Template>)> {
    ensure!(
        payload >= 4 + TEMPLATE_LEN - 42,
        "payloads under {} bytes make frames shorter than the generator's templates",
        4 + TEMPLATE_LEN - 42
    );
    let relay = *path.relay.ip();
    let build = |from: SocketAddrV4, port: u16, data: &[u8]| -> Result<Vec<u8>> {
        let builder = PacketBuilder::ethernet2(path.gen_mac, path.relay_mac)
            .ipv4(from.ip().octets(), relay.octets(), 64)
            .udp(from.port(), port);
        let mut out = Vec::with_capacity(builder.size(data.len()));
        builder.write(&mut out, data).context("building a frame")?;
        Ok(out)
    };
    let data = vec![0x5a; payload - 4];
    let mut templates = Vec::with_capacity(allocations.len() * 2);
    let mut first = None;
    for a in allocations {
        let mut channel_data = ChannelDataHdr::new(a.channel, data.len() as u16)
            .to_bytes()
            .to_vec();
        channel_data.extend_from_slice(&data);
        // The peer's datagram: the same length, its first bytes the same filler.
        let peer_data = vec![0x5a; payload];
        for f in [
            build(a.client, TURN_PORT, &channel_data)?,
            build(a.peer, a.relayed_port, &peer_data)?,
        ] {
            let mut bytes = [0u8; TEMPLATE_LEN];
            bytes.copy_from_slice(&f[..TEMPLATE_LEN]);
            templates.push(Template { bytes });
            first.get_or_insert(f);
        }
    }
    Ok((first.context("no allocations")?, templates))
}

/// coturn's command line for this benchmark: the relay's address and ports, REST credentials
/// under the lab's secret, one relay thread (its one core), UDP only, nothing else running.
pub fn coturn_args(relay: Ipv4Addr, log: &Path) -> Vec<String> {
    let ip = relay.to_string();
    [
        "-n",
        "--listening-ip",
        &ip,
        "--relay-ip",
        &ip,
        "--listening-port",
        &TURN_PORT.to_string(),
        "--min-port",
        &RELAY_PORTS.0.to_string(),
        "--max-port",
        &RELAY_PORTS.1.to_string(),
        "--realm",
        TURN_REALM,
        "--use-auth-secret",
        "--static-auth-secret",
        TURN_SECRET,
        "--relay-threads",
        "1",
        "--no-tls",
        "--no-dtls",
        "--no-tcp",
        "--no-tcp-relay",
        "--no-cli",
        "--no-software-attribute",
        "--no-multicast-peers",
        "--total-quota",
        "0",
        "--user-quota",
        "0",
        "--simple-log",
        "--log-file",
        log.to_str().unwrap_or("stdout"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The relay's configuration for the TURN benchmark (the same ports and credentials).
pub(crate) fn relay_config(mode: Mode, pin_dir: &Path) -> String {
    let xdp = if mode == Mode::TurnNative {
        "native"
    } else {
        "off"
    };
    format!(
        "interfaces: [{RELAY_IF}]\nxdp:\n  mode: {xdp}\nrelay:\n  workers: 1\napi:\n  \
         listen: 127.0.0.1:8080\n  requests_per_sec_per_source: 0\n  tokens:\n    - name: bench\n      \
         token: {token}\nturn:\n  realm: {TURN_REALM}\n  relay_ports: {}-{}\n  secrets: [{TURN_SECRET}]\n  \
         max_allocations: 2048\n  max_allocations_per_user: 2048\n  packets_per_sec: 0\n  \
         kbytes_per_sec: 0\n  requests_per_sec_per_source: 0\npin_dir: {}\nlog:\n  level: warn\n",
        RELAY_PORTS.0,
        RELAY_PORTS.1,
        pin_dir.display(),
        token = crate::scenario::LAB_TOKEN,
    )
}

/// Runs the benchmark. Needs root, two CPUs and coturn.
pub fn run(options: TurnBenchOptions) -> Result<TurnBenchResult> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(
        cpus > RELAY_CORE,
        "the TURN benchmark needs 2 CPUs, this machine has {cpus}"
    );
    crate::nat_lab::require_tool("turnserver")?;
    cpu::pin(0, LOAD_CORE)?;
    let most = options.allocations.iter().copied().max().unwrap_or(1);
    ensure!(
        most * 2 <= relay_common::bench::MAX_TEMPLATES as usize
            && most <= usize::from(RELAY_PORTS.1 - RELAY_PORTS.0) / 2,
        "at most {} allocations",
        usize::from(RELAY_PORTS.1 - RELAY_PORTS.0) / 2
    );
    let mut bench = TurnBench::new(&options)?;
    let mut measurements = Vec::new();
    for round in 0..options.rounds {
        for mode in Mode::TURN {
            bench.start(mode, most)?;
            for &payload in &options.payloads {
                for &n in &options.allocations {
                    let m = bench.measure(mode, payload, n, round, options.seconds)?;
                    eprintln!(
                        "round {round} {:<11} {payload:>4} B {n:>4} allocations: {:>9.0} relayed/s, loss {:.2} %, {:.0} ns/pkt",
                        mode.name(),
                        m.saturation.relayed_pps(),
                        m.saturation.loss() * 100.0,
                        m.cpu_pass().cpu_ns_per_packet()
                    );
                    measurements.push(m);
                }
            }
        }
    }
    bench.stop()?;
    let summaries = report::summarise(&measurements);
    Ok(TurnBenchResult {
        options,
        coturn: coturn_args(*bench.path.relay.ip(), Path::new("coturn.log")).join(" "),
        ratios: ratios(&summaries),
        targets: TARGETS,
        extrapolation: extrapolate(&summaries),
        summaries,
        measurements,
    })
}

/// The lab, the server under test and the load.
struct TurnBench {
    lab: NatLab,
    load: Load,
    relay_bin: PathBuf,
    pin_dir: PathBuf,
    path: FramePath,
    /// The current server's allocations (made afresh for each mode).
    allocations: Vec<BenchAllocation>,
    /// When they were made: their permissions last 300 s (data refreshes nothing in TURN).
    allocated_at: Instant,
}

impl TurnBench {
    fn new(options: &TurnBenchOptions) -> Result<TurnBench> {
        let lab = NatLab::create()?;
        let std::net::SocketAddr::V4(relay) = NatLab::relay_endpoint(false, TURN_PORT) else {
            bail!("the lab's relay endpoint is IPv4")
        };
        let read = |host, interface: &str, attr: &str| -> Result<String> {
            Ok(lab
                .exec(
                    host,
                    "cat",
                    &[&format!("/sys/class/net/{interface}/{attr}")],
                )?
                .trim()
                .to_string())
        };
        let mac = |text: String| -> Result<[u8; 6]> {
            let bytes: Vec<u8> = text
                .split(':')
                .map(|b| u8::from_str_radix(b, 16))
                .collect::<Result<_, _>>()
                .with_context(|| format!("MAC address {text}"))?;
            bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("MAC address {text}"))
        };
        let path = FramePath {
            gen_mac: mac(read(Host::Inet, INET_RELAY_IF, "address")?)?,
            relay_mac: mac(read(Host::Relay, RELAY_IF, "address")?)?,
            relay,
        };
        let gen_ifindex = read(Host::Inet, INET_RELAY_IF, "ifindex")?.parse()?;
        for i in 0..LEG_ADDRESSES as usize {
            let (client, peer) = endpoints(i);
            for ip in [client.ip(), peer.ip()] {
                lab.ns(Host::Inet)
                    .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
            }
        }
        lab.exec(Host::Relay, "ethtool", &["-K", RELAY_IF, "gro", "on"])?;
        lab.ns(Host::Relay).ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &read(Host::Inet, INET_RELAY_IF, "address")?,
            "dev",
            RELAY_IF,
            "nud",
            "permanent",
        ])?;
        let pin_dir = Path::new(LAB_BPFFS).join(lab.ns(Host::Relay).name());
        Ok(TurnBench {
            load: Load::new(gen_ifindex)?,
            relay_bin: options.relay_bin.clone(),
            pin_dir,
            path,
            allocations: Vec::new(),
            allocated_at: Instant::now(),
            lab,
        })
    }

    /// Stops whichever server runs, and removes the relay's pinned state (its program too:
    /// nothing of it may touch coturn's traffic).
    fn stop(&mut self) -> Result<()> {
        if self.lab.running("server") {
            let status = self.lab.stop("server")?;
            ensure!(
                status.success() || status.code().is_none(),
                "the server exited with {status}:\n{}",
                self.lab.log("server")
            );
        }
        relay_userspace::dataplane::loader::remove_pins(&self.pin_dir)?;
        Ok(())
    }

    /// Starts `mode`'s server on the relay core, fresh, and makes `n` allocations on it.
    fn start(&mut self, mode: Mode, n: usize) -> Result<()> {
        self.stop()?;
        self.load.detach_sink(&self.lab)?;
        let core = RELAY_CORE.to_string();
        if mode == Mode::Coturn {
            let log = self.lab.dir.join("coturn-server.log");
            let args = coturn_args(*self.path.relay.ip(), &log);
            let mut argv: Vec<&str> = vec!["-c", &core, "turnserver"];
            argv.extend(args.iter().map(String::as_str));
            self.lab
                .spawn(Host::Relay, "server", Path::new("taskset"), &argv)?;
        } else {
            let config = self.lab.dir.join("relay.yaml");
            std::fs::write(&config, relay_config(mode, &self.pin_dir))?;
            let relay = self.relay_bin.to_str().context("path")?.to_string();
            let config = config.to_str().context("path")?.to_string();
            self.lab.spawn(
                Host::Relay,
                "server",
                Path::new("taskset"),
                &["-c", &core, &relay, "serve", "--config", &config],
            )?;
        }
        self.allocated_at = Instant::now();
        self.allocations = self.allocate(n).with_context(|| {
            format!(
                "allocating on {}:\n{}\n{}",
                mode.name(),
                self.lab.log("server"),
                std::fs::read_to_string(self.lab.dir.join("coturn-server.log")).unwrap_or_default()
            )
        })?;
        if mode == Mode::TurnNative {
            ensure!(
                load::attached_program(&self.lab).is_ok(),
                "the relay did not attach its program"
            );
        }
        self.load.attach_sink(&self.lab)?;
        let pid = self
            .lab
            .pid("server")
            .context("the server is not running")?;
        self.load.watch(&self.lab, pid)
    }

    /// Allocates `n` times with the real protocol from the router: Allocate (with the REST
    /// credential the 401 asks for), then ChannelBind to the allocation's peer. Waits for the
    /// server to answer first.
    fn allocate(&mut self, n: usize) -> Result<Vec<BenchAllocation>> {
        let server = SocketAddr::V4(self.path.relay);
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        let username = rest_username("bench", expiry);
        let password = rest_password(TURN_SECRET.as_bytes(), &username);
        let mut out = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(15);
        for i in 0..n {
            let (client, peer) = endpoints(i);
            let mut probe = TurnProbe::bound(
                &self.lab,
                Host::Inet,
                SocketAddr::V4(client),
                server,
                &username,
                &password,
            )?;
            let relayed = loop {
                match probe.allocate() {
                    Ok(Ok(relayed)) => break relayed,
                    // The server is still starting (only the first allocation waits).
                    Ok(Err(_)) | Err(_) if i == 0 && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(Err(code)) => bail!("allocation {i} refused with {code}"),
                    Err(e) => return Err(e.context(format!("allocation {i}"))),
                }
            };
            let channel = 0x4000 + i as u16;
            let code = probe.channel_bind(channel, SocketAddr::V4(peer))?;
            ensure!(code == 0, "ChannelBind {i} refused with {code}");
            out.push(BenchAllocation {
                client,
                peer,
                channel,
                relayed_port: relayed.port(),
            });
        }
        Ok(out)
    }

    fn measure(
        &mut self,
        mode: Mode,
        payload: usize,
        n: usize,
        round: usize,
        seconds: f64,
    ) -> Result<Measurement> {
        ensure!(
            self.allocated_at.elapsed() < PERMISSIONS_LAST,
            "{} has measured for {:?} since it allocated: its permissions would lapse",
            mode.name(),
            self.allocated_at.elapsed()
        );
        let (frame, templates) = workload(&self.path, &self.allocations[..n], payload)?;
        let program = match mode {
            Mode::TurnNative => Some(load::attached_program(&self.lab)?),
            _ => None,
        };
        let cell = self
            .load
            .cell(&self.lab, &frame, &templates, seconds, program)?;
        Ok(Measurement {
            mode,
            payload,
            sessions: n,
            round,
            saturation: cell.saturation,
            paced: cell.paced,
            program_ns: cell.program_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(mode: Mode, payload: usize, n: usize, cpu_ns: f64, pps: f64) -> Summary {
        Summary {
            mode,
            payload,
            sessions: n,
            relayed_pps: pps,
            offered_pps: pps,
            loss: 0.0,
            cpu_pass_loss: 0.0,
            relay_busy: 1.0,
            cpu_ns_per_packet: cpu_ns,
            daemon_ns_per_packet: 0.0,
            packets_per_cpu_second: 1e9 / cpu_ns,
            program_ns: None,
        }
    }

    #[test]
    fn ratios_to_coturn_need_all_three_servers() {
        let s = vec![
            summary(Mode::TurnNative, 100, 500, 100.0, 5e6),
            summary(Mode::TurnOff, 100, 500, 1500.0, 4e5),
            summary(Mode::Coturn, 100, 500, 3000.0, 2.5e5),
        ];
        let r = ratios(&s);
        assert_eq!(r.len(), 1);
        assert!((r[0].native_vs_coturn_per_cpu - 30.0).abs() < 1e-9);
        assert!((r[0].userspace_vs_coturn_per_cpu - 2.0).abs() < 1e-9);
        assert!((r[0].native_vs_coturn_pps - 20.0).abs() < 1e-9);
        assert!(ratios(&s[..2]).is_empty());
    }

    #[test]
    fn every_frame_of_the_workload_has_the_same_length_and_tail() {
        let path = FramePath {
            gen_mac: [2, 0, 0, 0, 0, 1],
            relay_mac: [2, 0, 0, 0, 0, 2],
            relay: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), TURN_PORT),
        };
        let allocations: Vec<BenchAllocation> = (0..3)
            .map(|i| {
                let (client, peer) = endpoints(i);
                BenchAllocation {
                    client,
                    peer,
                    channel: 0x4000 + i as u16,
                    relayed_port: 50_000 + i as u16,
                }
            })
            .collect();
        let (frame, templates) = workload(&path, &allocations, 100).unwrap();
        assert_eq!(templates.len(), 6);
        assert_eq!(frame.len(), 14 + 20 + 8 + 100);
        // The first template is the first frame's head; a client's frame carries ChannelData.
        assert_eq!(&frame[..TEMPLATE_LEN], &templates[0].bytes[..]);
        assert_eq!(&frame[42..46], &ChannelDataHdr::new(0x4000, 96).to_bytes());
        // The peer's frame goes to the relayed port.
        let peer = &templates[1].bytes;
        assert_eq!(u16::from_be_bytes([peer[36], peer[37]]), 50_000);
        assert!(workload(&path, &allocations, 20).is_err());
    }
}
