//! End to end in the NAT lab (privileged): the real `relay` daemon and `relay client` sidecars in
//! network namespaces, two clients behind NATs that cannot reach each other directly.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::Duration,
};

use common::relay_path;
use relay_common::verdict::{Outcome, Reason, VerdictCounter};
use relay_lab::{
    nat_lab::{Host, NatLab, addr, udp_probe},
    scenario::{Scenario, ScenarioOptions},
};
use relay_userspace::config::XdpMode;

fn relay_bin() -> PathBuf {
    PathBuf::from(relay_path())
}

fn start(xdp: XdpMode, v6: [bool; 2]) -> Scenario {
    let mut options = ScenarioOptions::new(relay_bin(), xdp);
    options.v6 = v6;
    Scenario::start(options).unwrap()
}

/// Packets counted as forwarded, per reason.
fn forwarded(counters: &[VerdictCounter]) -> Vec<(Reason, u64)> {
    Reason::ALL
        .iter()
        .filter(|r| r.outcome() == Outcome::Forwarded)
        .map(|r| (*r, counters[*r as usize].packets))
        .collect()
}

fn total(counters: &[(Reason, u64)]) -> u64 {
    counters.iter().map(|(_, n)| n).sum()
}

/// Sends `n` datagrams each way through the relay and checks every one arrives.
fn exchange(s: &Scenario, n: usize) {
    let a = s.app_socket(Host::ClientA).unwrap();
    let b = s.app_socket(Host::ClientB).unwrap();
    let to = Scenario::sidecar_addr();
    for i in 0..n {
        let m = format!("a→b {i}");
        assert!(
            udp_probe(&a, to, &b, m.as_bytes(), Duration::from_secs(5)).unwrap(),
            "{m} lost\n{}",
            s.lab.log("relay")
        );
        let m = format!("b→a {i}");
        assert!(
            udp_probe(&b, to, &a, m.as_bytes(), Duration::from_secs(5)).unwrap(),
            "{m} lost"
        );
    }
}

/// Waits for the daemon's once-a-second flush of the userspace counters.
fn userspace_forwarded(s: &Scenario) -> u64 {
    std::thread::sleep(Duration::from_millis(1200));
    total(&forwarded(&s.maps().unwrap().userspace_verdicts().unwrap()))
}

#[test]
fn clients_cannot_reach_each_other_directly() {
    require_root!();
    let lab = NatLab::create().unwrap();
    let listen = |host| {
        lab.in_host(host, || UdpSocket::bind("0.0.0.0:40000"))
            .unwrap()
            .unwrap()
    };
    let a = listen(Host::ClientA);
    let b = listen(Host::ClientB);
    // B sends first (opening its own NAT and firewall towards A), then A answers to B's public
    // address: the symmetric NAT has no mapping for it; and the other way round.
    for (from, to_public, receiver) in [
        (&b, addr::NAT_A_V4, &a),
        (&a, addr::NAT_B_V4, &b),
        (&b, addr::NAT_A_V4, &a),
    ] {
        let to = SocketAddr::new(to_public.parse().unwrap(), 40000);
        assert!(
            !udp_probe(from, to, receiver, b"direct", Duration::from_millis(500)).unwrap(),
            "a datagram crossed the NATs directly"
        );
    }
    // IPv6: global addresses, but each side's firewall admits only replies.
    let a6 = lab
        .in_host(Host::ClientA, || UdpSocket::bind("[::]:40001"))
        .unwrap()
        .unwrap();
    let b6 = lab
        .in_host(Host::ClientB, || UdpSocket::bind("[::]:40001"))
        .unwrap()
        .unwrap();
    let to_b = SocketAddr::new(addr::CLIENT_B_V6.parse().unwrap(), 40001);
    let to_a = SocketAddr::new(addr::CLIENT_A_V6.parse().unwrap(), 40001);
    assert!(!udp_probe(&a6, to_b, &b6, b"direct6", Duration::from_millis(500)).unwrap());
    assert!(!udp_probe(&b6, to_a, &a6, b"direct6", Duration::from_millis(500)).unwrap());
}

#[test]
fn native_xdp_carries_the_session_in_the_kernel() {
    require_root!();
    let s = start(XdpMode::Native, [false, false]);
    let user_before = userspace_forwarded(&s);
    let kernel_before = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    exchange(&s, 20);
    let kernel = forwarded(&s.maps().unwrap().kernel_verdicts().unwrap());
    assert!(
        total(&kernel) - kernel_before >= 40,
        "kernel forwarded {kernel:?}"
    );
    assert_eq!(
        userspace_forwarded(&s),
        user_before,
        "data went through userspace after the bind"
    );
    assert!(
        kernel
            .iter()
            .any(|(r, n)| *r == Reason::ForwardedV4 && *n >= 40)
    );
}

#[test]
fn generic_xdp_also_carries_the_session_in_the_kernel() {
    require_root!();
    let s = start(XdpMode::Generic, [false, false]);
    let user_before = userspace_forwarded(&s);
    let kernel_before = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    exchange(&s, 20);
    let kernel = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    assert!(
        kernel - kernel_before >= 40,
        "kernel forwarded {}",
        kernel - kernel_before
    );
    assert_eq!(userspace_forwarded(&s), user_before);
    // Operators see the (slower) generic mode.
    let pin = s.pin_dir.to_str().unwrap().to_string();
    let stats = s.relay_cli(&["stats", "--pin-dir", &pin]).unwrap();
    assert!(
        stats.contains("eth0") && stats.contains("generic mode"),
        "{stats}"
    );
}

#[test]
fn with_xdp_off_the_userspace_forwarder_carries_everything() {
    require_root!();
    let s = start(XdpMode::Off, [false, false]);
    exchange(&s, 20);
    let user = userspace_forwarded(&s);
    assert!(user >= 40, "userspace forwarded {user}");
    let kernel = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    assert_eq!(
        kernel, 0,
        "nothing is attached, the kernel forwards nothing"
    );
}

#[test]
fn traffic_resumes_after_the_symmetric_nat_remaps_the_client() {
    require_root!();
    let s = start(XdpMode::Native, [false, false]);
    exchange(&s, 3);
    let before = s.session_state().unwrap().legs[1].bound.unwrap();
    // nat-b forgets the mapping: B's next datagrams leave from a new random port, which the
    // relay does not know (dropped as wrong source) until the sidecar re-binds.
    s.lab
        .exec(Host::NatB, "conntrack", &["-D", "-p", "udp"])
        .unwrap();
    let wrong_before =
        s.maps().unwrap().kernel_verdicts().unwrap()[Reason::DroppedWrongSource as usize].packets;
    let a = s.app_socket(Host::ClientA).unwrap();
    let b = s.app_socket(Host::ClientB).unwrap();
    assert!(
        udp_probe(
            &b,
            Scenario::sidecar_addr(),
            &a,
            b"after the remap",
            Duration::from_secs(20)
        )
        .unwrap(),
        "traffic did not resume\n{}",
        s.lab.log("sidecar-b")
    );
    let after = s.session_state().unwrap().legs[1].bound.unwrap();
    assert_ne!(before, after, "leg b should have moved");
    assert_eq!(after.ip(), before.ip());
    let wrong =
        s.maps().unwrap().kernel_verdicts().unwrap()[Reason::DroppedWrongSource as usize].packets;
    assert!(wrong > wrong_before, "the remapped source was never seen");
    assert!(
        udp_probe(
            &a,
            Scenario::sidecar_addr(),
            &b,
            b"and back",
            Duration::from_secs(5)
        )
        .unwrap()
    );
}

#[test]
fn ipv6_and_cross_family_sessions_in_the_kernel() {
    require_root!();
    for (v6, reasons) in [
        ([true, true], vec![Reason::ForwardedV6]),
        (
            [true, false],
            vec![Reason::ForwardedV6ToV4, Reason::ForwardedV4ToV6],
        ),
    ] {
        let s = start(XdpMode::Native, v6);
        let shown = s.session_state().unwrap();
        assert_eq!(shown.legs[0].bound.unwrap().is_ipv6(), v6[0]);
        assert_eq!(shown.legs[1].bound.unwrap().is_ipv6(), v6[1]);
        exchange(&s, 10);
        let kernel = forwarded(&s.maps().unwrap().kernel_verdicts().unwrap());
        for r in reasons {
            let n = kernel.iter().find(|(k, _)| *k == r).unwrap().1;
            assert!(n >= 10, "{}: {n} ({kernel:?})", r.name());
        }
    }
}

#[test]
fn a_spoofer_elsewhere_cannot_receive_the_session() {
    require_root!();
    let s = start(XdpMode::Native, [false, false]);
    exchange(&s, 2);
    let bound_b = s.session_state().unwrap().legs[1].bound.unwrap();
    // The attacker takes B's public address and port on its own interface and sends as B.
    s.lab
        .exec(
            Host::Attacker,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/32", bound_b.ip()),
                "dev",
                "eth0",
            ],
        )
        .unwrap();
    let spoofer = s
        .lab
        .in_host(Host::Attacker, move || UdpSocket::bind(bound_b))
        .unwrap()
        .unwrap();
    spoofer
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let relay = SocketAddr::new(
        addr::RELAY_V4.parse().unwrap(),
        relay_lab::scenario::LAB_PORT,
    );
    let mut data = relay_common::geneve::GeneveHdr::new(
        s.session.vni,
        false,
        relay_common::geneve::GENEVE_PROTOCOL_DATA,
    )
    .to_bytes()
    .to_vec();
    data.extend_from_slice(b"spoofed as b");
    let fwd = |s: &Scenario| {
        s.maps().unwrap().kernel_verdicts().unwrap()[Reason::ForwardedV4 as usize].packets
    };
    let before = fwd(&s);
    for _ in 0..10 {
        spoofer.send_to(&data, relay).unwrap();
    }
    // They do reach the relay, which cannot tell them from B's (it does not authenticate data:
    // WireGuard does, end to end): the spoofer can inject, but never receive.
    assert!(NatLab::wait_until(Duration::from_secs(2), || fwd(&s) >= before + 10));
    // A keeps talking to B: all of it reaches B, none of it the attacker.
    let a = s.app_socket(Host::ClientA).unwrap();
    let b = s.app_socket(Host::ClientB).unwrap();
    for i in 0..10 {
        let m = format!("for b only {i}");
        assert!(
            udp_probe(
                &a,
                Scenario::sidecar_addr(),
                &b,
                m.as_bytes(),
                Duration::from_secs(5)
            )
            .unwrap()
        );
    }
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = spoofer.recv_from(&mut buf) {
        panic!("the attacker received {n} bytes from {from}");
    }
    assert_eq!(
        s.session_state().unwrap().legs[1].bound,
        Some(bound_b),
        "leg b was hijacked"
    );
}

#[test]
fn wireguard_runs_through_the_relay_and_the_counters_match() {
    require_root!();
    use relay_lab::wireguard::{self, TUNNEL_B};
    let mut s = start(XdpMode::Native, [false, false]);
    let names = wireguard::start(&mut s).unwrap();
    let ping = s.lab.exec(
        Host::ClientA,
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "2", TUNNEL_B],
    );
    assert!(
        ping.is_ok(),
        "ping through the tunnel failed: {ping:?}\n{}",
        s.lab.log("sidecar-a")
    );
    assert!(ping.unwrap().contains(" 0% packet loss"));
    s.lab.iperf_server(Host::ClientB, TUNNEL_B, true).unwrap();
    let received = s.lab.iperf(Host::ClientA, TUNNEL_B, 3).unwrap().bytes;
    assert!(received > 1_000_000, "iperf3 moved only {received} bytes");
    std::thread::sleep(Duration::from_millis(1500)); // let the daemon flush its counters
    // Everything WireGuard sent crossed the relay, in the kernel.
    let maps = s.maps().unwrap();
    let slot = maps.session(s.session.vni).unwrap().unwrap().slot;
    let kernel = maps.kernel_session_stats(slot).unwrap();
    let user = maps.userspace_session_stats(slot).unwrap();
    let (a_tx, a_rx) = wireguard::transfer(&s.lab, Host::ClientA, &names[0]).unwrap();
    let (b_tx, b_rx) = wireguard::transfer(&s.lab, Host::ClientB, &names[1]).unwrap();
    for (leg, sent, got) in [(0, a_tx, b_rx), (1, b_tx, a_rx)] {
        let packets = kernel.packets[leg] + user.packets[leg];
        // The relay counts UDP payload: the WireGuard message plus the 8-byte Geneve header.
        let payload = kernel.bytes[leg] + user.bytes[leg] - 8 * packets;
        assert!(
            got <= payload && payload <= sent,
            "leg {leg}: WireGuard sent {sent}, relayed {payload}, peer received {got}"
        );
        assert!(
            user.packets[leg] == 0,
            "leg {leg}: {} packets through userspace",
            user.packets[leg]
        );
    }
    assert!(kernel.packets[0] > 1000, "{kernel:?}");
}

/// The README's commands, word for word: `relay client join --ticket … --listen …` with no
/// other flag, and its WireGuard configuration (no PersistentKeepalive). The peer that sends
/// first is given; the other never sends on its own and must still answer.
fn readme_recipe_with_first_sender(first: Host) {
    use relay_lab::wireguard::{self, ReadmeRecipe, TUNNEL_A, TUNNEL_B};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let recipe = ReadmeRecipe::parse(&readme).unwrap();
    let mut options = ScenarioOptions::new(relay_bin(), XdpMode::Native);
    options.join_command = Some(recipe.join_command.clone());
    let mut s = Scenario::start(options).unwrap();
    let names = wireguard::start_from_config(&mut s, &recipe.wg_config).unwrap();
    let (answerer, answerer_if, target) = match first {
        Host::ClientB => (Host::ClientA, &names[0], TUNNEL_A),
        _ => (Host::ClientB, &names[1], TUNNEL_B),
    };
    // Nothing has crossed yet: the answering peer has sent nothing on its own.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        wireguard::transfer(&s.lab, answerer, answerer_if).unwrap(),
        (0, 0)
    );
    let kernel_before = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    let ping = s
        .lab
        .exec(first, "ping", &["-c", "5", "-i", "0.2", "-W", "3", target]);
    assert!(
        ping.as_ref().is_ok_and(|p| p.contains(" 0% packet loss")),
        "{first:?} → {target} through the README's recipe: {ping:?}\n--- sidecar-a ---\n{}\n--- sidecar-b ---\n{}",
        s.lab.log("sidecar-a"),
        s.lab.log("sidecar-b")
    );
    let (tx, rx) = wireguard::transfer(&s.lab, answerer, answerer_if).unwrap();
    assert!(
        tx > 0 && rx > 0,
        "the answering peer sent {tx}, received {rx}"
    );
    let kernel = total(&forwarded(&s.maps().unwrap().kernel_verdicts().unwrap()));
    assert!(
        kernel - kernel_before >= 10,
        "the kernel forwarded {} packets",
        kernel - kernel_before
    );
    for log in ["sidecar-a", "sidecar-b"] {
        assert!(
            !s.lab.log(log).contains("could not deliver"),
            "{log}:\n{}",
            s.lab.log(log)
        );
    }
}

#[test]
fn the_readme_wireguard_recipe_works_when_the_symmetric_nat_side_sends_first() {
    require_root!();
    readme_recipe_with_first_sender(Host::ClientB);
}

#[test]
fn the_readme_wireguard_recipe_works_when_the_other_side_sends_first() {
    require_root!();
    readme_recipe_with_first_sender(Host::ClientA);
}

#[test]
fn the_demo_runs_start_to_finish_and_cleans_up() {
    require_root!();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-lab"))
        .args(["demo", "--seconds", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo's namespaces are named after its process id.
    let marker = format!("-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "0% packet loss",
        "alice-laptop",
        "office-nas",
        "forwarded by the XDP program",
        "done",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let kernel_line = stdout
        .lines()
        .find(|l| l.contains("during the transfer"))
        .unwrap();
    assert!(
        kernel_line.contains(", 0 by the userspace forwarder"),
        "{kernel_line}"
    );
    // The stock WireGuard part: a pair from the snippets, direct and relayed in one run.
    for expected in [
        "PersistentKeepalive = 25",
        "learnt from its handshakes at 198.51.100.2:",
        "learnt from its handshakes at 203.0.113.2:",
        "direct: ",
        "through the relay: ",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let relayed = stdout
        .lines()
        .find(|l| l.contains("through the relay: "))
        .unwrap();
    let share: f64 = relayed
        .rsplit('(')
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no kernel share in {relayed}"));
    assert!(share >= 99.0, "{relayed}");
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&marker),
        "the demo left namespaces behind: {left}"
    );
}

/// `GET path` over HTTP/1.0 from the relay host; returns the body.
/// One scraped series: name, labels, value.
type Series = (String, Vec<(String, String)>, f64);

/// Prometheus text exposition → series, parsed independently of the exporter.
fn parse_exposition(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap();
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn metric(all: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_after_traffic_describe_paths_sessions_binds_and_api() {
    require_root!();
    let s = start(XdpMode::Native, [false, false]);
    exchange(&s, 25);
    let text = s
        .http_get(relay_lab::scenario::LAB_METRICS, "/metrics")
        .unwrap();
    let all = parse_exposition(&text);
    let kernel_v4 = metric(
        &all,
        "relay_forwarded_packets_total",
        &[("path", "kernel"), ("family", "v4")],
    )
    .unwrap();
    assert!(kernel_v4 >= 50.0, "{kernel_v4}\n{text}");
    assert_eq!(
        metric(
            &all,
            "relay_forwarded_packets_total",
            &[("path", "userspace"), ("family", "v4")]
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&all, "relay_sessions", &[("state", "bound")]),
        Some(1.0)
    );
    assert_eq!(metric(&all, "relay_sessions_capacity", &[]), Some(65536.0));
    assert!(metric(&all, "relay_bind_handshakes_total", &[("result", "bound")]).unwrap() >= 2.0);
    assert!(
        metric(
            &all,
            "relay_api_requests_total",
            &[
                ("endpoint", "/v1/sessions"),
                ("method", "POST"),
                ("status", "201")
            ]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &all,
            "relay_api_requests_total",
            &[
                ("endpoint", "/v1/sessions/{vni}"),
                ("method", "GET"),
                ("status", "200")
            ]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(
            &all,
            "relay_xdp_attached",
            &[("interface", "eth0"), ("mode", "native")]
        ),
        Some(1.0)
    );
    // Every reason on both paths; per-session series only for the opted-in top sessions.
    for r in Reason::ALL {
        for path in ["kernel", "userspace"] {
            assert!(
                metric(
                    &all,
                    "relay_verdict_packets_total",
                    &[("path", path), ("reason", r.name())]
                )
                .is_some(),
                "{} {path}",
                r.name()
            );
        }
    }
    let vni = s.session.vni.to_string();
    assert!(
        metric(
            &all,
            "relay_session_bytes_total",
            &[("vni", &vni), ("direction", "a_to_b")]
        )
        .unwrap()
            > 0.0
    );
    let series = all
        .iter()
        .filter(|(n, _, _)| n == "relay_session_bytes_total")
        .count();
    assert_eq!(series, 2, "one session, two directions");
}

#[test]
fn the_cli_reads_sessions_while_the_daemon_is_stopped() {
    require_root!();
    let mut s = start(XdpMode::Native, [false, false]);
    exchange(&s, 5);
    // The daemon is gone; the fast path (pinned) and the CLI carry on.
    assert!(s.lab.stop("relay").unwrap().success());
    let pin = s.pin_dir.to_str().unwrap().to_string();
    let out = s
        .relay_cli(&["sessions", "--pin-dir", &pin, "--interval", "0"])
        .unwrap();
    let row = out
        .lines()
        .find(|l| l.starts_with(&s.session.vni.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("bound")
            && row.contains("alice-laptop")
            && row.contains("office-nas")
            && row.contains("kernel"),
        "{row}"
    );
    exchange(&s, 5); // still relayed in the kernel
    let json = s
        .relay_cli(&["sessions", "--pin-dir", &pin, "--interval", "0", "--json"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v[0]["directions"][0]["kernel_packets"].as_u64().unwrap() >= 10);
    let stats = s.relay_cli(&["stats", "--pin-dir", &pin]).unwrap();
    assert!(
        stats.contains("eth0") && stats.contains("native"),
        "{stats}"
    );
}

fn program_on_relay_eth0(s: &Scenario) -> u64 {
    s.xdp_program().unwrap().expect("an XDP program on eth0")
}

#[test]
fn restart_and_upgrade_lose_no_datagram_in_the_fast_path() {
    require_root!();
    let mut s = start(XdpMode::Native, [false, false]);
    exchange(&s, 2);
    let program = program_on_relay_eth0(&s);

    // A restart: the new daemon adopts the pinned state and keeps the running program.
    let lost = s
        .lost_while(1500, Duration::from_millis(4), |s| {
            s.restart_relay().unwrap()
        })
        .unwrap();
    assert!(
        lost.is_empty(),
        "lost {} datagrams across a restart: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(
        program_on_relay_eth0(&s),
        program,
        "a restart with the same build keeps the program"
    );
    assert!(
        s.lab
            .log("relay")
            .contains("took over sessions from the pinned maps"),
        "{}",
        s.lab.log("relay")
    );

    // An upgrade: the pinned links ran another build (as far as the new daemon can tell), so it
    // swaps its program in atomically under the links.
    let mut maps = s.maps().unwrap();
    maps.build_info
        .set(
            0,
            relay_common::maps::BuildInfo {
                object_sha256: [0xaa; 32],
            },
            0,
        )
        .unwrap();
    let lost = s
        .lost_while(1500, Duration::from_millis(4), |s| {
            s.restart_relay().unwrap()
        })
        .unwrap();
    assert!(
        lost.is_empty(),
        "lost {} datagrams across an upgrade: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let upgraded = program_on_relay_eth0(&s);
    assert_ne!(
        upgraded, program,
        "the upgrade should have replaced the program"
    );
    assert!(
        s.lab
            .log("relay")
            .contains("swapped the program under the pinned XDP link")
    );

    // The session is still there, bound, for the API, the CLI and the traffic both ways.
    let shown = s.session_state().unwrap();
    assert_eq!(shown.state, "bound");
    assert_eq!(shown.legs[0].label.as_deref(), Some("alice-laptop"));
    let pin = s.pin_dir.to_str().unwrap().to_string();
    let out = s
        .relay_cli(&["sessions", "--pin-dir", &pin, "--interval", "0"])
        .unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with(&s.session.vni.to_string()) && l.contains("bound")),
        "{out}"
    );
    exchange(&s, 5);
}

/// A drain refuses new sessions and keeps the running one flowing in the kernel; it is pinned,
/// so a restarted daemon keeps draining (and `relay stats` shows it with the daemon down) until
/// `relay undrain`.
#[test]
fn a_drain_keeps_what_runs_survives_a_restart_and_ends_with_undrain() {
    require_root!();
    let mut s = start(XdpMode::Native, [false, false]);
    exchange(&s, 1);
    let out = s.relay_cli(&["drain"]).unwrap();
    assert!(out.contains("draining since"), "{out}");
    // Nothing new…
    let refused = s.relay_cli(&["client", "create", "--json"]);
    let text = format!("{refused:?}");
    assert!(refused.is_err() && text.contains("draining"), "{text}");
    // …but what runs keeps running, in the kernel.
    exchange(&s, 2);

    let stopped = s.lab.stop("relay").unwrap();
    assert!(stopped.success());
    let stats = s
        .relay_cli(&["stats", "--pin-dir", s.pin_dir.to_str().unwrap()])
        .unwrap();
    assert!(stats.contains("DRAINING since"), "{stats}");
    s.start_relay().unwrap();
    let status = s.relay_cli(&["drain", "--status"]).unwrap();
    assert!(status.contains("draining since"), "{status}");
    assert!(
        s.lab
            .log("relay")
            .contains("draining (pinned by a previous daemon)"),
        "{}",
        s.lab.log("relay")
    );
    let metrics = s
        .http_get(relay_lab::scenario::LAB_METRICS, "/metrics")
        .unwrap();
    assert!(metrics.contains("relay_draining 1"), "{metrics}");
    exchange(&s, 1);

    let out = s.relay_cli(&["undrain"]).unwrap();
    assert!(out.contains("not draining"), "{out}");
    s.relay_cli(&["client", "create", "--json"]).unwrap();

    // On the host, without the API (a Kubernetes preStop hook): the daemon follows the pinned
    // state within a tick.
    let pin_dir = s.pin_dir.to_str().unwrap().to_string();
    let out = s
        .relay_cli(&["drain", "--local", "--pin-dir", &pin_dir])
        .unwrap();
    assert!(out.contains("draining since"), "{out}");
    assert!(NatLab::wait_until(Duration::from_secs(3), || s
        .relay_cli(&["client", "create", "--json"])
        .is_err()));
    let out = s
        .relay_cli(&["undrain", "--local", "--pin-dir", &pin_dir])
        .unwrap();
    assert!(out.contains("not draining"), "{out}");
    assert!(NatLab::wait_until(Duration::from_secs(3), || s
        .relay_cli(&["client", "create", "--json"])
        .is_ok()));

    // Drained with the daemon down (what a pod's preStop hook leaves behind), then a daemon
    // started with --clear-drain (the next pod) takes new work at once.
    assert!(s.lab.stop("relay").unwrap().success());
    s.relay_cli(&["drain", "--local", "--pin-dir", &pin_dir])
        .unwrap();
    s.options.serve_args = vec!["--clear-drain".into()];
    s.start_relay().unwrap();
    let status = s.relay_cli(&["drain", "--status"]).unwrap();
    assert!(status.contains("not draining"), "{status}");
    s.relay_cli(&["client", "create", "--json"]).unwrap();
    exchange(&s, 1);

    // With nothing left, `drain --wait` returns at once.
    for sidecar in ["sidecar-a", "sidecar-b"] {
        let _ = s.lab.stop(sidecar);
    }
    let sessions: serde_json::Value = serde_json::from_str(
        &s.relay_cli(&["sessions", "--json", "--pin-dir", &pin_dir])
            .unwrap(),
    )
    .unwrap();
    for session in sessions.as_array().unwrap() {
        let vni = session["vni"].as_u64().unwrap().to_string();
        s.relay_cli(&["client", "delete", &vni]).unwrap();
    }
    let out = s
        .relay_cli(&["drain", "--wait", "--timeout", "10s"])
        .unwrap();
    assert!(out.contains("drained: nothing is left"), "{out}");
}
