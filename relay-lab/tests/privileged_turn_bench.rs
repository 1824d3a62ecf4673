//! The TURN benchmark's harness in its quick mode (privileged): the relay's TURN front with XDP
//! native and off, and coturn, each relaying the same ChannelData workload through allocations
//! made with the real protocol; every mode must relay, and the CPU accounting must show which
//! path carried the traffic. Speeds are not asserted (see docs/benchmarks.md).

mod common;

use std::path::PathBuf;

use common::bench::check_pass;
use relay_lab::{
    throughput::report::Mode,
    turn_bench::{self, TurnBenchOptions},
};

#[test]
fn turn_harness_relays_through_both_modes_and_coturn_and_accounts_for_it() {
    require_root!();
    let options = TurnBenchOptions::quick(PathBuf::from(common::relay_path()));
    let r = turn_bench::run(options).unwrap();
    assert_eq!(r.measurements.len(), 3, "{:?}", r.measurements);
    for m in &r.measurements {
        check_pass(m.mode, &m.saturation);
        match m.mode {
            // The program carried it: the relay process saw (almost) none of it.
            Mode::TurnNative => {
                let ns = m.program_ns.expect("bpf_stats run time");
                assert!(ns > 0.0 && ns < 100_000.0, "{m:?}");
                assert!(
                    m.saturation.daemon_cpu_ns < m.saturation.relay_cpu_ns / 2,
                    "{m:?}"
                );
            }
            // A userspace server: its process's CPU time is the relay's.
            Mode::TurnOff | Mode::Coturn => {
                assert_eq!(m.program_ns, None);
                assert!(m.cpu_pass().daemon_cpu_ns > 0, "{m:?}");
            }
            other => panic!("not a TURN mode: {other:?}"),
        }
    }
    assert_eq!(r.ratios.len(), 1);
    assert!(r.ratios[0].native_vs_coturn_per_cpu > 0.0);
    assert!(r.coturn.contains("--relay-threads 1"), "{}", r.coturn);
    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "options",
        "coturn",
        "measurements",
        "summaries",
        "ratios",
        "targets",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
}

/// The stream benchmark's harness in its quick mode: both servers relay over TCP and TLS
/// through allocations made with the real protocol, every echo is counted once, and the
/// server's CPU time is read. Speeds and loss are not asserted beyond "it relays".
#[test]
fn turn_stream_harness_relays_over_tcp_and_tls_through_both_servers() {
    use relay_lab::{
        load::client::Transport,
        turn_stream_bench::{self, StreamBenchOptions, StreamServer},
    };
    require_root!();
    let options = StreamBenchOptions::quick(PathBuf::from(common::relay_path()));
    let r = turn_stream_bench::run(options).unwrap();
    assert_eq!(r.cells.len(), 2 * 2 * 2, "{:?}", r.cells);
    for server in [StreamServer::Relay, StreamServer::Coturn] {
        for transport in [Transport::Tcp, Transport::Tls] {
            let cells: Vec<_> = r
                .cells
                .iter()
                .filter(|c| c.server == server && c.transport == transport)
                .collect();
            assert_eq!(cells.len(), 2);
            for c in cells {
                assert!(
                    c.sent > 0 && c.echoed * 10 >= c.sent * 9 && c.echoed <= c.sent,
                    "{c:?}"
                );
                assert!(c.server_cpu_ns > 0, "{c:?}");
            }
        }
    }
    assert_eq!(r.summaries.len(), 4);
    assert_eq!(r.ratios.len(), 2);
    assert!(r.coturn.contains("--tls-listening-port"), "{}", r.coturn);
    let json = serde_json::to_value(&r).unwrap();
    for key in [
        "options",
        "coturn",
        "cells",
        "summaries",
        "ratios",
        "target",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
}
