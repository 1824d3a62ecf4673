//! No amplification towards unverified sources: over UDP, what the server sends an address in
//! answer to unauthenticated requests never exceeds what unauthenticated requests from that
//! address brought (within [`CREDIT_WINDOW`]). Authenticated requests earn nothing (their
//! answers need no credit), so a spoofer posing as a victim makes the relay send the victim at
//! most the bytes the spoofer spent, plus whatever the victim's own unauthenticated requests
//! left unspent (normally nothing) — amplification ≤ 1, the property coturn's 401 lacked.
//!
//! Accounted per source rather than per message because a single message cannot be answered
//! within its own size: coturn's client opens with a 52-byte Allocate, and no 401 carrying a
//! realm and an unguessable nonce fits in 52 bytes. Such a request goes unanswered; its
//! retransmission (every STUN client retransmits, RFC 8489 §6.2.1) brings the credit to the
//! challenge's size, and the client gets its 401 one retransmission later. The same holds for a
//! bare 20-byte Binding request and its 32-byte answer.
//!
//! Memory is bounded: a fixed table of buckets indexed by a keyed hash of the address (an
//! attacker cannot aim collisions), each bucket remembering one address.

use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    time::{Duration, Instant},
};

/// How long received bytes stay as credit: long enough for a client's retransmissions, too
/// short for a spoofer to bank credit.
pub const CREDIT_WINDOW: Duration = Duration::from_secs(10);
/// Buckets in the table (a power of two).
const BUCKETS: usize = 16_384;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tag: u64,
    credit: u32,
    since: Option<Instant>,
}

/// Per-source byte credit.
pub struct AmplificationGuard {
    hasher: RandomState,
    buckets: Box<[Bucket]>,
}

impl Default for AmplificationGuard {
    fn default() -> Self {
        AmplificationGuard::new()
    }
}

impl AmplificationGuard {
    /// An empty table with a fresh random key.
    pub fn new() -> AmplificationGuard {
        AmplificationGuard {
            hasher: RandomState::new(),
            buckets: vec![Bucket::default(); BUCKETS].into_boxed_slice(),
        }
    }

    fn bucket(&mut self, source: IpAddr, now: Instant) -> &mut Bucket {
        let hash = self.hasher.hash_one(source);
        let bucket = &mut self.buckets[(hash as usize) & (BUCKETS - 1)];
        let stale = bucket
            .since
            .is_none_or(|t| now.saturating_duration_since(t) > CREDIT_WINDOW);
        if bucket.tag != hash || stale {
            *bucket = Bucket {
                tag: hash,
                credit: 0,
                since: Some(now),
            };
        }
        bucket
    }

    /// `len` bytes arrived from `source`.
    pub fn received(&mut self, source: IpAddr, len: usize, now: Instant) {
        let bucket = self.bucket(source, now);
        bucket.credit = bucket.credit.saturating_add(len as u32);
    }

    /// Whether `len` bytes may go to `source` now; if so they are spent.
    pub fn spend(&mut self, source: IpAddr, len: usize, now: Instant) -> bool {
        let bucket = self.bucket(source, now);
        if (bucket.credit as usize) < len {
            return false;
        }
        bucket.credit -= len as u32;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_at_most_what_it_sent() {
        let mut g = AmplificationGuard::new();
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
        let mut g = AmplificationGuard::new();
        let s: IpAddr = "2001:db8::9".parse().unwrap();
        let t = Instant::now();
        g.received(s, 1000, t);
        assert!(!g.spend(s, 10, t + CREDIT_WINDOW + Duration::from_millis(1)));
    }
}
