//! Verdict and per-session counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use relay_common::verdict::Reason;

use crate::maps::{SESSION_STATS, VERDICTS};

/// Counts one packet of `len` bytes under `reason`.
#[inline(always)]
pub fn count_verdict(reason: Reason, len: usize) {
    if let Some(counter) = VERDICTS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, no other writer on this CPU while we run.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len as u64;
        }
    }
}

/// Counts a forwarded packet of `payload_len` UDP payload bytes sent by leg `from` of the
/// session in `slot`, and stamps its last-seen time (which keeps the session from expiring).
#[inline(always)]
pub fn count_session(slot: u32, from: usize, payload_len: usize) {
    if let Some(stats) = SESSION_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU value; `from` is 0 or 1 (a `Direction` field).
        unsafe {
            let stats = &mut *stats;
            let i = from & 1;
            stats.packets[i] += 1;
            stats.bytes[i] += payload_len as u64;
            stats.last_seen_ns = bpf_ktime_get_ns();
        }
    }
}
