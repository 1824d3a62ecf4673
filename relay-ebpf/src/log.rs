//! Rare, operator-relevant events logged through aya-log, at most once per [`LOG_INTERVAL_NS`]
//! per event and CPU: a relay that falls back to the stack for every packet must say why, but
//! logging must never be on the per-packet path.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray, programs::XdpContext,
};
use aya_log_ebpf::warn;
use relay_common::verdict::Reason;

/// Shortest time between two log lines of one event on one CPU.
const LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// Per event: when this CPU last logged it.
#[map(name = "log_gate")]
static LOG_GATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Logs `reason` if it is one operators must hear about, and this CPU has not logged it lately.
/// Only reached for packets that already left the forwarding path.
#[inline(always)]
pub fn note(ctx: &XdpContext, reason: Reason) {
    if !matches!(
        reason,
        Reason::PassedFibForwardingDisabled
            | Reason::PassedFibFailed
            | Reason::PassedAdjustFailed
            | Reason::PassedRedirectFailed
    ) {
        return;
    }
    let Some(last) = LOG_GATE.get_ptr_mut(reason as u32) else {
        return;
    };
    // SAFETY: plain helper call; per-CPU value with no other writer on this CPU.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    unsafe {
        if *last != 0 && now < *last + LOG_INTERVAL_NS {
            return;
        }
        *last = now;
    }
    let hint = match reason {
        Reason::PassedFibForwardingDisabled => {
            "enable IP forwarding on the relay's interfaces (xdp.manage_forwarding)"
        }
        Reason::PassedAdjustFailed => {
            "the driver cannot resize frames: cross-family sessions go through userspace"
        }
        Reason::PassedRedirectFailed => "the egress interface is not in the redirect map",
        _ => "no usable route to a leg",
    };
    warn!(
        ctx,
        "fast path handing packets to the stack ({}): {}",
        reason.name(),
        hint
    );
}
