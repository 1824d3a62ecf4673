//! Verdict and per-session counters.

use aya_ebpf::{helpers::bpf_jiffies64, maps::PerCpuArray};
use relay_common::{
    maps::{RelayConfig, SessionLimits, SessionStats},
    ratelimit,
    verdict::Reason,
};

use crate::maps::VERDICTS;

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

/// The kernel's jiffies: plenty of resolution for idle expiry and cache lifetimes, and a few
/// nanoseconds to read where even the coarse monotonic clock costs ~30 (measured: see
/// docs/benchmarks.md).
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_jiffies64() }
}

/// Counts a forwarded packet of `payload_len` bytes sent by side `from` of the session or
/// allocation in `slot` of `stats`, and stamps its last-seen time `now` (which keeps a session
/// alive; TURN data refreshes nothing, its stamp is for the CLI).
#[inline(always)]
pub fn count_forwarded(
    stats: &PerCpuArray<SessionStats>,
    slot: u32,
    from: usize,
    payload_len: usize,
    now: u64,
) {
    if let Some(stats) = stats.get_ptr_mut(slot) {
        // SAFETY: per-CPU value; `from` is 0 or 1 (a `Direction` field).
        unsafe {
            let stats = &mut *stats;
            let i = from & 1;
            stats.packets[i] += 1;
            stats.bytes[i] += payload_len as u64;
            stats.last_seen[i] = now;
        }
    }
}

/// Applies the rate limits of `slot` in `stats` to a packet of `payload_len` bytes from side
/// `from`: whether it may be forwarded. Updates the buckets only when it may (the caller then
/// stamps the side's last-seen time, which is also the buckets' time).
#[inline(always)]
pub fn admit(
    cfg: &RelayConfig,
    stats: &PerCpuArray<SessionStats>,
    slot: u32,
    limits: &SessionLimits,
    from: usize,
    payload_len: usize,
    now: u64,
) -> bool {
    if limits.packets_per_sec == 0 && limits.kbytes_per_sec == 0 {
        return true;
    }
    if cfg.jiffies_per_sec == 0 {
        return true;
    }
    let Some(stats) = stats.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: per-CPU value; `from` is 0 or 1.
    let stats = unsafe { &mut *stats };
    let i = from & 1;
    match ratelimit::admit(
        stats.debts[i],
        now.wrapping_sub(stats.last_seen[i]),
        cfg.jiffies_per_sec as u64,
        limits.packets_per_sec,
        limits.kbytes_per_sec,
        payload_len as u64,
    ) {
        Some(debts) => {
            stats.debts[i] = debts;
            true
        }
        None => false,
    }
}
