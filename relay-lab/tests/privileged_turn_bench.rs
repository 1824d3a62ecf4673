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
