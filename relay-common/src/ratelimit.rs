//! Per-session rate limits: token buckets shared by the XDP program and the userspace forwarder.
//!
//! A bucket is stored as its *debt*: how far below full it is, so a zeroed slot (a new session)
//! is a full bucket. Amounts are scaled by the clock's ticks per second, so refilling is one
//! multiplication per packet and no division: each tick adds `rate` and each unit (packet or
//! byte) costs `ticks_per_sec`. The bucket holds [`BURST_MS`] of the rate (at least one packet of
//! any size), so short bursts pass and a sustained excess is dropped.
//!
//! The time of the bucket's last update is the leg's last-forwarded time, which the forwarders
//! record anyway; a dropped packet changes neither, so the next packet's refill is computed from
//! the same starting point.
//!
//! In the kernel the state lives in the per-CPU session statistics: each CPU enforces the limit
//! on the packets it receives. A NIC steers every packet of one flow (a leg's direction) to the
//! same receive queue, so in practice one CPU sees all of a direction's packets.

/// How much of the rate a full bucket holds, in milliseconds.
pub const BURST_MS: u64 = 100;

/// Gaps between packets longer than this are counted as this long.
const MAX_GAP_SECS: u64 = 128;

/// One direction's buckets: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Debts {
    /// Packet bucket debt (scaled).
    pub packets: u64,
    /// Byte bucket debt (scaled).
    pub bytes: u64,
}

/// Whether a packet costing `cost` units passes a bucket of `rate` units per second whose debt
/// was `debt` `elapsed` ticks ago; `Some(new debt)` when it does. `rate` 0 means unlimited.
/// Exact for `ticks_per_sec` up to 10 000 and any `u32` rate in kilobytes.
#[inline(always)]
pub fn take(debt: u64, elapsed: u64, ticks_per_sec: u64, rate: u64, cost: u64) -> Option<u64> {
    take_with_burst(debt, elapsed, ticks_per_sec, rate, cost, BURST_MS)
}

/// [`take`] with a bucket that holds `burst_ms` of the rate instead of [`BURST_MS`]: for
/// limits on things that legitimately come in bursts, such as API requests.
#[inline(always)]
pub fn take_with_burst(
    debt: u64,
    elapsed: u64,
    ticks_per_sec: u64,
    rate: u64,
    cost: u64,
    burst_ms: u64,
) -> Option<u64> {
    if rate == 0 {
        return Some(0);
    }
    // 128 s repay any debt (the largest: one 65 535-byte packet at the lowest byte rate, 1 kB/s,
    // is 66 s), so longer gaps need not be counted, and must not overflow the multiplication.
    let cap = ticks_per_sec * MAX_GAP_SECS;
    let elapsed = if elapsed > cap { cap } else { elapsed };
    let refill = elapsed * rate;
    let debt = debt.saturating_sub(refill);
    let cost = cost * ticks_per_sec;
    let burst = rate * ticks_per_sec * burst_ms / 1000;
    let capacity = if burst > cost { burst } else { cost };
    if debt + cost > capacity {
        None
    } else {
        Some(debt + cost)
    }
}

/// Applies a session's limits (`packets_per_sec`, `kbytes_per_sec`; 0 = unlimited) to a packet
/// of `len` bytes: `Some(new debts)` when it may be forwarded.
#[inline(always)]
pub fn admit(
    debts: Debts,
    elapsed: u64,
    ticks_per_sec: u64,
    packets_per_sec: u32,
    kbytes_per_sec: u32,
    len: u64,
) -> Option<Debts> {
    let packets = take(
        debts.packets,
        elapsed,
        ticks_per_sec,
        packets_per_sec as u64,
        1,
    )?;
    let bytes = take(
        debts.bytes,
        elapsed,
        ticks_per_sec,
        kbytes_per_sec as u64 * 1000,
        len,
    )?;
    Some(Debts { packets, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one packet of `len` every `gap` ticks for `ticks`; returns how many passed.
    fn run(pps: u32, kbps: u32, hz: u64, gap: u64, ticks: u64, len: u64) -> u64 {
        let mut debts = Debts::default();
        let mut last = 0u64;
        let mut passed = 0;
        let mut now = 0u64;
        while now < ticks {
            now += gap;
            if let Some(d) = admit(debts, now - last, hz, pps, kbps, len) {
                debts = d;
                last = now;
                passed += 1;
            }
        }
        passed
    }

    #[test]
    fn unlimited_passes_everything() {
        assert_eq!(run(0, 0, 250, 1, 10_000, 1500), 10_000);
    }

    #[test]
    fn sustained_packet_rate_is_capped_to_the_limit_plus_one_burst() {
        // 1 000 pps limit, offered 10 per tick at 1000 Hz (10 000 pps) for 10 s: modelled as
        // gap 0 bursts is awkward, so use a finer clock: 10 000 Hz, one packet per tick.
        let passed = run(1_000, 0, 10_000, 1, 100_000, 100);
        // 10 s × 1000 pps plus a 100 ms burst (100 packets).
        assert!((10_000..=10_101).contains(&passed), "{passed}");
    }

    #[test]
    fn byte_rate_is_capped() {
        // 1 000 kB/s = 1 MB/s; 1000-byte packets offered at 10 000 pps for 2 s.
        let passed = run(0, 1_000, 10_000, 1, 20_000, 1000);
        // 2 s × 1000 packets plus a 100 ms burst of 100 packets.
        assert!((2_000..=2_101).contains(&passed), "{passed}");
    }

    #[test]
    fn under_the_limit_nothing_is_dropped() {
        // 500 pps offered against 1000 pps, jiffies at 250 Hz (2 packets per tick).
        let mut debts = Debts::default();
        let mut last = 0;
        for i in 0..10_000u64 {
            let now = i / 2;
            debts = admit(debts, now - last, 250, 1000, 0, 1400).expect("under the limit");
            last = now;
        }
    }

    #[test]
    fn a_packet_larger_than_the_burst_still_passes_a_full_bucket() {
        // 1 kB/s: a 100 ms burst is 100 bytes, smaller than one 1400-byte packet.
        assert!(admit(Debts::default(), 0, 1000, 0, 1, 1400).is_some());
        let d = admit(Debts::default(), 0, 1000, 0, 1, 1400).unwrap();
        // ...but the next one waits until the debt is paid.
        assert!(admit(d, 10, 1000, 0, 1, 1400).is_none());
        assert!(admit(d, 1400, 1000, 0, 1, 1400).is_some());
    }

    #[test]
    fn a_longer_burst_holds_more_of_the_rate() {
        // 10 per second with a 1 s burst: 10 pass at once, the 11th waits 100 ms.
        let mut debt = 0;
        for _ in 0..10 {
            debt = take_with_burst(debt, 0, 1000, 10, 1, 1000).expect("within the burst");
        }
        assert!(take_with_burst(debt, 0, 1000, 10, 1, 1000).is_none());
        assert!(take_with_burst(debt, 99, 1000, 10, 1, 1000).is_none());
        assert!(take_with_burst(debt, 100, 1000, 10, 1, 1000).is_some());
    }

    #[test]
    fn huge_gaps_and_rates_do_not_overflow() {
        let d = Debts {
            packets: u64::MAX / 4,
            bytes: u64::MAX / 4,
        };
        assert!(admit(d, u64::MAX, 1000, u32::MAX, u32::MAX, 65_535).is_none());
        assert!(admit(Debts::default(), u64::MAX, 1000, u32::MAX, u32::MAX, 65_535).is_some());
    }
}
