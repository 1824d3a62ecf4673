//! The TURN front with clients nobody here wrote, in the NAT lab (privileged): coturn's
//! `turnutils_uclient` through the relay to `turnutils_peer` on a public host (ChannelData,
//! padded ChannelData, Send indications, IPv6 relaying, TCP and TLS to the server, several
//! clients), and refusals with the right error codes.

mod common;

use std::{path::PathBuf, time::Duration};

use relay_common::verdict::{Reason, VerdictCounter};
use relay_lab::{
    nat_lab::Host,
    scenario::{Scenario, ScenarioOptions},
    turn_clients::{self, UclientReport},
};
use relay_userspace::config::XdpMode;

fn turn_lab(xdp: XdpMode) -> Scenario {
    let mut options = ScenarioOptions::new(PathBuf::from(common::relay_path()), xdp);
    options.sessions = false;
    options.turn = true;
    let mut s = Scenario::start(options).unwrap();
    turn_clients::start_peer(&mut s.lab).unwrap();
    s
}

fn assert_no_loss(s: &Scenario, r: &anyhow::Result<UclientReport>, what: &str) {
    let r = r
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n--- relay ---\n{}", s.lab.log("relay")));
    assert!(
        r.sent > 0 && r.lost == 0 && r.received >= r.sent,
        "{what}: sent {}, received {}, lost {}\n{}\n--- relay ---\n{}",
        r.sent,
        r.received,
        r.lost,
        r.output,
        s.lab.log("relay")
    );
}

/// The userspace path's TURN verdicts, as the daemon flushes them (once a second).
fn userspace(s: &Scenario) -> Vec<VerdictCounter> {
    std::thread::sleep(Duration::from_millis(1200));
    s.maps().unwrap().userspace_verdicts().unwrap()
}

/// Both paths' verdicts: the kernel's and userspace's (flushed once a second).
struct Paths {
    kernel: Vec<VerdictCounter>,
    userspace: Vec<VerdictCounter>,
}

impl Paths {
    fn read(s: &Scenario) -> Paths {
        let userspace = userspace(s);
        Paths {
            kernel: s.maps().unwrap().kernel_verdicts().unwrap(),
            userspace,
        }
    }

    /// Packets counted under `r` since `before`: (kernel, userspace).
    fn delta(&self, before: &Paths, r: Reason) -> (u64, u64) {
        let i = r as usize;
        (
            self.kernel[i].packets - before.kernel[i].packets,
            self.userspace[i].packets - before.userspace[i].packets,
        )
    }
}

#[test]
fn coturn_uclient_relays_every_way_in_the_kernel() {
    require_root!();
    uclient_every_way(XdpMode::Native);
}

#[test]
fn coturn_uclient_relays_every_way_with_xdp_off() {
    require_root!();
    uclient_every_way(XdpMode::Off);
}

/// coturn's client in every mode, without loss. With XDP, ChannelData over UDP crosses in the
/// kernel and the rest (Send and Data indications, TCP and TLS clients) in userspace; without,
/// everything in userspace.
fn uclient_every_way(xdp: XdpMode) {
    let s = turn_lab(xdp);
    let before = Paths::read(&s);
    for (what, args, v6_server) in [
        ("channels", vec!["-n", "30", "-c"], false),
        ("padded channels", vec!["-n", "30", "-c", "-D"], false),
        ("send indications", vec!["-n", "30", "-c", "-s"], false),
        ("IPv6 relay", vec!["-n", "30", "-c", "-x"], true),
        ("TCP to the server", vec!["-n", "30", "-c", "-t"], false),
        (
            "TLS to the server",
            vec!["-n", "30", "-c", "-t", "-S", "-p", "5349"],
            false,
        ),
        ("several clients", vec!["-n", "20", "-c", "-m", "4"], false),
        ("with RTCP allocations (EVEN-PORT)", vec!["-n", "20"], false),
    ] {
        let r = turn_clients::uclient(&s.lab, Host::ClientA, &args, v6_server);
        assert_no_loss(&s, &r, what);
    }
    // Client B sits behind a symmetric NAT with a strict firewall: TURN still works.
    let r = turn_clients::uclient(&s.lab, Host::ClientB, &["-n", "20", "-c"], false);
    assert_no_loss(&s, &r, "client behind the symmetric NAT");
    let after = Paths::read(&s);
    let to_peer = after.delta(&before, Reason::ForwardedTurnToPeer);
    let to_client = after.delta(&before, Reason::ForwardedTurnToClient);
    let stun = after.delta(&before, Reason::PassedTurnStun);
    let report = format!("to peer {to_peer:?}, to client {to_client:?}, stun {stun:?}");
    println!("{xdp:?}: (kernel, userspace) packets: {report}");
    if xdp == XdpMode::Off {
        assert_eq!((to_peer.0, to_client.0), (0, 0), "{report}");
        assert!(to_peer.1 >= 300 && to_client.1 >= 300, "{report}");
    } else {
        // Over UDP with channels: 30 + 30 + 30 (IPv6) + 80 (4 clients) + 20 + 20 (client B)
        // messages each way.
        assert!(to_peer.0 >= 210 && to_client.0 >= 210, "{report}");
        // Send indications, TCP, TLS: 30 each, each way.
        assert!(to_peer.1 >= 90 && to_client.1 >= 90, "{report}");
        // Requests always go up: the kernel passes them, the server answers.
        assert!(stun.0 > 0, "{report}");
    }
    assert!(stun.1 > 0, "{report}");
}

#[test]
fn aioice_relays_over_udp_in_the_kernel_and_tcp_in_userspace() {
    require_root!();
    aioice_both_transports(XdpMode::Native);
}

#[test]
fn aioice_relays_over_udp_and_tcp_with_xdp_off() {
    require_root!();
    aioice_both_transports(XdpMode::Off);
}

fn aioice_both_transports(xdp: XdpMode) {
    let s = turn_lab(xdp);
    for transport in ["udp", "tcp"] {
        let before = Paths::read(&s);
        let r = turn_clients::aioice(
            &s.lab,
            Host::ClientA,
            turn_clients::AioiceRun::paced(transport, 20),
        )
        .unwrap_or_else(|e| panic!("{transport}: {e:#}\n--- relay ---\n{}", s.lab.log("relay")));
        assert!(
            r.exact && r.sent == 20 && r.received == 20,
            "{transport}: {r:?}\n--- relay ---\n{}",
            s.lab.log("relay")
        );
        let (ip, port) = r.relayed.clone().unwrap();
        assert_eq!(ip, relay_lab::nat_lab::addr::RELAY_V4);
        assert!((50_000..=50_999).contains(&port), "{r:?}");
        let after = Paths::read(&s);
        let to_peer = after.delta(&before, Reason::ForwardedTurnToPeer);
        let to_client = after.delta(&before, Reason::ForwardedTurnToClient);
        let report = format!("{transport}: to peer {to_peer:?}, to client {to_client:?}");
        println!("{xdp:?}: (kernel, userspace) packets: {report}");
        if xdp != XdpMode::Off && transport == "udp" {
            assert!(to_peer.0 >= 20 && to_client.0 >= 20, "{report}");
        } else {
            assert!(to_peer.1 >= 20 && to_client.1 >= 20, "{report}");
            assert_eq!((to_peer.0, to_client.0), (0, 0), "{report}");
        }
    }
}

#[test]
fn two_chromium_pages_talk_through_relayed_candidates_in_the_kernel() {
    require_root!();
    chromium_pair(XdpMode::Native);
}

#[test]
fn two_chromium_pages_talk_through_relayed_candidates_with_xdp_off() {
    require_root!();
    chromium_pair(XdpMode::Off);
}

/// Two Chromium pages, each relayed by this relay (relay/relay), over UDP and over TLS. With
/// XDP, their UDP allocations talk to each other in the kernel in one step.
fn chromium_pair(xdp: XdpMode) {
    let s = turn_lab(xdp);
    for (url, protocol) in [
        (
            format!(
                "turn:{}:3478?transport=udp",
                relay_lab::nat_lab::addr::RELAY_V4
            ),
            "udp",
        ),
        (
            format!(
                "turns:{}:5349?transport=tcp",
                relay_lab::nat_lab::addr::RELAY_V4
            ),
            "tls",
        ),
    ] {
        let before = Paths::read(&s);
        let r = turn_clients::webrtc_pair(&s.lab, Host::ClientA, &url, 10)
            .unwrap_or_else(|e| panic!("{url}: {e:#}\n--- relay ---\n{}", s.lab.log("relay")));
        assert!(
            r.open,
            "{url}: the DataChannel did not open: {r:?}\n{}",
            s.lab.log("relay")
        );
        let expect = |tag: &str| (0..10).map(|i| format!("{tag} {i}")).collect::<Vec<_>>();
        assert_eq!(r.b_got, expect("a->b"), "{url}");
        assert_eq!(r.a_got, expect("b->a"), "{url}");
        for pair in [&r.pair_a, &r.pair_b] {
            let pair = pair
                .as_ref()
                .unwrap_or_else(|| panic!("{url}: no selected pair: {r:?}"));
            assert_eq!(
                (pair.local.as_str(), pair.remote.as_str()),
                ("relay", "relay"),
                "{url}"
            );
            assert!(
                pair.local_address
                    .starts_with(relay_lab::nat_lab::addr::RELAY_V4),
                "{url}: {pair:?}"
            );
            assert_eq!(
                pair.relay_protocol.as_deref(),
                Some(protocol),
                "{url}: {pair:?}"
            );
        }
        let after = Paths::read(&s);
        let between = after.delta(&before, Reason::ForwardedTurnBetweenClients);
        let to_peer = after.delta(&before, Reason::ForwardedTurnToPeer);
        let report = format!("{url}: between clients {between:?}, to peer {to_peer:?}");
        println!("{xdp:?}: (kernel, userspace) packets: {report}");
        if xdp != XdpMode::Off && protocol == "udp" {
            // DTLS, SCTP and the 20 messages: in the kernel, from one client to the other.
            assert!(between.0 >= 20, "{report}");
        } else {
            assert_eq!(between.0, 0, "{report}");
            assert!(to_peer.1 >= 20, "{report}");
        }
    }
}

fn server() -> std::net::SocketAddr {
    format!("{}:3478", relay_lab::nat_lab::addr::RELAY_V4)
        .parse()
        .unwrap()
}

fn peer(address: &str) -> std::net::SocketAddr {
    format!("{address}:{}", turn_clients::PEER_PORT)
        .parse()
        .unwrap()
}

/// A REST credential under the lab's secret, valid for `ttl` seconds (negative: expired).
fn rest(user: &str, ttl: i64) -> (String, String) {
    rest_with(relay_lab::scenario::TURN_SECRET, user, ttl)
}

fn rest_with(secret: &str, user: &str, ttl: i64) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let username = relay_userspace::fronts::turn::auth::rest_username(user, (now + ttl) as u64);
    let password = relay_userspace::fronts::turn::auth::rest_password(secret.as_bytes(), &username);
    (username, password)
}

#[test]
fn refusals_get_their_error_codes_and_relay_nothing() {
    require_root!();
    use relay_lab::{nat_lab::addr, scenario::TURN_QUOTA, turn_probe::TurnProbe};
    let s = turn_lab(XdpMode::Off);
    let probe = |user: &str, password: &str| {
        TurnProbe::new(&s.lab, Host::ClientA, server(), user, password).unwrap()
    };
    let before = userspace(&s);
    // Wrong password, expired REST credential: 401, no allocation.
    let (user, _) = rest("mallory", 3600);
    assert_eq!(probe(&user, "guessed").allocate().unwrap(), Err(401));
    let (user, password) = rest("late", -60);
    assert_eq!(probe(&user, &password).allocate().unwrap(), Err(401));
    // A good one works, and relays to the echo peer.
    let (user, password) = rest("alice", 3600);
    let mut ok = probe(&user, &password);
    ok.allocate().unwrap().expect("an allocation");
    assert_eq!(ok.channel_bind(0x4000, peer(addr::PEER_V4)).unwrap(), 0);
    ok.send_channel(0x4000, b"hello peer").unwrap();
    assert_eq!(
        ok.receive(Duration::from_secs(2)).as_deref(),
        Some(&b"hello peer"[..])
    );
    // A peer in a denied range: 403 for its permission and channel; data to it goes nowhere.
    let denied = peer(addr::DENIED_PEER_V4);
    assert_eq!(ok.create_permission(denied).unwrap(), 403);
    assert_eq!(ok.channel_bind(0x4001, denied).unwrap(), 403);
    ok.send_indication(denied, b"let me in").unwrap();
    assert_eq!(ok.receive(Duration::from_millis(700)), None);
    // Private and loopback peers in any spelling, too.
    for refused in ["10.0.1.2:3480", "127.0.0.1:22", "[::ffff:127.0.0.1]:22"] {
        assert_eq!(
            ok.create_permission(refused.parse().unwrap()).unwrap(),
            403,
            "{refused}"
        );
    }
    // A channel number out of range: 400.
    assert_eq!(ok.channel_bind(0x3fff, peer(addr::PEER_V4)).unwrap(), 400);
    // The user's quota: the next allocations until it is full, then 486.
    let (bob, bob_password) = rest("bob", 3600);
    let mut held = Vec::new();
    for _ in 0..TURN_QUOTA {
        let mut p = probe(&bob, &bob_password);
        p.allocate().unwrap().expect("within the quota");
        held.push(p);
    }
    assert_eq!(probe(&bob, &bob_password).allocate().unwrap(), Err(486));
    let after = userspace(&s);
    let delta = |r: Reason| after[r as usize].packets - before[r as usize].packets;
    assert_eq!(
        delta(Reason::ForwardedTurnToPeer),
        1,
        "only the good client's datagram"
    );
    assert!(delta(Reason::DroppedTurnNoPermission) >= 1);
}

#[test]
fn a_restart_keeps_allocations_permissions_and_channels() {
    require_root!();
    use relay_lab::{nat_lab::addr, turn_probe::TurnProbe};
    let mut s = turn_lab(XdpMode::Off);
    let (user, password) = rest("carol", 3600);
    let mut client = TurnProbe::new(&s.lab, Host::ClientA, server(), &user, &password).unwrap();
    let relayed = client.allocate().unwrap().expect("an allocation");
    assert_eq!(client.channel_bind(0x4abc, peer(addr::PEER_V4)).unwrap(), 0);
    client.send_channel(0x4abc, b"before").unwrap();
    assert_eq!(
        client.receive(Duration::from_secs(2)).as_deref(),
        Some(&b"before"[..])
    );
    std::thread::sleep(Duration::from_millis(1200)); // the counters' flush
    s.restart_relay().unwrap();
    // The allocation's counters carried over.
    let pin = s.pin_dir.to_str().unwrap().to_string();
    let listed = s
        .relay_cli(&[
            "sessions",
            "--pin-dir",
            &pin,
            "--front",
            "turn",
            "--json",
            "--interval",
            "0",
        ])
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    for d in 0..2 {
        assert_eq!(
            listed[0]["directions"][d]["userspace_packets"], 1,
            "{listed}"
        );
    }
    // The channel still carries data, with no request in between.
    let mut echoed = None;
    for _ in 0..10 {
        client.send_channel(0x4abc, b"after").unwrap();
        echoed = client.receive(Duration::from_millis(500));
        if echoed.is_some() {
            break;
        }
    }
    assert_eq!(
        echoed.as_deref(),
        Some(&b"after"[..]),
        "--- relay ---\n{}",
        s.lab.log("relay")
    );
    // The allocation is the same one: a Refresh from the client succeeds (its nonce, under the
    // pinned key, is still good), and a new Allocate from it is a mismatch.
    assert_eq!(client.refresh(600).unwrap(), 0);
    assert_eq!(client.allocate().unwrap(), Err(437));
    assert!(
        s.lab.log("relay").contains("took over TURN allocations"),
        "{}",
        s.lab.log("relay")
    );
    let _ = relayed;
}

/// coturn's client streams through the relay while the daemon restarts, then while it is
/// upgraded (its program swapped under the pinned links): with XDP, ChannelData keeps crossing
/// in the kernel while no daemon runs, and not one message is lost. (With `xdp.mode: off` the
/// same test loses the messages sent while the daemon is away.)
#[test]
fn restart_and_upgrade_keep_turn_flowing_in_the_kernel_without_loss() {
    require_root!();
    let mut s = turn_lab(XdpMode::Native);
    for (round, upgrade) in [("restart", false), ("upgrade", true)] {
        if upgrade {
            // The pinned links ran another build, as far as the new daemon can tell.
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
        }
        let name = format!("uclient-{round}");
        // 600 messages at 10 ms: six seconds of ChannelData, each echoed by the peer.
        turn_clients::spawn_uclient(
            &mut s.lab,
            Host::ClientA,
            &name,
            &["-n", "600", "-z", "10", "-c"],
        )
        .unwrap();
        // Wait for the data to flow in the kernel, then take the daemon away under it.
        let flowing = || {
            s.maps().unwrap().kernel_verdicts().unwrap()[Reason::ForwardedTurnToPeer as usize]
                .packets
        };
        let start = flowing();
        assert!(
            relay_lab::nat_lab::NatLab::wait_until(Duration::from_secs(10), || flowing()
                > start + 50),
            "{round}: no ChannelData in the kernel\n{}",
            s.lab.log(&name)
        );
        s.restart_relay().unwrap();
        let r = turn_clients::finish_uclient(&mut s.lab, &name, Duration::from_secs(30));
        assert_no_loss(&s, &r, round);
        let r = r.unwrap();
        assert_eq!(r.sent, 600, "{round}: {}", r.output);
    }
    let log = s.lab.log("relay");
    assert!(log.contains("took over TURN allocations"), "{log}");
    assert!(
        log.contains("swapped the program under the pinned XDP link"),
        "{log}"
    );
}

#[test]
fn operators_see_allocations_in_the_cli_and_the_metrics() {
    require_root!();
    use relay_lab::{nat_lab::addr, turn_probe::TurnProbe};
    let s = turn_lab(XdpMode::Native);
    // A credential minted by the CLI from the relay's own configuration.
    let config = s.lab.dir.join("relay.yaml");
    let minted = s
        .relay_cli(&[
            "turn",
            "credentials",
            "--user",
            "dave",
            "--ttl",
            "10m",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ])
        .unwrap();
    let minted: serde_json::Value = serde_json::from_str(&minted).unwrap();
    let (user, password) = (
        minted["username"].as_str().unwrap(),
        minted["credential"].as_str().unwrap(),
    );
    let mut client = TurnProbe::new(&s.lab, Host::ClientA, server(), user, password).unwrap();
    let relayed = client
        .allocate()
        .unwrap()
        .expect("the minted credential works");
    assert_eq!(client.channel_bind(0x4100, peer(addr::PEER_V4)).unwrap(), 0);
    for i in 0..5 {
        client
            .send_channel(0x4100, format!("m{i}").as_bytes())
            .unwrap();
        assert!(client.receive(Duration::from_secs(2)).is_some());
    }
    std::thread::sleep(Duration::from_millis(1500)); // the counters' flush
    let pin = s.pin_dir.to_str().unwrap().to_string();
    let listed = s
        .relay_cli(&[
            "sessions",
            "--pin-dir",
            &pin,
            "--front",
            "turn",
            "--json",
            "--interval",
            "0",
        ])
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let a = &listed[0];
    assert_eq!(a["relayed_port"], relayed.port(), "{listed}");
    assert_eq!(a["username"], user);
    assert_eq!(a["channels"][0][0], 0x4100);
    assert_eq!(a["permissions"][0], addr::PEER_V4);
    // ChannelData both ways: the kernel path carried it.
    for d in 0..2 {
        assert_eq!(a["directions"][d]["kernel_packets"], 5, "{listed}");
        assert_eq!(a["directions"][d]["userspace_packets"], 0, "{listed}");
    }
    assert_eq!(a["path"], "kernel", "{listed}");
    let table = s
        .relay_cli(&["sessions", "--pin-dir", &pin, "--interval", "0"])
        .unwrap();
    assert!(table.contains("1 TURN allocations"), "{table}");
    let stats = s.relay_cli(&["stats", "--pin-dir", &pin]).unwrap();
    assert!(stats.contains("TURN allocations 1 of"), "{stats}");
    assert!(stats.contains("forwarded_turn_to_peer"), "{stats}");
    let metrics = s
        .http_get(relay_lab::scenario::LAB_METRICS, "/metrics")
        .unwrap();
    for series in [
        "relay_turn_allocations{transport=\"udp\"} 1",
        "relay_turn_channels{} 1",
        "relay_turn_permissions{} 1",
        "relay_turn_requests_total{result=\"allocate\"} 1",
        "relay_turn_requests_total{result=\"channel_bind\"} 1",
        "relay_turn_auth_failures_total{reason=\"error_401\"} 1",
        "relay_turn_relayed_packets_total{path=\"kernel\",direction=\"to_peer\"} 5",
        "relay_turn_relayed_packets_total{path=\"kernel\",direction=\"to_client\"} 5",
        "relay_turn_relayed_packets_total{path=\"userspace\",direction=\"to_peer\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(!metrics.contains("dave"), "a username became a label");
}

#[test]
fn a_reload_rotates_the_shared_secret() {
    require_root!();
    use relay_lab::{scenario::TURN_SECRET, turn_probe::TurnProbe};
    let s = turn_lab(XdpMode::Off);
    let (user, password) = rest("erin", 3600);
    let mut before = TurnProbe::new(&s.lab, Host::ClientA, server(), &user, &password).unwrap();
    before
        .allocate()
        .unwrap()
        .expect("the old secret works before the reload");
    let config = s.lab.dir.join("relay.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let rotated = "rotated-turn-secret-456789";
    std::fs::write(&config, text.replace(TURN_SECRET, rotated)).unwrap();
    s.lab
        .signal("relay", nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    assert!(
        relay_lab::nat_lab::NatLab::wait_until(Duration::from_secs(5), || s
            .lab
            .log("relay")
            .contains("TURN credentials reloaded")),
        "{}",
        s.lab.log("relay")
    );
    let (old_user, old_password) = rest("erin2", 3600);
    let mut old =
        TurnProbe::new(&s.lab, Host::ClientA, server(), &old_user, &old_password).unwrap();
    assert_eq!(old.allocate().unwrap(), Err(401));
    let (username, password) = rest_with(rotated, "frank", 600);
    let mut new = TurnProbe::new(&s.lab, Host::ClientA, server(), &username, &password).unwrap();
    new.allocate()
        .unwrap()
        .expect("the new secret works after the reload");
}

#[test]
fn the_turn_demo_runs_start_to_finish_and_cleans_up() {
    require_root!();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-lab"))
        .args(["demo", "--turn"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("-{}-", child.id());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "sent 200, echoed back 200, lost 0",
        "DataChannel open: true, selected pair relay",
        "10 messages each way",
        "by the userspace path",
        "done",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    // uclient's 200 messages each way (and the Chromium pair's) crossed in the kernel.
    let kernel: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" by the userspace path")
                .and_then(|l| l.split(" packets relayed by the XDP program").next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no path line:\n{stdout}"));
    assert!(kernel >= 400, "{stdout}");
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&marker));
}
