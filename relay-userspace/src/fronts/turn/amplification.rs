//! Bounded amplification towards unverified sources. Over UDP a request's source address may be
//! spoofed, so the answers to requests that have not authenticated (the 401 challenge, Binding,
//! errors) could be aimed at a victim. What the server sends an address in such answers is
//! bounded by:
//!
//! 1. **credit**: the bytes of the unauthenticated requests that came from that address,
//!    lasting [`CREDIT_WINDOW`] after the last of them — amplification ≤ 1;
//! 2. beyond it, a small **allowance** per address ([`Allowance::per_address`] bytes per
//!    [`CREDIT_WINDOW`]), taken from a **global budget** ([`Allowance::global_per_sec`] bytes a
//!    second, all addresses together).
//!
//! Why both. A single message cannot be answered within its own size: a browser's first
//! Allocate is 28 bytes (coturn's client's 52), and no 401 carrying a realm and an unguessable
//! nonce fits. With credit alone, such a request went unanswered and a client got its 401 only
//! after one to three retransmissions — 0.5 to 3.5 s of call set-up — and behind a NAT, where
//! every user's requests share one address's credit, the load harness saw the last clients of a
//! crowd wait 30 s and some give up after seven requests. The allowance answers real clients at
//! once. What it gives a spoofer is bounded twice: one victim receives at most
//! `per_address` bytes per window beyond what was sent from its address (64 KiB per 10 s:
//! 52 kbit/s), and all victims together at most `global_per_sec` (256 KiB/s) — against coturn,
//! which answers every request in full, without any bound. When the global budget is spent (an
//! attack in progress), the rule falls back to credit alone: real clients wait a retransmission,
//! as before. Authenticated requests earn no credit and spend none (their answers need none), so
//! a spoofer cannot spend what a busy client sent.
//!
//! Memory is bounded: a fixed table of buckets indexed by a keyed hash of the address (an
//! attacker cannot aim collisions), each bucket remembering one address.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    time::{Duration, Instant},
};

/// How long credit lasts after the last bytes that earned it (longer than the gaps between a
/// client's retransmissions, so the clients behind one NAT, whose requests share the address's
/// credit, are answered in turn), and the period of the per-address allowance.
pub const CREDIT_WINDOW: Duration = Duration::from_secs(10);
/// The most credit an address holds. Credit only buys back bytes that address sent, so this
/// bounds how much can be banked for later, not the amplification.
pub const MAX_CREDIT: u32 = 64 * 1024;
/// Buckets in the table (a power of two).
const BUCKETS: usize = 16_384;

/// What may be answered beyond an address's credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Bytes per [`CREDIT_WINDOW`] one address may receive beyond its credit.
    pub per_address: u32,
    /// Bytes per second all addresses together may receive beyond their credit.
    pub global_per_sec: u32,
}

impl Allowance {
    /// Credit alone: amplification ≤ 1 strictly.
    pub const NONE: Allowance = Allowance {
        per_address: 0,
        global_per_sec: 0,
    };

    /// The relay's: a crowd of first requests behind one NAT (650 challenges of ~100 bytes per
    /// 10 s: the load harness's 2 000 clients over UDP, TCP and TLS in 10 s; 16 KiB made the
    /// last 1 % wait 7.5 s) is answered at once; a spoofer gets 52 kbit/s per victim, 2 Mbit/s
    /// in all.
    pub const DEFAULT: Allowance = Allowance {
        per_address: 64 * 1024,
        global_per_sec: 256 * 1024,
    };
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tag: u64,
    credit: u32,
    /// When bytes last arrived.
    last: Option<Instant>,
    /// Allowance used in the current window, and when that window began.
    granted: u32,
    granted_since: Option<Instant>,
}

/// Per-source byte credit, and the allowance beyond it.
pub struct AmplificationGuard {
    hasher: RandomState,
    buckets: Box<[Bucket]>,
    allowance: Allowance,
    /// The global budget: bytes available and when it was last refilled.
    global: (u64, Option<Instant>),
}

impl Default for AmplificationGuard {
    fn default() -> Self {
        AmplificationGuard::new(Allowance::DEFAULT)
    }
}

impl AmplificationGuard {
    /// An empty table with a fresh random key.
    pub fn new(allowance: Allowance) -> AmplificationGuard {
        AmplificationGuard {
            hasher: RandomState::new(),
            buckets: vec![Bucket::default(); BUCKETS].into_boxed_slice(),
            allowance,
            global: (u64::from(allowance.global_per_sec), None),
        }
    }

    fn bucket(&mut self, source: IpAddr, now: Instant) -> &mut Bucket {
        let hash = self.hasher.hash_one(source);
        let bucket = &mut self.buckets[(hash as usize) & (BUCKETS - 1)];
        if bucket.tag != hash {
            *bucket = Bucket {
                tag: hash,
                ..Bucket::default()
            };
        }
        let stale =
            |t: Option<Instant>| t.is_none_or(|t| now.saturating_duration_since(t) > CREDIT_WINDOW);
        if stale(bucket.last) {
            bucket.credit = 0;
        }
        if stale(bucket.granted_since) {
            (bucket.granted, bucket.granted_since) = (0, Some(now));
        }
        bucket
    }

    /// `len` bytes of unauthenticated requests arrived from `source`.
    pub fn received(&mut self, source: IpAddr, len: usize, now: Instant) {
        let bucket = self.bucket(source, now);
        bucket.credit = bucket.credit.saturating_add(len as u32).min(MAX_CREDIT);
        bucket.last = Some(now);
    }

    /// Takes `len` bytes from the global budget (refilled at its rate, holding one second's
    /// worth).
    fn take_global(&mut self, len: u32, now: Instant) -> bool {
        let rate = u64::from(self.allowance.global_per_sec);
        let (available, since) = self.global;
        let refill = since.map_or(0, |t| {
            (now.saturating_duration_since(t).as_micros() as u64).saturating_mul(rate) / 1_000_000
        });
        let available = (available + refill).min(rate);
        self.global = (available, Some(now));
        if available < u64::from(len) {
            return false;
        }
        self.global.0 -= u64::from(len);
        true
    }

    /// Whether `len` bytes may go to `source` now; if so they are spent (from its credit, else
    /// from the allowance).
    pub fn spend(&mut self, source: IpAddr, len: usize, now: Instant) -> bool {
        let len = len as u32;
        let per_address = self.allowance.per_address;
        let bucket = self.bucket(source, now);
        if bucket.credit >= len {
            bucket.credit -= len;
            return true;
        }
        if bucket.granted.saturating_add(len) > per_address {
            return false;
        }
        if !self.take_global(len, now) {
            return false;
        }
        let bucket = self.bucket(source, now);
        bucket.granted += len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_a_source_gets_at_most_what_it_sent() {
        let mut g = AmplificationGuard::new(Allowance::NONE);
        let victim: IpAddr = "198.51.100.9".parse().unwrap();
        let t = Instant::now();
        g.received(victim, 52, t);
        assert!(
            !g.spend(victim, 84, t),
            "a 52-byte request cannot buy 84 bytes"
        );
        g.received(victim, 52, t + Duration::from_millis(500));
        assert!(g.spend(victim, 84, t + Duration::from_millis(500)));
        // What is left: 20 bytes.
        assert!(!g.spend(victim, 21, t + Duration::from_millis(501)));
        assert!(g.spend(victim, 20, t + Duration::from_millis(501)));
        // Another address has its own credit.
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(!g.spend(other, 1, t));
    }

    #[test]
    fn credit_does_not_outlive_the_window() {
        let mut g = AmplificationGuard::new(Allowance::NONE);
        let s: IpAddr = "2001:db8::9".parse().unwrap();
        let t = Instant::now();
        g.received(s, 1000, t);
        assert!(!g.spend(s, 10, t + CREDIT_WINDOW + Duration::from_millis(1)));
    }

    /// Behind a NAT, requests keep arriving from the address: the credit lasts while they do.
    #[test]
    fn credit_lasts_while_requests_keep_coming_and_is_capped() {
        let mut g = AmplificationGuard::new(Allowance::NONE);
        let nat: IpAddr = "198.51.100.2".parse().unwrap();
        let t = Instant::now();
        for i in 0..30 {
            g.received(nat, 30, t + Duration::from_secs(i));
        }
        assert!(g.spend(nat, 800, t + Duration::from_secs(35)));
        assert!(
            !g.spend(nat, 200, t + Duration::from_secs(35)),
            "900 in, 800 out"
        );
        for _ in 0..10_000 {
            g.received(nat, 1000, t + Duration::from_secs(36));
        }
        assert!(!g.spend(nat, MAX_CREDIT as usize + 1, t + Duration::from_secs(36)));
    }

    /// The allowance answers a first request at once, and bounds what a spoofer buys: per
    /// victim per window, and in all per second.
    #[test]
    fn the_allowance_is_bounded_per_address_and_in_all() {
        let allowance = Allowance {
            per_address: 1000,
            global_per_sec: 5000,
        };
        let mut g = AmplificationGuard::new(allowance);
        let t = Instant::now();
        let victim: IpAddr = "198.51.100.9".parse().unwrap();
        // A 28-byte request, a 100-byte challenge: answered at once.
        g.received(victim, 28, t);
        assert!(g.spend(victim, 100, t));
        // One victim: at most its allowance per window beyond what was sent from it.
        let mut sent = 28;
        let mut answered = 100;
        for _ in 0..100 {
            g.received(victim, 28, t);
            sent += 28;
            if g.spend(victim, 100, t) {
                answered += 100;
            }
        }
        assert!(answered <= sent + 1000, "{answered} for {sent}");
        // A new window: the allowance again.
        assert!(g.spend(victim, 100, t + CREDIT_WINDOW + Duration::from_millis(1)));
        // Many victims: at most the global budget per second in all.
        let mut granted = 0;
        for i in 0..1000u32 {
            let ip: IpAddr = format!("203.0.113.{}", i % 250).parse().unwrap();
            let ip = if i < 250 {
                ip
            } else {
                IpAddr::from([10, 0, (i >> 8) as u8, i as u8])
            };
            if g.spend(ip, 100, t + Duration::from_secs(20)) {
                granted += 100;
            }
        }
        assert!(granted <= 5000, "{granted}");
        assert!(granted > 0);
        // The budget refills at its rate.
        assert!(g.spend(
            "192.0.2.1".parse().unwrap(),
            100,
            t + Duration::from_secs(21)
        ));
    }
}
