//! Requests per source address (bind handshakes, API requests): a fixed table of token buckets
//! indexed by a keyed hash of the source IP, so a flood (spoofed or not) costs bounded memory and
//! the work behind the limiter (MAC checks, token checks) bounded CPU. Sources that collide share
//! a bucket (the key is random per process, so nobody can aim a collision at someone else's
//! address); with the default table that needs thousands of active sources.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    time::Instant,
};

use relay_common::ratelimit;

use super::address_policy::normalise;

/// Buckets in the table (16 bytes each).
pub const SLOTS: usize = 16_384;

/// Per-source bind rate limiter.
pub struct SourceLimiter {
    hasher: RandomState,
    epoch: Instant,
    /// Messages per second per source; 0 = unlimited.
    rate: u32,
    /// How much of the rate a full bucket holds, in milliseconds.
    burst_ms: u64,
    /// Per slot: bucket debt and the millisecond time it was last updated.
    slots: Box<[(u64, u64)]>,
}

impl SourceLimiter {
    /// A limiter allowing `per_sec` messages per second per source (plus a 100 ms burst, at
    /// least one message).
    pub fn new(per_sec: u32, now: Instant) -> SourceLimiter {
        SourceLimiter::with_burst(per_sec, ratelimit::BURST_MS, now)
    }

    /// A limiter whose full bucket holds `burst_ms` of the rate (at least one message).
    pub fn with_burst(per_sec: u32, burst_ms: u64, now: Instant) -> SourceLimiter {
        SourceLimiter {
            hasher: RandomState::new(),
            epoch: now,
            rate: per_sec,
            burst_ms,
            slots: vec![(0, 0); SLOTS].into_boxed_slice(),
        }
    }

    /// Messages per second allowed per source (0 = unlimited).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Whether one more message from `source` may be handled now.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let slot = (self.hasher.hash_one(normalise(source)) as usize) % SLOTS;
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        let (debt, last) = self.slots[slot];
        let elapsed = ms.saturating_sub(last);
        match ratelimit::take_with_burst(debt, elapsed, 1000, self.rate.into(), 1, self.burst_ms) {
            Some(debt) => {
                self.slots[slot] = (debt, ms);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flooding_source_is_capped_and_others_are_not() {
        let t = Instant::now();
        let mut l = SourceLimiter::new(20, t);
        let flood: IpAddr = "198.51.100.7".parse().unwrap();
        let mut passed = 0;
        // 10 000 messages over one second.
        for i in 0..10_000u64 {
            if l.allow(flood, t + Duration::from_micros(i * 100)) {
                passed += 1;
            }
        }
        // 20/s plus a 100 ms burst (2).
        assert!((20..=23).contains(&passed), "{passed}");
        // Another source is unaffected (unless it collides: try a few).
        let others = (1..=4)
            .map(|i| format!("203.0.113.{i}").parse::<IpAddr>().unwrap())
            .filter(|ip| l.allow(*ip, t + Duration::from_secs(1)))
            .count();
        assert!(others >= 3, "{others}");
    }

    #[test]
    fn ipv4_mapped_forms_share_the_ipv4_bucket() {
        let t = Instant::now();
        let mut l = SourceLimiter::new(1, t);
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(l.allow(v4, t));
        assert!(
            !l.allow(mapped, t),
            "the mapped form must not get its own bucket"
        );
    }

    #[test]
    fn unlimited_allows_everything_and_refills_over_time() {
        let t = Instant::now();
        let mut l = SourceLimiter::new(0, t);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..1000).all(|_| l.allow(ip, t)));
        let mut l = SourceLimiter::new(10, t);
        while l.allow(ip, t) {}
        assert!(l.allow(ip, t + Duration::from_millis(150)));
    }
}
