//! Crowds behind one NAT under the limits the relay ships with (privileged): the bugs of
//! issue 23 as they were found, with coturn's `turnutils_uclient` — several TCP, TLS and UDP
//! clients behind one NAT address, and more than a thousand allocations for a daemon started
//! with systemd's default soft limit of 1024 open files.

mod common;

use std::{path::PathBuf, time::Duration};

use relay_common::verdict::{Reason, VerdictCounter};
use relay_lab::{
    nat_lab::Host,
    scenario::{Scenario, ScenarioOptions},
    turn_clients::{self, UclientReport},
};
use relay_userspace::config::XdpMode;

/// A relay with the TURN front as shipped (no lab overrides of its limits), the echo peer
/// running.
fn shipped(open_files_soft: Option<u64>) -> Scenario {
    let mut options = ScenarioOptions::new(PathBuf::from(common::relay_path()), XdpMode::Native);
    options.sessions = false;
    options.turn = true;
    options.turn_shipped_limits = true;
    options.open_files_soft = open_files_soft;
    let mut s = Scenario::start(options).unwrap();
    turn_clients::start_peer(&mut s.lab).unwrap();
    s
}

fn userspace(s: &Scenario) -> Vec<VerdictCounter> {
    std::thread::sleep(Duration::from_millis(1200)); // the daemon flushes once a second
    s.maps().unwrap().userspace_verdicts().unwrap()
}

fn assert_all_echoed(s: &Scenario, r: &anyhow::Result<UclientReport>, expected: u64, what: &str) {
    let r = r
        .as_ref()
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n--- relay ---\n{}", s.lab.log("relay")));
    assert!(
        r.sent == expected && r.received >= expected && r.lost == 0,
        "{what}: sent {}, received {}, lost {} (expected {expected})\n{}\n--- relay ---\n{}",
        r.sent,
        r.received,
        r.lost,
        r.output,
        s.lab.log("relay")
    );
}

/// Four TCP clients behind one NAT (then four TLS and four UDP ones) on the shipped limits:
/// streams are limited per connection, not by their shared address, so none is stranded
/// (before: the third connection's first Allocate was dropped for rate and never answered).
#[test]
fn several_tcp_tls_and_udp_clients_behind_one_nat_relay_everything() {
    require_root!();
    let s = shipped(None);
    let before = userspace(&s);
    for (what, args) in [
        (
            "4 TCP clients",
            vec!["-t", "-m", "4", "-n", "500", "-l", "400", "-c", "-X"],
        ),
        (
            "4 TLS clients",
            vec![
                "-t", "-S", "-p", "5349", "-m", "4", "-n", "200", "-l", "400", "-c", "-X",
            ],
        ),
        (
            "4 UDP clients",
            vec!["-m", "4", "-n", "200", "-l", "400", "-c", "-X"],
        ),
    ] {
        let messages: u64 = args[args.iter().position(|a| *a == "-n").unwrap() + 1]
            .parse()
            .unwrap();
        let r = turn_clients::uclient(&s.lab, Host::ClientA, &args, false);
        assert_all_echoed(&s, &r, 4 * messages, what);
    }
    let after = userspace(&s);
    let rate = Reason::DroppedTurnRequestRate as usize;
    assert_eq!(
        after[rate].packets - before[rate].packets,
        0,
        "requests dropped for rate from a handful of clients"
    );
}

/// The daemon is started with a soft limit of 1024 open files (systemd's default for a unit
/// without `LimitNOFILE`): it raises it to the hard limit and says so, so 700 clients with
/// their RTCP allocations (fourteen users of 50: 1 050 allocations at once, held for 10 s) all
/// relay. Before: 484 allocations, then every Allocate got 508 "no relayed port free" while
/// `socket()` failed with EMFILE.
#[test]
fn more_than_a_thousand_allocations_under_a_soft_limit_of_1024() {
    require_root!();
    let s = shipped(Some(1024));
    let log = s.lab.log("relay");
    assert!(
        log.contains("open files limit") && log.contains("soft 1024"),
        "the daemon does not say what it raised:\n{log}"
    );
    let pid = s.lab.pid("relay").unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(
        open_files[0], open_files[1],
        "soft limit not raised: {limits}"
    );
    // Fourteen REST users of 50 clients, two allocations each: the shipped quota is 100
    // allocations per user.
    let mut s = s;
    for i in 0..14 {
        let user = format!("crowd{i}");
        turn_clients::spawn_uclient(
            &mut s.lab,
            Host::ClientA,
            &format!("uclient-{i}"),
            &["-u", &user, "-m", "50", "-n", "100", "-z", "100", "-X"],
        )
        .unwrap();
    }
    // The daemon's descriptors while they run: more than the soft limit it started with.
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let mut peak = 0;
    let started = std::time::Instant::now();
    while (0..14).any(|i| s.lab.running(&format!("uclient-{i}")))
        && started.elapsed() < Duration::from_secs(120)
    {
        peak = peak.max(descriptors());
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..14 {
        let r = turn_clients::finish_uclient(
            &mut s.lab,
            &format!("uclient-{i}"),
            Duration::from_secs(120),
        );
        assert_all_echoed(
            &s,
            &r,
            5000,
            &format!("uclient {i}: 50 clients with RTCP allocations"),
        );
    }
    eprintln!("the daemon held up to {peak} descriptors");
    assert!(
        peak > 1024,
        "{peak} descriptors at most: the allocations did not overlap enough to prove anything"
    );
    let results = s
        .http_get(relay_lab::scenario::LAB_METRICS, "/metrics")
        .unwrap();
    assert!(
        !results.contains("error_508"),
        "capacity refusals:\n{}",
        results
            .lines()
            .filter(|l| l.contains("relay_turn_requests"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
