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

#[test]
fn coturn_uclient_relays_every_way_without_loss() {
    require_root!();
    let s = turn_lab(XdpMode::Off);
    let before = userspace(&s);
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
    let after = userspace(&s);
    let delta = |r: Reason| after[r as usize].packets - before[r as usize].packets;
    assert!(
        delta(Reason::ForwardedTurnToPeer) >= 250,
        "{}",
        delta(Reason::ForwardedTurnToPeer)
    );
    assert!(delta(Reason::ForwardedTurnToClient) >= 250);
    assert!(delta(Reason::PassedTurnStun) > 0);
}

#[test]
fn aioice_relays_over_udp_and_tcp() {
    require_root!();
    let s = turn_lab(XdpMode::Off);
    for transport in ["udp", "tcp"] {
        let r = turn_clients::aioice(&s.lab, Host::ClientA, transport, 20).unwrap_or_else(|e| {
            panic!("{transport}: {e:#}\n--- relay ---\n{}", s.lab.log("relay"))
        });
        assert!(
            r.exact && r.sent == 20 && r.received == 20,
            "{transport}: {r:?}\n--- relay ---\n{}",
            s.lab.log("relay")
        );
        let (ip, port) = r.relayed.clone().unwrap();
        assert_eq!(ip, relay_lab::nat_lab::addr::RELAY_V4);
        assert!((50_000..=50_999).contains(&port), "{r:?}");
    }
}

#[test]
fn two_chromium_pages_talk_through_relayed_candidates_over_udp_and_tls() {
    require_root!();
    let s = turn_lab(XdpMode::Off);
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
    }
}
