//! The userspace forwarder's counters: per verdict reason, and per session slot (packets and
//! bytes per sending leg, and when each leg last sent). Workers add to them with relaxed atomics;
//! the daemon copies them into the pinned `user_verdicts` / `user_stats` maps so the CLI sees
//! both paths without asking the daemon.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use relay_common::{
    maps::SessionLimits,
    ratelimit::{self, Debts},
    verdict::{Reason, VerdictCounter},
};

/// One session slot's counters.
#[derive(Default)]
pub struct SlotCounters {
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    /// Milliseconds since [`UserCounters::epoch`] + 1 of each leg's last forwarded packet
    /// (0 = never).
    last_seen: [AtomicU64; 2],
    /// Rate-limit buckets per sending leg; their time is `last_seen` (in milliseconds).
    debts: Mutex<[Debts; 2]>,
}

/// A snapshot of one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Packets per sending leg.
    pub packets: [u64; 2],
    /// Payload bytes per sending leg.
    pub bytes: [u64; 2],
    /// When each leg last sent, if ever.
    pub last_seen: [Option<Instant>; 2],
}

/// Every counter of the userspace forwarder.
pub struct UserCounters {
    epoch: Instant,
    verdicts: Vec<[AtomicU64; 2]>,
    slots: Box<[SlotCounters]>,
}

/// Verdict counts a worker accumulates over one batch before publishing them.
#[derive(Clone)]
pub struct LocalVerdicts(Vec<VerdictCounter>);

impl Default for LocalVerdicts {
    fn default() -> Self {
        LocalVerdicts(vec![VerdictCounter::default(); Reason::COUNT as usize])
    }
}

impl LocalVerdicts {
    /// Counts one datagram of `len` bytes.
    pub fn add(&mut self, reason: Reason, len: usize) {
        let c = &mut self.0[reason as usize];
        c.packets += 1;
        c.bytes += len as u64;
    }
}

impl UserCounters {
    /// Counters for `slots` session slots.
    pub fn new(slots: u32) -> UserCounters {
        UserCounters {
            epoch: Instant::now(),
            verdicts: (0..Reason::COUNT).map(|_| Default::default()).collect(),
            slots: (0..slots).map(|_| SlotCounters::default()).collect(),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Counts a forwarded packet of `len` payload bytes from leg `from` of the session in `slot`.
    pub fn forwarded(&self, slot: u32, from: usize, len: usize, at: Instant) {
        if let Some(s) = self.slots.get(slot as usize) {
            let leg = from & 1;
            s.packets[leg].fetch_add(1, Relaxed);
            s.bytes[leg].fetch_add(len as u64, Relaxed);
            s.last_seen[leg].fetch_max(self.stamp(at), Relaxed);
        }
    }

    /// Applies the session's rate limits to a packet of `len` payload bytes from leg `from`
    /// (the same buckets as the XDP program, on a millisecond clock): whether it may be
    /// forwarded. The caller then counts it with [`UserCounters::forwarded`], which moves the
    /// buckets' time.
    pub fn admit(
        &self,
        slot: u32,
        from: usize,
        limits: &SessionLimits,
        len: usize,
        at: Instant,
    ) -> bool {
        if limits.packets_per_sec == 0 && limits.kbytes_per_sec == 0 {
            return true;
        }
        let Some(s) = self.slots.get(slot as usize) else {
            return true;
        };
        let leg = from & 1;
        let mut debts = s.debts.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = self
            .stamp(at)
            .saturating_sub(s.last_seen[leg].load(Relaxed));
        match ratelimit::admit(
            debts[leg],
            elapsed,
            1000,
            limits.packets_per_sec,
            limits.kbytes_per_sec,
            len as u64,
        ) {
            Some(d) => {
                debts[leg] = d;
                // Stamp now, under the lock, so a concurrent worker refills from here.
                s.last_seen[leg].fetch_max(self.stamp(at), Relaxed);
                true
            }
            None => false,
        }
    }

    /// Publishes and clears a worker's batch of verdict counts.
    pub fn publish(&self, local: &mut LocalVerdicts) {
        for (shared, mine) in self.verdicts.iter().zip(local.0.iter_mut()) {
            if mine.packets > 0 {
                shared[0].fetch_add(mine.packets, Relaxed);
                shared[1].fetch_add(mine.bytes, Relaxed);
                *mine = VerdictCounter::default();
            }
        }
    }

    /// Verdict counters, one per reason in discriminant order.
    pub fn verdicts(&self) -> Vec<VerdictCounter> {
        self.verdicts
            .iter()
            .map(|[p, b]| VerdictCounter {
                packets: p.load(Relaxed),
                bytes: b.load(Relaxed),
            })
            .collect()
    }

    /// A slot's counters.
    pub fn slot(&self, slot: u32) -> SlotSnapshot {
        let Some(s) = self.slots.get(slot as usize) else {
            return SlotSnapshot::default();
        };
        let at = |v: u64| (v > 0).then(|| self.epoch + Duration::from_millis(v - 1));
        SlotSnapshot {
            packets: [0, 1].map(|l| s.packets[l].load(Relaxed)),
            bytes: [0, 1].map(|l| s.bytes[l].load(Relaxed)),
            last_seen: [0, 1].map(|l| at(s.last_seen[l].load(Relaxed))),
        }
    }

    /// Zeroes a slot before a new session uses it.
    pub fn reset(&self, slot: u32) {
        if let Some(s) = self.slots.get(slot as usize) {
            for l in 0..2 {
                s.packets[l].store(0, Relaxed);
                s.bytes[l].store(0, Relaxed);
                s.last_seen[l].store(0, Relaxed);
            }
            *s.debts.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
        }
    }

    /// Restores a slot's counts (a restarted daemon adopting a session's counters).
    pub fn restore(&self, slot: u32, packets: [u64; 2], bytes: [u64; 2]) {
        if let Some(s) = self.slots.get(slot as usize) {
            for l in 0..2 {
                s.packets[l].store(packets[l], Relaxed);
                s.bytes[l].store(bytes[l], Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_leg_and_reset() {
        let c = UserCounters::new(4);
        let t = Instant::now() + Duration::from_millis(5);
        c.forwarded(2, 1, 100, t);
        c.forwarded(2, 1, 50, t);
        c.forwarded(2, 0, 10, t);
        c.forwarded(99, 0, 10, t); // out of range: ignored
        let s = c.slot(2);
        assert_eq!((s.packets, s.bytes), ([1, 2], [10, 150]));
        assert!(s.last_seen[1].unwrap() >= t - Duration::from_millis(1));
        c.reset(2);
        assert_eq!(c.slot(2), SlotSnapshot::default());
    }

    #[test]
    fn rate_limits_drop_the_excess_and_reset_with_the_slot() {
        let c = UserCounters::new(2);
        let limits = SessionLimits {
            packets_per_sec: 100,
            kbytes_per_sec: 0,
        };
        let t = Instant::now();
        let mut passed = 0;
        for i in 0..1000u64 {
            // 1000 packets over 1 s against 100 pps.
            let at = t + Duration::from_millis(i);
            if c.admit(1, 0, &limits, 100, at) {
                c.forwarded(1, 0, 100, at);
                passed += 1;
            }
        }
        // 1 s × 100 pps plus a 100 ms burst (10 packets).
        assert!((100..=111).contains(&passed), "{passed}");
        // The other leg has its own buckets; unlimited sessions are never limited.
        assert!(c.admit(1, 1, &limits, 100, t + Duration::from_millis(999)));
        assert!(c.admit(0, 0, &SessionLimits::default(), 100, t));
        c.reset(1);
        assert!(c.admit(1, 0, &limits, 100, t + Duration::from_millis(999)));
    }

    #[test]
    fn local_verdicts_publish_once() {
        let c = UserCounters::new(1);
        let mut local = LocalVerdicts::default();
        local.add(Reason::ForwardedV4, 100);
        local.add(Reason::ForwardedV4, 20);
        local.add(Reason::DroppedUnknownVni, 9);
        c.publish(&mut local);
        c.publish(&mut local);
        let v = c.verdicts();
        assert_eq!(
            v[Reason::ForwardedV4 as usize],
            VerdictCounter {
                packets: 2,
                bytes: 120
            }
        );
        assert_eq!(v[Reason::DroppedUnknownVni as usize].packets, 1);
    }
}
