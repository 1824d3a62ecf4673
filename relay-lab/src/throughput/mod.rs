//! Relayed packets per second and relay CPU per packet, end to end through the NAT lab's relay
//! host, for every way the relay can carry packets and for the practical limit of the path.
//!
//! ## Set-up
//!
//! The lab's internet router is both ends of every session: each leg is an address of its
//! loopback (bound with the real handshake), so the relay's output comes straight back to it.
//! Likewise both peers of every WireGuard pair (bound with the handshake messages stock peers
//! send, their legs learnt by the relay's rules): the `wireguard` mode sends the pairs'
//! transport data through the same native relay.
//! On the router's side of the relay link run, in the kernel:
//!
//! - the **generator** (`bench_gen`, BPF_PROG_TEST_RUN in live-frame mode): frames built here
//!   are transmitted with XDP_TX as if a NIC had received them and a program bounced them, 64 per
//!   flush; no socket, no userspace copy per packet;
//! - the **sink** (`bench_sink`, native XDP on the same interface): counts and drops the UDP the
//!   relay sends back.
//!
//! ## The two cores
//!
//! CPU 0 is the load: the generator (this thread) and the sink's NAPI thread. CPU 1 is the
//! relay: the relay interface's NAPI thread (threaded NAPI, so its softirq work is a task with
//! exact run-time accounting) and the daemon (`taskset`). The relay's CPU time is those tasks'
//! run time (`/proc/<pid>/schedstat`): for native XDP it is the driver receive, the program and
//! the transmit; for generic XDP and the userspace forwarder also the network stack, sockets and
//! the daemon. Each mode runs on the same core with the same load, interleaved per round, so
//! the ratios compare like with like; the generator saturates the relay core in every mode
//! (relay busy ≈ 100 %), so packets per second measure the relay, not the generator.

pub mod cpu;
pub mod load;
pub mod report;
pub mod workload;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::XdpMode as AyaMode;
use serde::Serialize;

use self::{
    load::{LOAD_CORE, Load, RELAY_CORE},
    report::{Measurement, Mode},
    workload::Path as FramePath,
};
use crate::{
    nat_lab::{Host, INET_RELAY_IF, LAB_BPFFS, NatLab, RELAY_IF},
    scenario::{LAB_PORT, LAB_TOKEN},
};
use relay_userspace::{
    api::types::{CreatePair, CreateSession, PairKeys},
    client::api::ApiClient,
    config::XdpMode,
    dataplane::attachment,
    fronts::geneve::ticket::Ticket,
};

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputOptions {
    /// The `relay` binary.
    #[serde(skip)]
    pub relay_bin: PathBuf,
    /// Interleaved rounds (medians are reported).
    pub rounds: usize,
    /// UDP payload sizes (Geneve header included).
    pub payloads: Vec<usize>,
    /// Session counts.
    pub sessions: Vec<usize>,
    /// Seconds per pass.
    pub seconds: f64,
    /// Modes to measure, interleaved in this order (all of them unless narrowed down for a
    /// profile: the report's ratios need native, generic, off and the reflector).
    pub modes: Vec<Mode>,
}

impl ThroughputOptions {
    /// The full benchmark.
    pub fn full(relay_bin: PathBuf) -> ThroughputOptions {
        ThroughputOptions {
            relay_bin,
            rounds: 3,
            payloads: vec![64, 512, 1420],
            sessions: vec![1, 1000],
            seconds: 1.0,
            modes: Mode::ALL.to_vec(),
        }
    }

    /// A few seconds: keeps the harness from rotting.
    pub fn quick(relay_bin: PathBuf) -> ThroughputOptions {
        ThroughputOptions {
            relay_bin,
            rounds: 1,
            payloads: vec![64],
            sessions: vec![4],
            seconds: 0.25,
            modes: Mode::ALL.to_vec(),
        }
    }
}

/// Everything measured, in the JSON's shape.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputResult {
    /// The options.
    pub options: ThroughputOptions,
    /// Every pass of every round.
    pub measurements: Vec<Measurement>,
    /// Medians per cell.
    pub summaries: Vec<report::Summary>,
    /// The ratios the targets are stated in.
    pub ratios: Vec<report::Ratios>,
    /// The targets.
    pub targets: report::Targets,
    /// Cores for 10 GbE.
    pub extrapolation: Vec<report::Extrapolation>,
}

/// Runs the benchmark. Needs root and two CPUs.
pub fn run(options: ThroughputOptions) -> Result<ThroughputResult> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(
        cpus > RELAY_CORE,
        "the throughput benchmark needs 2 CPUs, this machine has {cpus}"
    );
    let max_sessions = options.sessions.iter().copied().max().unwrap_or(1);
    ensure!(
        max_sessions * 2 <= relay_common::bench::MAX_TEMPLATES as usize,
        "at most {} sessions",
        relay_common::bench::MAX_TEMPLATES / 2
    );
    cpu::pin(0, LOAD_CORE)?;
    let mut bench = Bench::new(&options)?;
    bench.start_relay(Mode::Native)?;
    bench.allocate(max_sessions)?;
    if options.modes.contains(&Mode::WireGuard) {
        bench.allocate_pairs(max_sessions)?;
    }
    bench.load.attach_sink(&bench.lab)?;

    let mut measurements = Vec::new();
    for round in 0..options.rounds {
        for &mode in &options.modes {
            bench.switch(mode)?;
            for &payload in &options.payloads {
                for &sessions in &options.sessions {
                    let m = bench.measure(mode, payload, sessions, round, options.seconds)?;
                    eprintln!(
                        "round {round} {:<9} {payload:>4} B {sessions:>4} sessions: {:>9.0} relayed/s, loss {:.2} %, {:.0} ns/pkt",
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
    bench.switch(Mode::Native)?;
    let summaries = report::summarise(&measurements);
    Ok(ThroughputResult {
        ratios: report::ratios(&summaries),
        targets: report::TARGETS,
        extrapolation: report::extrapolate(&summaries),
        summaries,
        measurements,
        options,
    })
}

/// The lab, the relay and the lab's XDP programs while the benchmark runs.
struct Bench {
    lab: NatLab,
    load: Load,
    relay_bin: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    path: FramePath,
    vnis: Vec<u32>,
    pairs: Vec<workload::BoundPair>,
    /// The reflector's link while it is attached.
    reflector: Option<aya::programs::xdp::XdpLinkId>,
    mode: Option<Mode>,
}

/// The WireGuard pairs' relay ports: two per pair, for the most sessions measured.
const PAIR_PORTS: (u16, u16) = (
    45_000,
    45_000 + relay_common::bench::MAX_TEMPLATES as u16 - 1,
);

fn relay_config(mode: XdpMode, pin_dir: &Path) -> String {
    format!(
        "interfaces: [{RELAY_IF}]\nxdp:\n  mode: {mode}\nrelay:\n  port: {LAB_PORT}\n  workers: 1\n\
         api:\n  listen: 127.0.0.1:8080\n  requests_per_sec_per_source: 0\n  tokens:\n    - name: bench\n      token: {LAB_TOKEN}\n\
         \x20     max_sessions: 8192\nsessions:\n  max_sessions: 8192\n  bind_lifetime: 1h\n  \
         idle_lifetime: 1h\n  \
         packets_per_sec: 0\n  kbytes_per_sec: 0\n  binds_per_sec_per_source: 0\n\
         wireguard:\n  relay_ports: {}-{}\n  keepalive: 25\n  idle_lifetime: 1h\n\
         pin_dir: {}\nlog:\n  level: warn\n",
        PAIR_PORTS.0,
        PAIR_PORTS.1,
        pin_dir.display()
    )
}

fn read_sys(lab: &NatLab, host: Host, interface: &str, attr: &str) -> Result<String> {
    Ok(lab
        .exec(
            host,
            "cat",
            &[&format!("/sys/class/net/{interface}/{attr}")],
        )?
        .trim()
        .to_string())
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address {text}"))
}

impl Bench {
    fn new(options: &ThroughputOptions) -> Result<Bench> {
        let lab = NatLab::create()?;
        let relay_ip = NatLab::relay_endpoint(false, LAB_PORT);
        let std::net::SocketAddr::V4(relay) = relay_ip else {
            bail!("the lab's relay endpoint is IPv4")
        };
        let path = FramePath {
            gen_mac: parse_mac(&read_sys(&lab, Host::Inet, INET_RELAY_IF, "address")?)?,
            relay_mac: parse_mac(&read_sys(&lab, Host::Relay, RELAY_IF, "address")?)?,
            relay,
        };
        let gen_ifindex = read_sys(&lab, Host::Inet, INET_RELAY_IF, "ifindex")?.parse()?;
        for a in workload::leg_addresses() {
            lab.ns(Host::Inet).ip(&["addr", "add", &a, "dev", "lo"])?;
        }
        // The relay's receive NAPI runs without an XDP program too (generic and off modes),
        // and its next hop is resolved for good (no ARP traffic mid-pass).
        lab.exec(Host::Relay, "ethtool", &["-K", RELAY_IF, "gro", "on"])?;
        lab.ns(Host::Relay).ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &read_sys(&lab, Host::Inet, INET_RELAY_IF, "address")?,
            "dev",
            RELAY_IF,
            "nud",
            "permanent",
        ])?;
        let pin_dir = Path::new(LAB_BPFFS).join(lab.ns(Host::Relay).name());
        let config = lab.dir.join("relay.yaml");
        Ok(Bench {
            load: Load::new(gen_ifindex)?,
            relay_bin: options.relay_bin.clone(),
            config,
            pin_dir,
            path,
            vnis: Vec::new(),
            pairs: Vec::new(),
            reflector: None,
            mode: None,
            lab,
        })
    }

    /// (Re)starts the daemon in the XDP mode `mode` runs it in, pinned to the relay core.
    fn start_relay(&mut self, mode: Mode) -> Result<()> {
        if self.lab.running("relay") {
            let status = self.lab.stop("relay")?;
            ensure!(
                status.success(),
                "the relay exited with {status}:\n{}",
                self.lab.log("relay")
            );
        }
        let xdp = match mode {
            Mode::Native | Mode::WireGuard => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
            Mode::Off | Mode::Reflector => XdpMode::Off,
            Mode::TurnNative | Mode::TurnOff | Mode::Coturn => {
                bail!("{} is the TURN benchmark's", mode.name())
            }
        };
        std::fs::write(&self.config, relay_config(xdp, &self.pin_dir))?;
        let relay = self.relay_bin.to_str().context("path")?.to_string();
        let config = self.config.to_str().context("path")?.to_string();
        let core = RELAY_CORE.to_string();
        self.lab.spawn(
            Host::Relay,
            "relay",
            Path::new("taskset"),
            &["-c", &core, &relay, "serve", "--config", &config],
        )?;
        let up = self.with_api(|api| async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if api.list().await.is_ok() {
                    return Ok(true);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(false)
        })?;
        if !up {
            bail!(
                "the relay's API did not come up:\n{}",
                self.lab.log("relay")
            );
        }
        let expected = match xdp {
            XdpMode::Native => Some(attachment::AttachMode::Native),
            XdpMode::Generic => Some(attachment::AttachMode::Generic),
            _ => None,
        };
        if let Some(expected) = expected {
            let now = self
                .lab
                .in_host(Host::Relay, || attachment::attachment(RELAY_IF))??;
            ensure!(
                now.mode == expected,
                "the relay attached in {:?}, not {expected:?}",
                now.mode
            );
        }
        Ok(())
    }

    /// Runs `work` with the lab's API client on a runtime in the relay's namespace (the API
    /// listens on its loopback).
    fn with_api<T: Send, F: Future<Output = Result<T>>>(
        &self,
        work: impl FnOnce(ApiClient) -> F + Send,
    ) -> Result<T> {
        let api = ApiClient::new("http://127.0.0.1:8080", LAB_TOKEN, None)?;
        self.lab.in_host(Host::Relay, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work(api))
        })?
    }

    /// Allocates `n` sessions through the API and binds both legs of each from the router.
    fn allocate(&mut self, n: usize) -> Result<()> {
        let sessions = self.with_api(|api| async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(api.create(&CreateSession::default()).await?);
            }
            Ok(out)
        })?;
        let mut tickets = Vec::with_capacity(n);
        for s in &sessions {
            let mut legs = Vec::new();
            for leg in &s.legs {
                let text = leg
                    .ticket
                    .as_deref()
                    .context("the API returned no ticket")?;
                legs.push(Ticket::decode(text)?);
            }
            ensure!(legs.len() == 2, "a session has two legs");
            tickets.push(legs);
        }
        let relay = std::net::SocketAddr::V4(self.path.relay);
        self.lab.in_host(Host::Inet, || {
            for (i, legs) in tickets.iter().enumerate() {
                for (leg, ticket) in legs.iter().enumerate() {
                    workload::bind_leg(workload::leg_addr(i, leg), ticket, relay)?;
                }
            }
            anyhow::Ok(())
        })??;
        self.vnis = sessions.iter().map(|s| s.vni).collect();
        Ok(())
    }

    /// Allocates `n` WireGuard pairs through the API (random public keys) and binds both
    /// peers of each from the router; checks the relay reports every pair bound.
    fn allocate_pairs(&mut self, n: usize) -> Result<()> {
        use base64::{Engine, engine::general_purpose::STANDARD};
        use rand::Rng;
        let mut rng = rand::rng();
        let keys: Vec<[[u8; 32]; 2]> = (0..n).map(|_| [rng.random(), rng.random()]).collect();
        let wanted = &keys;
        let pairs = self.with_api(|api| async move {
            let mut out = Vec::with_capacity(n);
            for k in wanted {
                let request = CreatePair {
                    public_keys: Some(PairKeys {
                        a: STANDARD.encode(k[0]),
                        b: STANDARD.encode(k[1]),
                    }),
                    ..CreatePair::default()
                };
                out.push(api.create_pair(&request).await?);
            }
            Ok(out)
        })?;
        let mut ports = Vec::with_capacity(n);
        for p in &pairs {
            let of = |i: usize| -> Result<u16> {
                Ok(p.peers
                    .get(i)
                    .and_then(|peer| peer.relay.v4)
                    .context("a pair without an IPv4 relay port")?
                    .port())
            };
            ports.push([of(0)?, of(1)?]);
        }
        let relay = *self.path.relay.ip();
        self.pairs = self.lab.in_host(Host::Inet, || {
            (0..n)
                .map(|i| {
                    let sender = [0x1000_0000 + i as u32, 0x2000_0000 + i as u32];
                    workload::bind_pair(
                        relay,
                        [workload::pair_leg_addr(i, 0), workload::pair_leg_addr(i, 1)],
                        ports[i],
                        keys[i],
                        sender,
                    )
                })
                .collect::<Result<Vec<_>>>()
        })??;
        let made = &pairs;
        let states = self.with_api(|api| async move {
            let mut out = Vec::with_capacity(n);
            for p in made {
                out.push(api.get_pair(p.id).await?.state);
            }
            Ok(out)
        })?;
        if let Some(state) = states.iter().find(|s| *s != "bound") {
            bail!("a WireGuard pair is {state} after its handshake, not bound");
        }
        Ok(())
    }

    /// Makes the relay host carry packets the way `mode` does.
    fn switch(&mut self, mode: Mode) -> Result<()> {
        if self.mode == Some(mode) {
            return Ok(());
        }
        if let Some(link) = self.reflector.take() {
            let xdp = &mut self.load.xdp;
            self.lab.in_host(Host::Relay, || {
                xdp.detach(relay_common::bench::PROGRAM_REFLECTOR, link)
            })??;
        }
        self.start_relay(mode)?;
        if mode == Mode::Reflector {
            let xdp = &mut self.load.xdp;
            self.reflector = Some(self.lab.in_host(Host::Relay, || {
                xdp.attach(
                    relay_common::bench::PROGRAM_REFLECTOR,
                    RELAY_IF,
                    AyaMode::Driver,
                )
            })??);
        }
        let daemon = self.lab.pid("relay").context("the relay is not running")?;
        self.load.watch(&self.lab, daemon)?;
        self.mode = Some(mode);
        Ok(())
    }

    /// One cell: the workload's templates, then the load's passes.
    fn measure(
        &mut self,
        mode: Mode,
        payload: usize,
        sessions: usize,
        round: usize,
        seconds: f64,
    ) -> Result<Measurement> {
        let flows = if mode == Mode::WireGuard {
            workload::pair_flows(&self.pairs[..sessions])
        } else {
            workload::session_flows(&self.path, &self.vnis[..sessions])
        };
        let (frame, templates) = workload::workload(&self.path, &flows, payload)?;
        let program = match mode {
            Mode::Off | Mode::TurnOff | Mode::Coturn => None,
            Mode::Reflector => Some(
                self.load
                    .xdp
                    .info(relay_common::bench::PROGRAM_REFLECTOR)?
                    .id(),
            ),
            Mode::Native | Mode::WireGuard | Mode::Generic | Mode::TurnNative => {
                Some(load::attached_program(&self.lab)?)
            }
        };
        let cell = self
            .load
            .cell(&self.lab, &frame, &templates, seconds, program)?;
        Ok(Measurement {
            mode,
            payload,
            sessions,
            round,
            saturation: cell.saturation,
            paced: cell.paced,
            program_ns: cell.program_ns,
        })
    }
}
