//! Stock WireGuard through the relay daemon's WireGuard front, with no client software: the lab's
//! two clients behind their NATs run wireguard-go, configured with `wg` from the `[Peer]`
//! sections `relay client create --wireguard` printed (plus their own private key and
//! `AllowedIPs`). The relay learns the legs from their handshakes and forwards the tunnel — in
//! the kernel with XDP native, in userspace with `xdp.mode: off` — and an attacker host that
//! knows both public keys and the ports never becomes a leg and receives nothing.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use relay_common::{verdict::Reason, wireguard::INITIATION_LEN};
use relay_lab::{
    nat_lab::{Host, NatLab, addr},
    scenario::{Scenario, ScenarioOptions},
    wireguard::{TUNNEL_A, TUNNEL_B, start_through_front},
};
use relay_userspace::{api::types::PairDetails, config::XdpMode, fronts::wireguard::mac::Mac1Key};

fn ping(lab: &NatLab, host: Host, to: &str) -> bool {
    lab.exec(host, "ping", &["-c", "1", "-W", "1", to]).is_ok()
}

fn start(xdp: XdpMode) -> Scenario {
    let mut options = ScenarioOptions::new(common::relay_path().into(), xdp);
    options.sessions = false;
    options.wireguard = true;
    Scenario::start(options).unwrap()
}

fn pair_state(s: &Scenario, id: u32) -> PairDetails {
    let out = s
        .relay_cli(&["client", "get", "--wireguard", "--json", &id.to_string()])
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn bound(pair: &PairDetails) -> [Option<SocketAddr>; 2] {
    [pair.peers[0].bound, pair.peers[1].bound]
}

/// Forwarded WireGuard datagrams so far, (kernel, userspace), from the pinned counters.
fn forwarded(s: &Scenario) -> (u64, u64) {
    let maps = s.maps().unwrap();
    let reason = Reason::ForwardedWireGuard as usize;
    (
        maps.kernel_verdicts().unwrap()[reason].packets,
        maps.userspace_verdicts().unwrap()[reason].packets,
    )
}

/// Brings the pair up: allocated through the CLI, both peers configured from its snippets,
/// pinging each other through the relay, legs learnt at the two NATs' public addresses.
fn bring_up(s: &mut Scenario) -> ([String; 2], PairDetails) {
    let (names, pair) = start_through_front(s).unwrap();
    assert_eq!(pair.state, "allocated");
    for (i, peer) in pair.peers.iter().enumerate() {
        let endpoint = peer.relay.v4.unwrap();
        let snippet = peer.snippet.as_deref().unwrap();
        assert!(
            snippet.contains(&format!("Endpoint = {endpoint}"))
                && snippet.contains(&format!("PublicKey = {}", pair.peers[1 - i].public_key))
                && snippet.contains("PersistentKeepalive = 25"),
            "{snippet}"
        );
    }
    let up = NatLab::wait_until(Duration::from_secs(30), || {
        ping(&s.lab, Host::ClientA, TUNNEL_B) || ping(&s.lab, Host::ClientB, TUNNEL_A)
    });
    assert!(
        up,
        "no ping through the pair\n{}\nA: {}\nB: {}",
        s.lab.log("relay"),
        s.lab
            .exec(Host::ClientA, "wg", &["show", &names[0]])
            .unwrap_or_default(),
        s.lab
            .exec(Host::ClientB, "wg", &["show", &names[1]])
            .unwrap_or_default(),
    );
    let shown = pair_state(s, pair.id);
    assert_eq!(shown.state, "bound", "{shown:?}");
    let ips = bound(&shown).map(|b| b.unwrap().ip());
    assert_eq!(
        ips,
        [addr::NAT_A_V4, addr::NAT_B_V4].map(|a| a.parse::<IpAddr>().unwrap()),
        "the legs are the NATs' public addresses"
    );
    (names, shown)
}

/// The attacker knows both public keys and the two ports: forged initiations with a valid
/// mac1 to both ports from several of its ports, data sprayed at both, and a replay of
/// everything it is sent. Returns how many datagrams reached it (there must be none).
fn attack(s: &Scenario, pair: &PairDetails) -> usize {
    let keys: Vec<[u8; 32]> = pair
        .peers
        .iter()
        .map(|p| STANDARD.decode(&p.public_key).unwrap().try_into().unwrap())
        .collect();
    let endpoints: Vec<SocketAddr> = pair.peers.iter().map(|p| p.relay.v4.unwrap()).collect();
    s.lab
        .in_host(Host::Attacker, || {
            let mut sockets = Vec::new();
            for port in 0..4u16 {
                let socket = UdpSocket::bind(("0.0.0.0", 40_000 + port)).unwrap();
                for (i, to) in endpoints.iter().enumerate() {
                    let mut init = vec![0u8; INITIATION_LEN];
                    init[0] = 1;
                    init[4..8].copy_from_slice(&(0xbad0 + u32::from(port)).to_le_bytes());
                    // Addressed to the other peer of the port it goes to: mac1 verifies.
                    Mac1Key::for_receiver(&keys[1 - i]).seal(&mut init);
                    socket.send_to(&init, to).unwrap();
                    let mut data = vec![0u8; 64];
                    data[0] = 4;
                    socket.send_to(&data, to).unwrap();
                }
                sockets.push(socket);
            }
            std::thread::sleep(Duration::from_millis(500));
            let mut received = 0;
            let mut buf = [0u8; 2048];
            for socket in &sockets {
                socket.set_nonblocking(true).unwrap();
                while socket.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            received
        })
        .unwrap()
}

/// `xdp.mode: off`: the userspace path learns the legs and carries the tunnel; the attacker
/// moves nothing and receives nothing; deleting the pair closes its ports.
#[test]
fn stock_peers_relay_through_the_daemon_in_userspace_and_an_attacker_gets_nothing() {
    require_root!();
    let mut s = start(XdpMode::Off);
    let before = forwarded(&s);
    let (_, pair) = bring_up(&mut s);
    for _ in 0..10 {
        assert!(ping(&s.lab, Host::ClientA, TUNNEL_B));
    }
    assert_eq!(
        attack(&s, &pair),
        0,
        "the relay sent the attacker something"
    );
    assert_eq!(
        bound(&pair_state(&s, pair.id)),
        bound(&pair),
        "the attacker moved a leg"
    );
    assert!(
        ping(&s.lab, Host::ClientA, TUNNEL_B),
        "the tunnel still works"
    );
    std::thread::sleep(Duration::from_millis(1500)); // the daemon flushes its counters
    let after = forwarded(&s);
    assert_eq!(
        after.0, before.0,
        "XDP is off: nothing crossed in the kernel"
    );
    assert!(after.1 - before.1 >= 20, "{before:?} → {after:?}");

    // The pair is listed with the token's pairs, and not with its sessions.
    let sessions = s.relay_cli(&["client", "get", &pair.id.to_string()]);
    assert!(sessions.is_err(), "a pair shown as a session: {sessions:?}");
    s.relay_cli(&["client", "delete", "--wireguard", &pair.id.to_string()])
        .unwrap();
    assert!(
        !NatLab::wait_until(Duration::from_secs(3), || ping(
            &s.lab,
            Host::ClientA,
            TUNNEL_B
        )),
        "the tunnel still crosses a deleted pair"
    );
}

/// XDP native: the tunnel crosses in the kernel (iperf3: ≥ 99 % of the relayed datagrams), a
/// NAT rebinding on one side mid-stream recovers by itself, the attacker gets nothing, and a
/// daemon restart loses no ping (the kernel keeps forwarding; the new daemon adopts the pair).
#[test]
fn stock_peers_cross_in_the_kernel_survive_rebinding_and_restart() {
    require_root!();
    let mut s = start(XdpMode::Native);
    let before = forwarded(&s);
    let (_, pair) = bring_up(&mut s);

    s.lab
        .spawn(
            Host::ClientB,
            "iperf3-server",
            std::path::Path::new("/usr/bin/iperf3"),
            &["-s", "-1", "-B", TUNNEL_B],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let report = s
        .lab
        .exec(Host::ClientA, "iperf3", &["-c", TUNNEL_B, "-t", "3", "-J"])
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    if received < 1_000_000 {
        let maps = s.maps().unwrap();
        let k = maps.kernel_verdicts().unwrap();
        let u = maps.userspace_verdicts().unwrap();
        for r in 0..k.len() {
            if k[r].packets + u[r].packets > 0 {
                eprintln!("reason {r}: kernel {:?} user {:?}", k[r], u[r]);
            }
        }
        eprintln!("{report}\n{}", s.lab.log("iperf3-server"));
    }
    assert!(received > 1_000_000, "iperf3 moved only {received} bytes");
    std::thread::sleep(Duration::from_millis(1500));
    let after = forwarded(&s);
    let (kernel, user) = (after.0 - before.0, after.1 - before.1);
    let share = kernel as f64 / (kernel + user) as f64;
    eprintln!(
        "kernel {kernel}, userspace {user}: {:.4} in the kernel",
        share
    );
    assert!(
        kernel > 1000 && share >= 0.99,
        "kernel {kernel}, userspace {user}"
    );

    assert_eq!(
        attack(&s, &pair),
        0,
        "the relay sent the attacker something"
    );
    assert_eq!(
        bound(&pair_state(&s, pair.id)),
        bound(&pair),
        "the attacker moved a leg"
    );

    // Client B's NAT forgets its mappings (and picks random ports): WireGuard notices no
    // answer and shakes hands again from the new address, which the bound leg A answers.
    s.lab.exec(Host::NatB, "conntrack", &["-F"]).unwrap();
    let started = Instant::now();
    let recovered = NatLab::wait_until(Duration::from_secs(60), || {
        ping(&s.lab, Host::ClientB, TUNNEL_A)
    });
    assert!(
        recovered,
        "no recovery from the NAT rebinding\n{}",
        s.lab.log("relay")
    );
    eprintln!(
        "recovered from the NAT rebinding in {:?}",
        started.elapsed()
    );
    let moved = pair_state(&s, pair.id);
    assert_eq!(moved.peers[0].bound, pair.peers[0].bound, "leg a stays");
    assert_ne!(moved.peers[1].bound, pair.peers[1].bound, "leg b moved");

    // A restart while pinging 20 times a second: not one lost.
    s.lab
        .spawn(
            Host::ClientA,
            "ping-restart",
            std::path::Path::new("/usr/bin/ping"),
            &["-c", "100", "-i", "0.05", "-W", "2", TUNNEL_B],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    s.restart_relay().unwrap();
    assert!(
        s.lab
            .log("relay")
            .contains("took over WireGuard pairs from the pinned maps"),
        "{}",
        s.lab.log("relay")
    );
    assert_eq!(bound(&pair_state(&s, pair.id)), bound(&moved));
    assert!(NatLab::wait_until(Duration::from_secs(15), || !s
        .lab
        .running("ping-restart")));
    let pinged = s.lab.log("ping-restart");
    assert!(
        pinged.contains("100 packets transmitted, 100 received"),
        "{pinged}"
    );
    assert!(ping(&s.lab, Host::ClientB, TUNNEL_A));
}
