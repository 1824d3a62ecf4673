//! `cargo xtask demo`: the relay doing its job, start to finish, in the NAT lab — two WireGuard
//! peers behind NATs that cannot reach each other talk through the relay's kernel fast path,
//! first with the `relay client` sidecar, then as stock WireGuard with no client software,
//! next to the same pair connected directly.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    nat_lab::{Host, IperfRun, addr},
    scenario::{Scenario, ScenarioOptions},
    wireguard::{self, TUNNEL_B},
};
use relay_userspace::{config::XdpMode, inspect};

/// Demo settings.
pub struct DemoOptions {
    /// The `relay` binary.
    pub relay_bin: PathBuf,
    /// Seconds of iperf3 traffic.
    pub seconds: u32,
    /// Leave the lab up.
    pub keep: bool,
}

fn step(text: &str) {
    println!("\n▶ {text}");
}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the demo; `interrupted` (set by SIGINT/SIGTERM) stops it cleanly at the next step.
pub fn run(options: DemoOptions, interrupted: Arc<AtomicBool>) -> Result<()> {
    step(
        "building the lab: client A behind a NAT, client B behind a symmetric NAT with a strict firewall, an internet router, the relay",
    );
    let mut scenario_options = ScenarioOptions::new(options.relay_bin.clone(), XdpMode::Native);
    scenario_options.keep = options.keep;
    scenario_options.keepalive = Duration::from_secs(25);
    scenario_options.silence = Duration::from_secs(5);
    let mut s = Scenario::start(scenario_options)?;
    check(&interrupted)?;
    let session = s.session_state()?;
    println!(
        "  relay {} / {} with XDP in native mode, session {} bound:",
        addr::RELAY_V4,
        addr::RELAY_V6,
        session.vni
    );
    for leg in &session.legs {
        println!(
            "    leg {} {:<14} seen by the relay at {}",
            leg.leg,
            leg.label.as_deref().unwrap_or("-"),
            leg.bound.map_or("-".into(), |a| a.to_string())
        );
    }

    step(
        "starting WireGuard (wireguard-go) on both clients; each peer's endpoint is its local `relay client` sidecar",
    );
    let names = wireguard::start(&mut s)?;
    check(&interrupted)?;
    let ping = s
        .lab
        .exec(
            Host::ClientA,
            "ping",
            &["-c", "3", "-i", "0.3", "-W", "2", TUNNEL_B],
        )
        .context("ping through the tunnel")?;
    for line in ping
        .lines()
        .filter(|l| l.contains("packet loss") || l.contains("rtt"))
    {
        println!("  ping 10.99.0.1 → {TUNNEL_B}: {line}");
    }

    step(&format!(
        "{} seconds of iperf3 (TCP) through the tunnel",
        options.seconds
    ));
    let before = inspect::snapshot(&s.pin_dir)?;
    s.lab.iperf_server(Host::ClientB, TUNNEL_B, true)?;
    let seconds = options.seconds.to_string();
    s.lab.spawn(
        Host::ClientA,
        "iperf3",
        Path::new("/usr/bin/iperf3"),
        &["-c", TUNNEL_B, "-t", &seconds, "-J"],
    )?;
    let deadline = Instant::now() + Duration::from_secs(options.seconds as u64 + 20);
    while s.lab.running("iperf3") {
        check(&interrupted)?;
        if Instant::now() > deadline {
            bail!("iperf3 did not finish");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mbps = IperfRun::parse(&s.lab.log("iperf3"))?.mbps;
    println!(
        "  throughput: {mbps:.0} Mbit/s (WireGuard in userspace on both ends, 2 shared cores)"
    );
    std::thread::sleep(Duration::from_millis(1200)); // the daemon's counter flush

    step("the session table, as `relay sessions` shows it on the relay");
    let table = s.relay_cli(&["sessions", "--pin-dir", s.pin_dir.to_str().context("path")?])?;
    for line in table.lines() {
        println!("  {line}");
    }

    step("which path carried the packets");
    let after = inspect::snapshot(&s.pin_dir)?;
    let sum = |snap: &inspect::Snapshot, kernel: bool| -> u64 {
        snap.sessions
            .iter()
            .flat_map(|x| x.directions.iter())
            .map(|d| {
                if kernel {
                    d.kernel_packets
                } else {
                    d.userspace_packets
                }
            })
            .sum()
    };
    let kernel = sum(&after, true) - sum(&before, true);
    let user = sum(&after, false) - sum(&before, false);
    let share = 100.0 * kernel as f64 / (kernel + user).max(1) as f64;
    println!(
        "  during the transfer: {kernel} packets forwarded by the XDP program in the kernel, \
         {user} by the userspace forwarder ({share:.1} % in the kernel)"
    );
    let (tx, rx) = wireguard::transfer(&s.lab, Host::ClientA, &names[0])?;
    println!("  WireGuard on client A: {tx} bytes sent, {rx} received");

    if options.keep {
        let namespaces = s.keep();
        let relay_ns = namespaces
            .iter()
            .find(|n| n.starts_with("rl-relay"))
            .cloned()
            .unwrap_or_default();
        let client_a = namespaces
            .iter()
            .find(|n| n.starts_with("rl-cla"))
            .cloned()
            .unwrap_or_default();
        println!("\n▶ the lab stays up. Poke at it:");
        println!("  ip netns exec {client_a} ping {TUNNEL_B}");
        println!(
            "  ip netns exec {relay_ns} {} sessions --pin-dir /run/relay-lab/bpf/{relay_ns}",
            options.relay_bin.display()
        );
        println!("  ip netns exec {relay_ns} bpftool net show");
        println!("  namespaces: {}", namespaces.join(" "));
        println!("  remove it: cargo xtask demo --down");
    } else {
        step("tearing down");
        drop(s);
        println!("  done: namespaces, processes and pinned state removed");
    }
    run_stock(options.relay_bin, options.seconds, &interrupted)
}

/// The stock WireGuard part: two WireGuard peers with nothing but WireGuard, configured from
/// the `[Peer]` sections `relay client create --wireguard` prints, relayed in the kernel — and
/// their throughput next to the same pair connected directly, measured in the same run.
fn run_stock(relay_bin: PathBuf, seconds: u32, interrupted: &AtomicBool) -> Result<()> {
    use crate::wireguard_bench::{StockLab, WgPath};
    step(
        "stock WireGuard, no client software: `relay client create --wireguard --peer-a KEY --peer-b KEY` on a fresh lab",
    );
    let lab = StockLab::start(relay_bin)?;
    check(interrupted)?;
    let pair = &lab.pair;
    println!(
        "  pair {}: each peer pastes the [Peer] section printed for it, e.g. peer a:",
        pair.id
    );
    for line in pair.peers[0].snippet.as_deref().unwrap_or("").lines() {
        println!("    {line}");
    }
    let shown = lab.s.relay_cli(&[
        "client",
        "get",
        "--wireguard",
        "--json",
        &pair.id.to_string(),
    ])?;
    let shown: relay_userspace::api::types::PairDetails = serde_json::from_str(&shown)?;
    for peer in &shown.peers {
        println!(
            "  peer {} {:<14} learnt from its handshakes at {}",
            peer.peer,
            peer.label.as_deref().unwrap_or("-"),
            peer.bound.map_or("-".into(), |a| a.to_string())
        );
    }
    println!(
        "  (these peers are wireguard-go, which shakes hands as soon as it is configured: the \
         pair binds at once. boringtun sends its first handshake only at its first \
         PersistentKeepalive, so a pair with a boringtun peer behind a NAT binds about 25 s \
         later: docs/wireguard.md)"
    );

    step(&format!(
        "{seconds} seconds of iperf3 directly (a port forward on B's NAT; the relay not involved)"
    ));
    lab.use_path(WgPath::Direct)?;
    let direct = lab.iperf(seconds)?;
    println!("  direct: {direct:.0} Mbit/s");
    check(interrupted)?;

    step(&format!(
        "{seconds} seconds of iperf3 through the relay, the same WireGuard pair, no client software"
    ));
    lab.use_path(WgPath::NoSoftware)?;
    let before = lab.relay_counters()?;
    let relayed = lab.iperf(seconds)?;
    let after = lab.relay_counters()?;
    let kernel = after.wireguard_kernel - before.wireguard_kernel;
    let user = after.wireguard_userspace - before.wireguard_userspace;
    println!(
        "  through the relay: {relayed:.0} Mbit/s ({:.2} of direct); {kernel} datagrams \
         forwarded by the XDP program, {user} by userspace ({:.1} % in the kernel)",
        relayed / direct.max(1e-9),
        100.0 * kernel as f64 / (kernel + user).max(1) as f64
    );
    println!(
        "  (every host of this lab shares the same two cores with the peers' WireGuard, so the \
         detour via the relay host costs them CPU; `cargo xtask bench --only wireguard` measures \
         that detour on its own: docs/benchmarks.md)"
    );
    step("tearing down");
    drop(lab);
    println!("  done: namespaces, processes and pinned state removed");
    Ok(())
}

/// The TURN part of the demo: coturn's test client relays through the relay's TURN front to an
/// echo peer on a public host, then two headless Chromium pages open a DataChannel over relayed
/// candidates only, and the output says which path carried the packets.
pub fn run_turn(relay_bin: PathBuf, interrupted: Arc<AtomicBool>) -> Result<()> {
    use relay_common::verdict::Reason;

    use crate::turn_clients;
    step(
        "building the lab with the relay's TURN front on 192.0.2.10:3478 (UDP, TCP) and :5349 (TLS)",
    );
    let mut options = ScenarioOptions::new(relay_bin, XdpMode::Native);
    options.sessions = false;
    options.turn = true;
    let mut s = Scenario::start(options)?;
    turn_clients::start_peer(&mut s.lab)?;
    check(&interrupted)?;
    let counters = |s: &Scenario| -> Result<(u64, u64)> {
        std::thread::sleep(Duration::from_millis(1200)); // the daemon's counter flush
        let maps = s.maps()?;
        let sum = |v: &[relay_common::verdict::VerdictCounter]| {
            v[Reason::ForwardedTurnToPeer as usize].packets
                + v[Reason::ForwardedTurnToClient as usize].packets
                + v[Reason::ForwardedTurnBetweenClients as usize].packets
        };
        Ok((
            sum(&maps.kernel_verdicts()?),
            sum(&maps.userspace_verdicts()?),
        ))
    };
    let before = counters(&s)?;
    step(
        "coturn's turnutils_uclient on client A (behind NAT) → relay → turnutils_peer (192.0.2.130), 200 messages over channels",
    );
    let r = turn_clients::uclient(
        &s.lab,
        Host::ClientA,
        &["-n", "200", "-c", "-z", "5"],
        false,
    )?;
    println!(
        "  sent {}, echoed back {}, lost {}",
        r.sent, r.received, r.lost
    );
    check(&interrupted)?;
    step(
        "two headless Chromium pages on client A, iceTransportPolicy 'relay', a DataChannel through turn:192.0.2.10:3478",
    );
    let url = format!("turn:{}:3478?transport=udp", addr::RELAY_V4);
    let w = turn_clients::webrtc_pair(&s.lab, Host::ClientA, &url, 10)?;
    if let Some(pair) = &w.pair_a {
        println!(
            "  DataChannel open: {}, selected pair {} {} ↔ {} {}, {} messages each way",
            w.open,
            pair.local,
            pair.local_address,
            pair.remote,
            pair.remote_address,
            w.a_got.len().min(w.b_got.len())
        );
    } else {
        println!("  DataChannel open: {}", w.open);
    }
    step("which path carried the relayed packets");
    let after = counters(&s)?;
    println!(
        "  {} packets relayed by the XDP program in the kernel, {} by the userspace path",
        after.0 - before.0,
        after.1 - before.1
    );
    step("tearing down");
    drop(s);
    println!("  done: namespaces, processes and pinned state removed");
    Ok(())
}
