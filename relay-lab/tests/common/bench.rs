//! Checks shared by the benchmark harness tests (throughput, TURN).

use relay_lab::throughput::report::{Mode, Pass};

/// A pass measured something real: load offered, packets relayed (never more than offered,
/// beyond the sink's batching slack), relay CPU time counted.
pub fn check_pass(mode: Mode, p: &Pass) {
    assert!(p.offered > 0, "{mode:?}: nothing offered");
    assert!(p.relayed > 0, "{mode:?}: nothing relayed");
    assert!(
        p.relayed <= p.offered + 64,
        "{mode:?}: more relayed than offered: {p:?}"
    );
    assert!(p.relay_cpu_ns > 0, "{mode:?}: no relay CPU time: {p:?}");
    assert!(p.seconds > 0.0);
}
