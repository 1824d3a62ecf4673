//! Stock WireGuard's throughput over the same lab, measured in one run: directly (no relay, but
//! over the same hops — both NATs and the internet router — with a port forward on client B's
//! NAT so the peers can reach each other: the relay is the only difference), through the
//! relay's WireGuard front with no client software (XDP native), and through the session
//! protocol with a `relay client` sidecar on each peer. A fourth path, the *detour*, sends the
//! direct traffic via the relay host's plain kernel forwarding (no relay software involved):
//! in this lab every host shares the same two cores, so the extra hops themselves cost the
//! peers' WireGuard CPU, and the detour shows how much of the difference is that.
//!
//! One pair of wireguard-go peers serves all three: its tunnel is brought up through the
//! WireGuard front (configured from the API's `[Peer]` sections, as a user would), and each
//! measurement points both peers' `Endpoint` at the path under test (`wg set … endpoint`);
//! WireGuard's session carries on unchanged. Paths are interleaved round by round and each
//! reports the median of its iperf3 (TCP) runs. The share of the relay's forwarded WireGuard
//! datagrams that the kernel carried is reported for the no-software path, and the relay's
//! counters prove the direct path bypassed it.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail, ensure};
use relay_common::verdict::Reason;
use relay_userspace::{api::types::PairDetails, config::XdpMode};
use serde::Serialize;

use crate::{
    nat_lab::{Host, NatLab, addr},
    scenario::{APP_PORT, SIDECAR_PORT, Scenario, ScenarioOptions},
    wireguard::{TUNNEL_A, TUNNEL_B, start_through_front},
};

/// The port on the relay host that the detour baseline forwards to B's port forward.
const DETOUR_PORT: u16 = 44_000;

/// The relay host as a plain router (the lab's baseline for the detour itself): UDP to
/// [`DETOUR_PORT`] is forwarded by the kernel (netfilter NAT, no XDP program involved: the port
/// is not the relay's) to B's port forward, its source rewritten to the relay's address so the
/// replies come back the same way.
fn detour_rules() -> String {
    format!(
        "table ip detour {{
  chain prerouting {{ type nat hook prerouting priority dstnat; udp dport {DETOUR_PORT} dnat to {}:{APP_PORT}; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; ip daddr {} udp dport {APP_PORT} masquerade; }}
}}
",
        addr::NAT_B_V4,
        addr::NAT_B_V4
    )
}

/// The ways the same WireGuard pair can reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WgPath {
    /// Peer to peer through a port forward on B's NAT.
    Direct,
    /// Peer to peer through the same port forward, but routed via the relay host's kernel (IP
    /// forwarding and NAT, not the relay): what the detour to the relay costs in this lab.
    Detour,
    /// Through the relay's WireGuard front, no client software (XDP native).
    NoSoftware,
    /// Through the session protocol, a `relay client` sidecar on each peer (XDP native).
    Sidecars,
}

impl WgPath {
    /// Every path, in the order a round measures them.
    pub const ALL: [WgPath; 4] = [
        WgPath::Direct,
        WgPath::Detour,
        WgPath::NoSoftware,
        WgPath::Sidecars,
    ];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            WgPath::Direct => "direct",
            WgPath::Detour => "detour",
            WgPath::NoSoftware => "no-software",
            WgPath::Sidecars => "sidecars",
        }
    }
}

/// A stock WireGuard pair in the NAT lab, reachable directly, through the WireGuard front and
/// through sidecars.
pub struct StockLab {
    /// The lab with the relay (XDP native, WireGuard front, a bound session with sidecars).
    pub s: Scenario,
    /// WireGuard interface names on client A and client B.
    pub names: [String; 2],
    /// The relay's pair, as the API described it when it was made.
    pub pair: PairDetails,
}

fn ping_once(lab: &NatLab, host: Host, to: &str) -> bool {
    lab.exec(host, "ping", &["-c", "1", "-W", "1", to]).is_ok()
}

impl StockLab {
    /// Builds the lab: the relay with both fronts, the port forward, and the tunnel up
    /// through the WireGuard front (legs learnt).
    pub fn start(relay_bin: PathBuf) -> Result<StockLab> {
        let mut options = ScenarioOptions::new(relay_bin, XdpMode::Native);
        options.wireguard = true;
        // Sidecars refresh their binds at the usual pace.
        options.keepalive = Duration::from_secs(25);
        options.silence = Duration::from_secs(5);
        let mut s = Scenario::start(options)?;
        s.lab
            .forward_udp_port(Host::NatB, APP_PORT, addr::CLIENT_B_V4)?;
        s.lab
            .nft_script(Host::Relay, "detour.nft", &detour_rules())?;
        let (names, pair) = start_through_front(&mut s)?;
        let mut lab = StockLab { s, names, pair };
        lab.wait_for_ping("the WireGuard front")?;
        lab.s.lab.iperf_server(Host::ClientB, TUNNEL_B, false)?;
        Ok(lab)
    }

    fn wait_for_ping(&self, what: &str) -> Result<()> {
        let up = NatLab::wait_until(Duration::from_secs(30), || {
            ping_once(&self.s.lab, Host::ClientA, TUNNEL_B)
                && ping_once(&self.s.lab, Host::ClientB, TUNNEL_A)
        });
        if !up {
            bail!(
                "no ping through {what}\nA: {}\nB: {}\n--- relay ---\n{}",
                self.wg_show(0),
                self.wg_show(1),
                self.s.lab.log("relay")
            );
        }
        Ok(())
    }

    fn wg_show(&self, i: usize) -> String {
        let host = [Host::ClientA, Host::ClientB][i];
        self.s
            .lab
            .exec(host, "wg", &["show", &self.names[i]])
            .unwrap_or_default()
    }

    /// Where each peer sends for `path`.
    fn endpoints(&self, path: WgPath) -> [String; 2] {
        match path {
            // A's NAT keeps the source port; B's NAT forwards APP_PORT to B.
            WgPath::Direct => [
                format!("{}:{APP_PORT}", addr::NAT_B_V4),
                format!("{}:{APP_PORT}", addr::NAT_A_V4),
            ],
            // The relay host keeps the source port when it masquerades (nothing else uses it).
            WgPath::Detour => [
                format!("{}:{DETOUR_PORT}", addr::RELAY_V4),
                format!("{}:{APP_PORT}", addr::RELAY_V4),
            ],
            WgPath::NoSoftware => {
                [0, 1].map(|i| self.pair.peers[i].relay.v4.expect("IPv4").to_string())
            }
            WgPath::Sidecars => [0, 1].map(|_| format!("127.0.0.1:{SIDECAR_PORT}")),
        }
    }

    /// Points both peers at `path` and waits until the tunnel answers through it.
    pub fn use_path(&self, path: WgPath) -> Result<()> {
        let endpoints = self.endpoints(path);
        // A first: B's direct endpoint is only reachable once A's packets opened B's NAT.
        for (i, host) in [Host::ClientA, Host::ClientB].into_iter().enumerate() {
            let peer = &self.pair.peers[1 - i].public_key;
            self.s.lab.exec(
                host,
                "wg",
                &[
                    "set",
                    &self.names[i],
                    "peer",
                    peer,
                    "endpoint",
                    &endpoints[i],
                ],
            )?;
            ping_once(&self.s.lab, host, [TUNNEL_B, TUNNEL_A][i]);
        }
        self.wait_for_ping(path.name())?;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let shown = self.wg_show(i);
            ensure!(
                shown.contains(&format!("endpoint: {endpoint}")),
                "peer {i} does not send through {}:\n{shown}",
                path.name()
            );
        }
        Ok(())
    }

    /// iperf3 (TCP, A → B) for `seconds`; Mbit/s received.
    pub fn iperf(&self, seconds: u32) -> Result<f64> {
        let run = self.s.lab.iperf(Host::ClientA, TUNNEL_B, seconds)?;
        if run.bytes == 0 {
            bail!("iperf3 moved nothing: {}", run.report);
        }
        Ok(run.mbps)
    }

    /// Forwarded WireGuard datagrams so far, (kernel, userspace), and forwarded session
    /// datagrams (both paths), from the relay's pinned counters.
    pub fn relay_counters(&self) -> Result<RelayCounters> {
        std::thread::sleep(Duration::from_millis(1200)); // the daemon's counter flush
        let maps = self.s.maps()?;
        let (k, u) = (maps.kernel_verdicts()?, maps.userspace_verdicts()?);
        let wg = Reason::ForwardedWireGuard as usize;
        let sessions: u64 = [
            Reason::ForwardedV4,
            Reason::ForwardedV6,
            Reason::ForwardedV4ToV6,
            Reason::ForwardedV6ToV4,
        ]
        .iter()
        .map(|r| k[*r as usize].packets + u[*r as usize].packets)
        .sum();
        Ok(RelayCounters {
            wireguard_kernel: k[wg].packets,
            wireguard_userspace: u[wg].packets,
            sessions,
        })
    }
}

/// The relay's forwarding counters at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RelayCounters {
    /// WireGuard front, XDP program.
    pub wireguard_kernel: u64,
    /// WireGuard front, userspace.
    pub wireguard_userspace: u64,
    /// Session protocol, both paths.
    pub sessions: u64,
}

impl RelayCounters {
    fn minus(self, before: RelayCounters) -> RelayCounters {
        RelayCounters {
            wireguard_kernel: self.wireguard_kernel - before.wireguard_kernel,
            wireguard_userspace: self.wireguard_userspace - before.wireguard_userspace,
            sessions: self.sessions - before.sessions,
        }
    }
}

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct WgBenchOptions {
    /// The `relay` binary.
    #[serde(skip)]
    pub relay_bin: PathBuf,
    /// Interleaved rounds (medians are reported).
    pub rounds: usize,
    /// Seconds of iperf3 per path and round.
    pub seconds: u32,
}

/// One path's results.
#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    /// Its name.
    pub path: &'static str,
    /// Mbit/s of each round.
    pub mbit_per_s: Vec<f64>,
    /// Their median.
    pub median_mbit_per_s: f64,
    /// What the relay forwarded during its runs (all rounds).
    pub relay: RelayCounters,
}

/// The benchmark's results.
#[derive(Clone, Debug, Serialize)]
pub struct WgBenchResult {
    /// How it was run.
    pub options: WgBenchOptions,
    /// Per path.
    pub paths: Vec<PathResult>,
    /// Median no-software / median direct.
    pub no_software_vs_direct: f64,
    /// Median sidecars / median direct.
    pub sidecars_vs_direct: f64,
    /// Median detour (the relay host as a plain router) / median direct: the detour's own cost
    /// in this lab.
    pub detour_vs_direct: f64,
    /// Median no-software / median detour: the relay's cost over a plain router on the same
    /// detour.
    pub no_software_vs_detour: f64,
    /// Share of the no-software path's relayed datagrams the kernel carried.
    pub no_software_kernel_share: f64,
    /// The target for `no_software_vs_direct`.
    pub target: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark.
pub fn run(options: WgBenchOptions) -> Result<WgBenchResult> {
    let lab = StockLab::start(options.relay_bin.clone())?;
    let mut runs: Vec<(Vec<f64>, RelayCounters)> =
        WgPath::ALL.iter().map(|_| Default::default()).collect();
    for round in 0..options.rounds {
        for (i, path) in WgPath::ALL.into_iter().enumerate() {
            lab.use_path(path)?;
            let before = lab.relay_counters()?;
            let mbps = lab.iperf(options.seconds)?;
            let during = lab.relay_counters()?.minus(before);
            println!(
                "round {} {:<12} {mbps:>8.0} Mbit/s  relay: wireguard kernel {} userspace {}, sessions {}",
                round + 1,
                path.name(),
                during.wireguard_kernel,
                during.wireguard_userspace,
                during.sessions
            );
            let (values, total) = &mut runs[i];
            values.push(mbps);
            total.wireguard_kernel += during.wireguard_kernel;
            total.wireguard_userspace += during.wireguard_userspace;
            total.sessions += during.sessions;
        }
    }
    let paths: Vec<PathResult> = WgPath::ALL
        .iter()
        .zip(runs)
        .map(|(path, (values, relay))| PathResult {
            path: path.name(),
            median_mbit_per_s: median(&values),
            mbit_per_s: values,
            relay,
        })
        .collect();
    let direct = &paths[0];
    // The direct and detour runs must not have crossed the relay's fronts: otherwise the
    // comparison is void.
    for p in &paths[..2] {
        ensure!(
            p.relay.wireguard_kernel + p.relay.wireguard_userspace + p.relay.sessions < 100,
            "the {} path crossed the relay: {:?}",
            p.path,
            p.relay
        );
    }
    let ns = &paths[2].relay;
    let share =
        ns.wireguard_kernel as f64 / (ns.wireguard_kernel + ns.wireguard_userspace).max(1) as f64;
    Ok(WgBenchResult {
        no_software_vs_direct: paths[2].median_mbit_per_s / direct.median_mbit_per_s,
        sidecars_vs_direct: paths[3].median_mbit_per_s / direct.median_mbit_per_s,
        detour_vs_direct: paths[1].median_mbit_per_s / direct.median_mbit_per_s,
        no_software_vs_detour: paths[2].median_mbit_per_s / paths[1].median_mbit_per_s,
        no_software_kernel_share: share,
        target: 0.9,
        options,
        paths,
    })
}
