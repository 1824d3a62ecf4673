//! The load harness's smoke run (privileged): a small version of every part of
//! `cargo xtask bench --only load` — a crowd behind one NAT against the relay and coturn, churn,
//! floods, the maxima — checking that the harness works and that nothing was lost. The numbers
//! themselves are benchmarks (docs/benchmarks.md), never asserted here.

mod common;

use relay_lab::load::{self, LoadOptions};

#[test]
fn every_part_of_the_load_harness_runs_and_loses_nothing() {
    require_root!();
    let r = load::run(LoadOptions::quick(common::relay_path().into())).unwrap();
    assert_eq!(r.crowd.len(), 2, "the relay and coturn");
    for c in &r.crowd {
        assert_eq!(
            (c.succeeded, c.echoed),
            (c.clients, c.sent),
            "{}: {:?}",
            c.server,
            c.failures
        );
        assert!(c.sent > 0 && c.first_byte.count == c.clients, "{c:?}");
        assert!(c.descriptors_per_allocation > 0.0, "{c:?}");
    }
    let churn = r.churn.as_ref().unwrap();
    assert_eq!(churn.failures, 0, "{churn:?}");
    assert!(churn.sessions_created > 0 && churn.pairs_created > 0 && churn.allocations_done > 0);
    assert_eq!(r.floods.len(), 4);
    for f in &r.floods {
        assert_eq!(
            f.held + f.refused,
            f.options.idle_tcp + f.options.tls_handshakes,
            "{f:?}"
        );
        assert_eq!(f.legit_succeeded, f.legit_clients, "{f:?}");
    }
    let m = r.maxima.as_ref().unwrap();
    for item in [&m.sessions, &m.pairs, &m.allocations] {
        assert_eq!(item.held, item.asked, "{m:?}");
    }
    assert!(m.descriptors > 0 && m.map_mib > 0.0, "{m:?}");
}
