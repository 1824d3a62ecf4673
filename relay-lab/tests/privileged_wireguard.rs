//! Stock WireGuard through the relay daemon's WireGuard front, with no client software: the lab's
//! two clients behind their NATs run wireguard-go, configured with `wg` from the `[Peer]`
//! sections `relay client create --wireguard` printed (plus their own private key and
//! `AllowedIPs`). The relay learns the legs from their handshakes and forwards the tunnel — in
//! the kernel with XDP native, in userspace with `xdp.mode: off` — and an attacker host that
//! knows both public keys and the ports, forges initiations, replays the peers' real handshake
//! messages (captured at the relay) and sprays data never becomes a leg and receives no byte of
//! the tunnel.

mod common;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use relay_common::{
    verdict::Reason,
    wireguard::{INITIATION_LEN, RESPONSE_LEN},
};
use relay_lab::{
    nat_lab::{Host, NatLab, addr},
    scenario::{Scenario, ScenarioOptions},
    tap::{Captured, Tap},
    wireguard::{
        Implementation, TUNNEL_A, TUNNEL_B, start_through_front, start_through_front_with,
    },
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

/// What the peers' bring-up left for the attacker: the pair, and the real handshake messages
/// (initiations, responses) that reached the relay, captured there.
struct BroughtUp {
    pair: PairDetails,
    handshakes: Vec<Captured>,
}

/// Brings the pair up: allocated through the CLI, both peers configured from its snippets,
/// pinging each other through the relay, legs learnt at the two NATs' public addresses.
fn bring_up(s: &mut Scenario) -> BroughtUp {
    let tap = Tap::open(&s.lab, Host::Relay).unwrap();
    let configured = Instant::now();
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
    eprintln!(
        "wireguard-go peers: the tunnel is up {:?} after configuring",
        configured.elapsed()
    );
    let shown = pair_state(s, pair.id);
    assert_eq!(shown.state, "bound", "{shown:?}");
    let ips = bound(&shown).map(|b| b.unwrap().ip());
    assert_eq!(
        ips,
        [addr::NAT_A_V4, addr::NAT_B_V4].map(|a| a.parse::<IpAddr>().unwrap()),
        "the legs are the NATs' public addresses"
    );
    let ports: Vec<u16> = shown
        .peers
        .iter()
        .map(|p| p.relay.v4.unwrap().port())
        .collect();
    let handshakes: Vec<Captured> = tap
        .udp(|to| ports.contains(&to.port()))
        .unwrap()
        .into_iter()
        .filter(|c| matches!(c.payload.first(), Some(1 | 2)))
        .collect();
    for kind in [1, 2] {
        assert!(
            handshakes.iter().any(|c| c.payload[0] == kind),
            "no message of type {kind} captured: {handshakes:?}"
        );
    }
    BroughtUp {
        pair: shown,
        handshakes,
    }
}

/// The attacker knows both public keys and the two ports, and has the peers' real handshake
/// messages: from several of its ports it sends forged initiations with a valid mac1 to both
/// ports, replays every captured message to both, and sprays data at both. Returns what
/// reached it.
fn attack(s: &Scenario, up: &BroughtUp) -> Vec<Vec<u8>> {
    let pair = &up.pair;
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
                    for captured in &up.handshakes {
                        socket.send_to(&captured.payload, to).unwrap();
                    }
                    let mut data = vec![0u8; 64];
                    data[0] = 4;
                    socket.send_to(&data, to).unwrap();
                }
                sockets.push(socket);
            }
            std::thread::sleep(Duration::from_millis(500));
            let mut received = Vec::new();
            let mut buf = [0u8; 2048];
            for socket in &sockets {
                socket.set_nonblocking(true).unwrap();
                while let Ok((n, _)) = socket.recv_from(&mut buf) {
                    received.push(buf[..n].to_vec());
                }
            }
            received
        })
        .unwrap()
}

/// [`attack`], then: no byte of the tunnel reached the attacker and the legs did not move.
///
/// The one thing it may get is what docs/security.md's table says: a peer that never saw a
/// captured initiation (the relay dropped it before the legs were known) answers its replay,
/// and a move candidate receives that answer — a handshake response to the replayed
/// initiation's sender index, never data or anything else.
fn assert_attacker_gets_nothing(s: &Scenario, up: &BroughtUp) {
    let replayed: Vec<&[u8]> = up
        .handshakes
        .iter()
        .filter(|c| c.payload[0] == 1)
        .map(|c| &c.payload[4..8])
        .collect();
    for got in attack(s, up) {
        let answer = got.len() == RESPONSE_LEN && got[0] == 2 && replayed.contains(&&got[8..12]);
        assert!(
            answer,
            "the relay sent the attacker {} bytes: {:02x?}",
            got.len(),
            &got[..got.len().min(16)]
        );
    }
    assert_eq!(
        bound(&pair_state(s, up.pair.id)),
        bound(&up.pair),
        "the attacker moved a leg"
    );
}

/// `xdp.mode: off`: the userspace path learns the legs and carries the tunnel; the attacker
/// moves nothing and receives nothing; deleting the pair closes its ports.
#[test]
fn stock_peers_relay_through_the_daemon_in_userspace_and_an_attacker_gets_nothing() {
    require_root!();
    let mut s = start(XdpMode::Off);
    let before = forwarded(&s);
    let up = bring_up(&mut s);
    let pair = &up.pair;
    for _ in 0..10 {
        assert!(ping(&s.lab, Host::ClientA, TUNNEL_B));
    }
    assert_attacker_gets_nothing(&s, &up);
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
    let up = bring_up(&mut s);
    let pair = &up.pair;

    s.lab.iperf_server(Host::ClientB, TUNNEL_B, true).unwrap();
    let run = s.lab.iperf(Host::ClientA, TUNNEL_B, 3).unwrap();
    let received = run.bytes;
    if received < 1_000_000 {
        let maps = s.maps().unwrap();
        let k = maps.kernel_verdicts().unwrap();
        let u = maps.userspace_verdicts().unwrap();
        for r in 0..k.len() {
            if k[r].packets + u[r].packets > 0 {
                eprintln!("reason {r}: kernel {:?} user {:?}", k[r], u[r]);
            }
        }
        eprintln!("{}\n{}", run.report, s.lab.log("iperf3-server"));
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

    assert_attacker_gets_nothing(&s, &up);

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

    // Deleting the pair removes its records without a warning (a pair has no session record;
    // a missing key used to be reported as a failed deletion).
    s.relay_cli(&["client", "delete", "--wireguard", &pair.id.to_string()])
        .unwrap();
    let log = s.lab.log("relay");
    assert!(
        !log.contains("removing a WireGuard pair"),
        "a deletion warned:\n{log}"
    );
}

/// The attacker floods peer A's port with initiations whose mac1 is valid for peer B (anyone
/// who knows B's public key can make them), 10 000 a second from several of its ports, while
/// the tunnel carries pings: peer B receives at most the pair's initiation rate
/// (docs/wireguard.md), the rest are counted as `dropped_wireguard_handshake_rate` and logged
/// (throttled), and not one ping is lost.
#[test]
fn an_initiation_flood_reaches_the_peer_only_at_the_handshake_rate() {
    use relay_userspace::fronts::wireguard::legs::{
        HandshakeRate, LEG_HANDSHAKE_BURST, OTHER_HANDSHAKE_BURST, OTHER_SOURCES,
    };
    require_root!();
    let mut s = start(XdpMode::Native);
    let up = bring_up(&mut s);
    let key_b: [u8; 32] = STANDARD
        .decode(&up.pair.peers[1].public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let port_a = up.pair.peers[0].relay.v4.unwrap();
    // What arrives on A's port reaches B from B's port.
    let port_b = up.pair.peers[1].relay.v4.unwrap();
    let dropped = |s: &Scenario| {
        s.maps().unwrap().userspace_verdicts().unwrap()
            [Reason::DroppedWireGuardHandshakeRate as usize]
            .packets
    };
    let dropped_before = dropped(&s);
    let tap = Tap::open(&s.lab, Host::ClientB).unwrap();
    s.lab
        .spawn(
            Host::ClientA,
            "ping-flood",
            std::path::Path::new("/usr/bin/ping"),
            &["-c", "40", "-i", "0.1", "-W", "2", TUNNEL_B],
        )
        .unwrap();
    const SECONDS: u64 = 4;
    const PER_SEC: u64 = 10_000;
    let started = Instant::now();
    let sent = s
        .lab
        .in_host(Host::Attacker, || {
            let sockets: Vec<UdpSocket> = (0..4u16)
                .map(|p| UdpSocket::bind(("0.0.0.0", 41_000 + p)).unwrap())
                .collect();
            let start = Instant::now();
            let mut sent = 0u64;
            // Bounded in count and time.
            while sent < SECONDS * PER_SEC && start.elapsed() < Duration::from_secs(SECONDS + 5) {
                let mut init = vec![0u8; INITIATION_LEN];
                init[0] = 1;
                init[4..8].copy_from_slice(&(sent as u32).to_le_bytes());
                Mac1Key::for_receiver(&key_b).seal(&mut init);
                let _ = sockets[(sent % 4) as usize].send_to(&init, port_a);
                sent += 1;
                // Paced: 100 every 10 ms.
                if sent.is_multiple_of(100) {
                    let due = Duration::from_micros(sent * 1_000_000 / PER_SEC);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            sent
        })
        .unwrap();
    let seconds = started.elapsed().as_secs() + 1;
    assert!(NatLab::wait_until(Duration::from_secs(15), || !s
        .lab
        .running("ping-flood")));
    let pinged = s.lab.log("ping-flood");
    assert!(
        pinged.contains("40 packets transmitted, 40 received"),
        "the tunnel suffered from the flood: {pinged}"
    );
    std::thread::sleep(Duration::from_millis(1500)); // the daemon flushes its counters
    let initiations = tap
        .udp(|_| true)
        .unwrap()
        .into_iter()
        .filter(|c| c.payload.len() == INITIATION_LEN && c.payload[0] == 1)
        .filter(|c| c.from.port() == port_b.port())
        .count() as u64;
    let bound = u64::from(HandshakeRate::MAX_PER_SEC) * seconds
        + u64::from(LEG_HANDSHAKE_BURST)
        + OTHER_SOURCES as u64 * u64::from(OTHER_HANDSHAKE_BURST);
    eprintln!(
        "sent {sent} forged initiations in {seconds} s; peer B received {initiations} \
         initiations (at most {bound})"
    );
    assert!(
        initiations <= bound,
        "peer B received {initiations} initiations, more than {bound}"
    );
    let refused = dropped(&s) - dropped_before;
    assert!(
        refused >= sent - bound,
        "{refused} counted as dropped_wireguard_handshake_rate of {sent}"
    );
    // Logged, but not once per packet: one line per throttle period (10 s), the rest held.
    let log = s.lab.log("relay");
    let lines = log
        .matches("WireGuard initiations beyond a pair's initiation rate")
        .count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for the flood:\n{log}"
    );
    assert!(
        ping(&s.lab, Host::ClientB, TUNNEL_A),
        "the pair keeps working"
    );
}

/// B's NAT maps it anew, to a port away from `old_port` (the lab's hard NAT would pick the same
/// port again: its random ports are a hash of the flow), as after a NAT restart or a move to
/// another network.
fn remap_nat_b(s: &Scenario, old_port: u16) {
    let range = if old_port < 30_000 {
        ":40000-40999"
    } else {
        ":20000-20999"
    };
    let rule =
        "insert rule inet lab postrouting oifname wan ip version 4 meta l4proto udp masquerade to";
    let mut args: Vec<&str> = rule.split(' ').collect();
    args.push(range);
    s.lab.exec(Host::NatB, "nft", &args).unwrap();
    s.lab.exec(Host::NatB, "conntrack", &["-F"]).unwrap();
}

/// The port B's application listens on in the one-way stream test (inside the tunnel).
const STREAM_PORT: u16 = 9_100;

/// A peer that only receives (A streams to B through the tunnel, B's application never
/// answers) and whose NAT mapping changes (B's NAT is the lab's hard one: a new random port)
/// gets its tunnel back once A, having heard nothing for 15 s, retries its handshake after B's
/// next keepalive from the new mapping — within max(PersistentKeepalive, 15 s) + 5 s
/// (docs/wireguard.md), asserted with 10 s of slack — and it is B's new mapping that answered
/// A (the rule for receivers, not B's own handshake, which would take until its keys
/// expired). Meanwhile an attacker that knows the pair's
/// indices (from the peers' real handshake messages, captured at the relay) and guesses
/// others forges keepalives from its own address to both ports: it receives at most
/// handshake messages, never data, and no leg becomes its.
#[test]
fn a_peer_that_only_receives_recovers_from_rebinding_and_forged_keepalives_win_nothing() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    };
    require_root!();
    let mut s = start(XdpMode::Native);
    let up = bring_up(&mut s);
    let pair = &up.pair;
    let ports: Vec<SocketAddr> = pair.peers.iter().map(|p| p.relay.v4.unwrap()).collect();
    let sink = s
        .lab
        .in_host(Host::ClientB, || UdpSocket::bind((TUNNEL_B, STREAM_PORT)))
        .unwrap()
        .unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The sequence number of the next datagram A sends.
    let next = Arc::new(AtomicU32::new(0));
    let streaming = {
        let socket = s
            .lab
            .in_host(Host::ClientA, || UdpSocket::bind((TUNNEL_A, 0)))
            .unwrap()
            .unwrap();
        let (stop, next) = (stop.clone(), next.clone());
        std::thread::spawn(move || {
            // 20 datagrams a second, bounded in count (two minutes) and stopped at the end.
            for i in 0u32..2400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                next.store(i + 1, Ordering::Relaxed);
                let _ = socket.send_to(&i.to_be_bytes(), (TUNNEL_B, STREAM_PORT));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut buf = [0u8; 64];
    // A datagram sent at or after sequence number `from` arrived.
    let mut arrived_since = |from: u32| {
        while let Ok(n) = sink.recv(&mut buf) {
            if n == 4 && u32::from_be_bytes(buf[..4].try_into().unwrap()) >= from {
                return true;
            }
        }
        false
    };
    assert!(
        NatLab::wait_until(Duration::from_secs(10), || arrived_since(20)),
        "the stream does not reach B"
    );

    // B's NAT maps it anew; the attacker starts forging.
    remap_nat_b(&s, pair.peers[1].bound.unwrap().port());
    let observed: Vec<u32> = up
        .handshakes
        .iter()
        .flat_map(|c| {
            let at = |i: usize| u32::from_le_bytes(c.payload[i..i + 4].try_into().unwrap());
            if c.payload[0] == 2 {
                vec![at(4), at(8)]
            } else {
                vec![at(4)]
            }
        })
        .collect();
    let tap = Tap::open(&s.lab, Host::Relay).unwrap();
    let flushed = Instant::now();
    let sent_before = next.load(Ordering::Relaxed);
    let attacker = {
        let lab_attacker = s
            .lab
            .in_host(Host::Attacker, || {
                (0..2u16)
                    .map(|p| UdpSocket::bind(("0.0.0.0", 42_000 + p)).unwrap())
                    .collect::<Vec<_>>()
            })
            .unwrap();
        let stop = stop.clone();
        let ports = ports.clone();
        std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut buf = [0u8; 2048];
            // Once a second for at most a minute: forged keepalives with every observed index
            // and a few guessed ones, to both ports.
            for round in 0u32..60 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let guessed = [0x1234_5678 ^ round, 0x9abc_def0 ^ round];
                for (socket, to) in lab_attacker.iter().zip(&ports) {
                    for index in observed.iter().chain(&guessed) {
                        let mut keepalive = vec![0u8; 32];
                        keepalive[0] = 4;
                        keepalive[4..8].copy_from_slice(&index.to_le_bytes());
                        let _ = socket.send_to(&keepalive, to);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
                for socket in &lab_attacker {
                    socket.set_nonblocking(true).unwrap();
                    while let Ok((n, _)) = socket.recv_from(&mut buf) {
                        received.push(buf[..n].to_vec());
                    }
                }
            }
            received
        })
    };
    let mut captured = Vec::new();
    let recovered = NatLab::wait_until(Duration::from_secs(60), || {
        captured.extend(tap.udp(|to| ports.contains(&to)).unwrap());
        arrived_since(sent_before)
    });
    let took = flushed.elapsed();
    assert!(recovered, "B never heard A again\n{}", s.lab.log("relay"));
    // A's data on the new session reaches B through the daemon until B answers on it (its
    // next keepalive, within 10 s); then the leg moves and the kernel carries the stream.
    let old_b = pair.peers[1].bound;
    assert!(
        NatLab::wait_until(Duration::from_secs(15), || pair_state(&s, pair.id).peers[1]
            .bound
            != old_b),
        "leg b did not move\n{}",
        s.lab.log("relay")
    );
    // The daemon flushes its counters each second: what it relayed before the move first.
    std::thread::sleep(Duration::from_millis(1500));
    let before = forwarded(&s);
    std::thread::sleep(Duration::from_secs(3));
    let after = forwarded(&s);
    stop.store(true, Ordering::Relaxed);
    streaming.join().unwrap();
    let attacker_received = attacker.join().unwrap();
    captured.extend(tap.udp(|to| ports.contains(&to)).unwrap());
    assert!(
        after.0 - before.0 >= 20 && after.1 - before.1 <= 2,
        "after the move the kernel carries the stream: {before:?} → {after:?}"
    );
    eprintln!("a receiving peer recovered from the NAT rebinding in {took:?}");
    let keepalive = Duration::from_secs(u64::from(relay_lab::scenario::WIREGUARD_KEEPALIVE));
    assert!(
        took <= keepalive.max(Duration::from_secs(15)) + Duration::from_secs(5 + 10),
        "recovery took {took:?}"
    );

    let moved = pair_state(&s, pair.id);
    let new_b = moved.peers[1].bound.unwrap();
    assert_eq!(moved.peers[0].bound, pair.peers[0].bound, "leg a stays");
    assert_eq!(new_b.ip(), pair.peers[1].bound.unwrap().ip(), "B's NAT");
    assert_ne!(new_b, pair.peers[1].bound.unwrap(), "leg b moved");
    assert!(
        captured
            .iter()
            .any(|c| c.from == new_b && c.to == ports[1] && c.payload[0] == 2),
        "B's new mapping answered A's handshake (rule 9): {:?}",
        captured
            .iter()
            .map(|c| (c.from, c.to, c.payload[0]))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "the attacker received {} handshake messages",
        attacker_received.len()
    );
    for got in &attacker_received {
        assert!(
            matches!(got.first(), Some(1 | 2)),
            "the attacker received a message of type {:?} ({} bytes)",
            got.first(),
            got.len()
        );
    }
    assert_ne!(new_b.ip().to_string(), addr::ATTACKER_V4);
}

/// boringtun as peer B (behind the hard NAT) and wireguard-go as A, configured from the relay's
/// snippets like any user would: the pair binds — later than with two wireguard-go peers,
/// because boringtun sends its first handshake only at its first PersistentKeepalive and
/// nothing reaches it through its NAT before (docs/wireguard.md) — the tunnel crosses in the
/// kernel, and a new NAT mapping on boringtun's side while it pings recovers by itself.
#[test]
fn boringtun_as_a_peer_binds_crosses_in_the_kernel_and_recovers_from_rebinding() {
    require_root!();
    let mut s = start(XdpMode::Native);
    let configured = Instant::now();
    let (names, pair) = start_through_front_with(
        &mut s,
        [Implementation::WireGuardGo, Implementation::Boringtun],
    )
    .unwrap();
    let up = NatLab::wait_until(Duration::from_secs(60), || {
        ping(&s.lab, Host::ClientA, TUNNEL_B)
    });
    assert!(
        up,
        "no ping through the pair\n{}\nboringtun: {}\n{}",
        s.lab.log("relay"),
        s.lab.log("wireguard-1"),
        s.lab
            .exec(Host::ClientB, "wg", &["show", &names[1]])
            .unwrap_or_default(),
    );
    eprintln!(
        "wireguard-go and boringtun: the tunnel is up {:?} after configuring",
        configured.elapsed()
    );
    let bound = pair_state(&s, pair.id);
    assert_eq!(bound.state, "bound", "{bound:?}");

    // The kernel carries the tunnel: 20 pings both ways, none through the daemon.
    std::thread::sleep(Duration::from_millis(1500)); // the daemon flushes counters each second
    let before = forwarded(&s);
    for _ in 0..20 {
        assert!(ping(&s.lab, Host::ClientA, TUNNEL_B));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let after = forwarded(&s);
    assert!(
        after.0 - before.0 >= 40 && after.1 - before.1 <= 2,
        "{before:?} → {after:?}"
    );

    // boringtun's NAT maps it anew while it pings: it recovers by itself.
    remap_nat_b(&s, bound.peers[1].bound.unwrap().port());
    let started = Instant::now();
    assert!(
        NatLab::wait_until(Duration::from_secs(60), || ping(
            &s.lab,
            Host::ClientB,
            TUNNEL_A
        )),
        "no recovery from the NAT rebinding\n{}",
        s.lab.log("relay")
    );
    eprintln!(
        "boringtun recovered from the NAT rebinding in {:?}",
        started.elapsed()
    );
    assert!(NatLab::wait_until(Duration::from_secs(15), || {
        pair_state(&s, pair.id).peers[1].bound != bound.peers[1].bound
    }));
    assert_eq!(pair_state(&s, pair.id).peers[0].bound, bound.peers[0].bound);
}
