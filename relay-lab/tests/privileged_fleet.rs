//! Several relays as one fleet, in the NAT lab: relays 2 and 3 on hosts of their own, each
//! configuration naming the others as `fleet.alternates`. Draining relay 1 keeps its session
//! flowing in the kernel, and an allocation made before the drain keeps relaying, while new work
//! goes elsewhere: coturn's client and Chromium follow the 300 Try Alternate to relay 2, the API
//! refuses with the alternates. A rolling restart of all three loses nothing.

mod common;

use std::{path::PathBuf, time::Duration};

use relay_lab::{
    nat_lab::{Host, addr},
    scenario::{LAB_METRICS, Scenario, ScenarioOptions},
    turn_clients,
};
use relay_userspace::config::XdpMode;

/// The fleet's relays and their lab addresses.
const RELAYS: [(Host, &str, &str); 3] = [
    (Host::Relay, addr::RELAY_V4, addr::RELAY_V6),
    (Host::Relay2, addr::RELAY2_V4, addr::RELAY2_V6),
    (Host::Relay3, addr::RELAY3_V4, addr::RELAY3_V6),
];

/// A `fleet:` section naming the relays on `alternates` (by their lab addresses).
fn fleet(alternates: &[Host]) -> String {
    let mut text = String::from("fleet:\n  alternates:\n");
    for (_, v4, v6) in RELAYS.iter().filter(|(h, ..)| alternates.contains(h)) {
        text.push_str(&format!(
            "    - api: http://{v4}:8080\n      turn: [\"{v4}:3478\", \"[{v6}]:3478\"]\n"
        ));
    }
    text
}

/// Every relay of the fleet but `host`'s.
fn others(host: Host) -> Vec<Host> {
    RELAYS
        .iter()
        .map(|(h, ..)| *h)
        .filter(|h| *h != host)
        .collect()
}

/// Relay 1 with a bound session and TURN, the echo peer, and relays 2 and 3.
fn fleet_lab() -> Scenario {
    let mut options = ScenarioOptions::new(PathBuf::from(common::relay_path()), XdpMode::Native);
    options.turn = true;
    options.extra_config = fleet(&others(Host::Relay));
    let mut s = Scenario::start(options).unwrap();
    turn_clients::start_peer(&mut s.lab).unwrap();
    for (host, name) in [(Host::Relay2, "relay2"), (Host::Relay3, "relay3")] {
        s.start_fleet_relay(host, name, &fleet(&others(host)))
            .unwrap();
    }
    s
}

/// TURN requests with `result` on `host`'s relay, from its metrics.
fn turn_results(s: &Scenario, host: Host, result: &str) -> u64 {
    let text = s.http_get_on(host, LAB_METRICS, "/metrics").unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("relay_turn_requests_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn draining_relay_one_keeps_its_traffic_and_sends_new_work_to_the_alternates() {
    require_root!();
    let mut s = fleet_lab();
    let allocated_on_2 = turn_results(&s, Host::Relay2, "allocate");
    // A TURN client relaying through relay 1 before the drain and during it, and a call between
    // two Chromium pages.
    turn_clients::spawn_uclient(&mut s.lab, Host::ClientB, "before", &["-n", "300", "-c"]).unwrap();
    let url = format!("turn:{}:3478?transport=udp", addr::RELAY_V4);
    turn_clients::spawn_webrtc_pair(&mut s.lab, Host::ClientB, "call", &url, 20, 250).unwrap();
    assert!(
        relay_lab::nat_lab::NatLab::wait_until(Duration::from_secs(60), || s
            .lab
            .log("call")
            .contains("OPEN")),
        "the call did not open:\n{}",
        s.lab.log("call")
    );
    assert!(relay_lab::nat_lab::NatLab::wait_until(
        Duration::from_secs(5),
        || { turn_results(&s, Host::Relay, "allocate") >= 1 }
    ));
    std::thread::sleep(Duration::from_millis(200));
    let allocated_on_1 = turn_results(&s, Host::Relay, "allocate");
    let mut refused = String::new();
    let mut report = None;
    let lost = s
        .lost_while(1500, Duration::from_millis(4), |s| {
            let out = s.relay_cli(&["drain"]).unwrap();
            assert!(out.contains("draining since"), "{out}");
            // A new session: refused, naming the alternates.
            refused = format!("{:?}", s.relay_cli(&["client", "create", "--json"]));
            // coturn's client asks relay 1 and is sent to relay 2.
            report = Some(turn_clients::uclient(
                &s.lab,
                Host::ClientA,
                &["-n", "20", "-c"],
                false,
            ));
        })
        .unwrap();
    assert!(
        lost.is_empty(),
        "relay 1's session lost {} datagrams during the drain",
        lost.len()
    );
    assert!(
        refused.contains("draining") && refused.contains(addr::RELAY2_V4),
        "{refused}"
    );
    let r = report
        .unwrap()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", s.lab.log("relay")));
    assert!(r.sent > 0 && r.lost == 0, "{}", r.output);
    let before =
        turn_clients::finish_uclient(&mut s.lab, "before", Duration::from_secs(60)).unwrap();
    assert!(
        before.sent > 0 && before.lost == 0,
        "the allocation made before the drain: {}",
        before.output
    );
    // The call that began before the drain carried on through relay 1.
    let call =
        turn_clients::finish_webrtc_pair(&mut s.lab, "call", Duration::from_secs(90)).unwrap();
    assert!(
        call.open && call.b_got.len() == 20 && call.a_got.len() == 20,
        "{call:?}"
    );
    for pair in [&call.pair_a, &call.pair_b] {
        let pair = pair.as_ref().expect("a selected pair");
        assert!(pair.local_address.starts_with(addr::RELAY_V4), "{pair:?}");
    }
    // Chromium (libwebrtc) asks relay 1 and relays through relay 2.
    let web = turn_clients::webrtc_pair(&s.lab, Host::ClientA, &url, 5).unwrap();
    assert!(
        web.open && web.b_got.len() == 5 && web.a_got.len() == 5,
        "{web:?}"
    );
    for pair in [&web.pair_a, &web.pair_b] {
        let pair = pair.as_ref().expect("a selected pair");
        assert_eq!(pair.local, "relay", "{pair:?}");
        assert!(
            pair.local_address.starts_with(addr::RELAY2_V4),
            "Chromium's relayed candidate is not on relay 2: {pair:?}"
        );
    }
    assert!(turn_results(&s, Host::Relay, "error_300") >= 1);
    assert_eq!(
        turn_results(&s, Host::Relay, "allocate"),
        allocated_on_1,
        "relay 1 allocated while draining"
    );
    assert!(
        turn_results(&s, Host::Relay2, "allocate") > allocated_on_2,
        "the client's allocations did not land on relay 2"
    );

    // An upgrade keeps draining (pinned) until undrained; then relay 1 serves again.
    for sidecar in ["sidecar-a", "sidecar-b"] {
        let _ = s.lab.stop(sidecar);
    }
    s.relay_cli(&["client", "delete", &s.session.vni.to_string()])
        .unwrap();
    // TURN allocations stay until their lifetime ends (coturn's client does not release
    // them): the wait gives up at its timeout, exit 1.
    let waited = s.relay_cli(&["drain", "--wait", "--timeout", "2s"]);
    assert!(waited.is_err(), "{waited:?}");
    // The upgrade: as far as the new daemon can tell, the links run another build, so it swaps
    // its program in under them (privileged_lab's upgrade test has the details).
    let program = |s: &Scenario| s.xdp_program().unwrap().expect("an XDP program");
    let before_upgrade = program(&s);
    s.maps()
        .unwrap()
        .build_info
        .set(
            0,
            relay_common::maps::BuildInfo {
                object_sha256: [0xaa; 32],
            },
            0,
        )
        .unwrap();
    s.restart_relay().unwrap();
    assert_ne!(
        program(&s),
        before_upgrade,
        "the upgrade kept the old program"
    );
    assert!(
        s.relay_cli(&["drain", "--status"])
            .unwrap()
            .contains("draining since")
    );
    s.relay_cli(&["undrain"]).unwrap();
    s.relay_cli(&["client", "create", "--json"]).unwrap();
    let allocated_since_restart = turn_results(&s, Host::Relay, "allocate");
    let r = turn_clients::uclient(&s.lab, Host::ClientA, &["-n", "10", "-c"], false).unwrap();
    assert!(r.sent > 0 && r.lost == 0, "{}", r.output);
    assert!(turn_results(&s, Host::Relay, "allocate") > allocated_since_restart);
}

#[test]
fn a_rolling_restart_of_the_fleet_loses_nothing() {
    require_root!();
    let mut s = fleet_lab();
    // TURN traffic on relay 1 and the session through it, while relays 3, 2 and 1 restart one
    // after the other (each adopting its pinned state).
    turn_clients::spawn_uclient(&mut s.lab, Host::ClientB, "uclient", &["-n", "300", "-c"])
        .unwrap();
    let lost = s
        .lost_while(2000, Duration::from_millis(4), |s| {
            s.restart_fleet_relay("relay3").unwrap();
            s.restart_fleet_relay("relay2").unwrap();
            s.restart_relay().unwrap();
        })
        .unwrap();
    assert!(lost.is_empty(), "the session lost {} datagrams", lost.len());
    let r = turn_clients::finish_uclient(&mut s.lab, "uclient", Duration::from_secs(60)).unwrap();
    assert!(r.sent > 0 && r.lost == 0, "{}", r.output);
    for host in [Host::Relay2, Host::Relay3] {
        let status = s.relay_cli_on(host, &["drain", "--status"]).unwrap();
        assert!(status.contains("not draining"), "{status}");
    }
}

/// A stock WireGuard pair (wireguard-go on both clients, no client software) keeps its tunnel
/// through relay 1's drain; a new pair is refused there with the alternates.
#[test]
fn a_wireguard_pair_keeps_its_tunnel_through_a_drain_and_new_pairs_go_elsewhere() {
    use relay_lab::wireguard::{self, TUNNEL_B};
    require_root!();
    let mut options = ScenarioOptions::new(PathBuf::from(common::relay_path()), XdpMode::Native);
    options.sessions = false;
    options.wireguard = true;
    options.extra_config = fleet(&[Host::Relay2]);
    let mut s = Scenario::start(options).unwrap();
    let (_names, pair) = wireguard::start_through_front(&mut s).unwrap();
    assert!(relay_lab::nat_lab::NatLab::wait_until(
        Duration::from_secs(30),
        || s.lab
            .exec(Host::ClientA, "ping", &["-c", "1", "-W", "1", TUNNEL_B])
            .is_ok()
    ));
    s.lab
        .spawn(
            Host::ClientA,
            "ping-drain",
            std::path::Path::new("/usr/bin/ping"),
            &["-c", "40", "-i", "0.1", "-W", "2", TUNNEL_B],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.relay_cli(&["drain"]).unwrap();
    let keys: Vec<&str> = pair.peers.iter().map(|p| p.public_key.as_str()).collect();
    let refused = s.relay_cli(&[
        "client",
        "create",
        "--wireguard",
        "--peer-a",
        keys[1],
        "--peer-b",
        keys[0],
    ]);
    let text = format!("{refused:?}");
    assert!(
        refused.is_err() && text.contains("draining") && text.contains(addr::RELAY2_V4),
        "{text}"
    );
    assert!(relay_lab::nat_lab::NatLab::wait_until(
        Duration::from_secs(15),
        || !s.lab.running("ping-drain")
    ));
    let pinged = s.lab.log("ping-drain");
    assert!(
        pinged.contains("40 packets transmitted, 40 received"),
        "the tunnel suffered from the drain: {pinged}"
    );
    let state = s
        .relay_cli(&[
            "client",
            "get",
            "--wireguard",
            "--json",
            &pair.id.to_string(),
        ])
        .unwrap();
    assert!(state.contains("\"bound\""), "{state}");
}
