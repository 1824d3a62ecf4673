//! The relay's cookie secrets: a current and a previous one, rotated on a schedule, so a cookie
//! stays valid for between one and two rotation periods and no per-request state is kept.
//! Stateless challenges let the relay answer any number of bind requests (a client may try
//! several relay addresses at once) without memory an attacker could exhaust.

use std::time::{Duration, Instant};

use rand::RngCore;
use relay_common::geneve::control::{COOKIE_LEN, KEY_LEN};

use super::crypto::{CookieInput, cookie, verify_cookie};

/// Current and previous cookie secret.
pub struct CookieJar {
    current: [u8; KEY_LEN],
    previous: [u8; KEY_LEN],
    rotated_at: Instant,
    rotation: Duration,
}

impl CookieJar {
    /// A jar with fresh random secrets, rotating every `rotation`.
    pub fn new(rotation: Duration, now: Instant, rng: &mut impl RngCore) -> CookieJar {
        let mut current = [0u8; KEY_LEN];
        let mut previous = [0u8; KEY_LEN];
        rng.fill_bytes(&mut current);
        rng.fill_bytes(&mut previous);
        CookieJar {
            current,
            previous,
            rotated_at: now,
            rotation,
        }
    }

    /// Rotates if a period has passed (twice or more: both secrets are replaced, since a cookie
    /// from that long ago must not verify).
    pub fn rotate_if_due(&mut self, now: Instant, rng: &mut impl RngCore) {
        let elapsed = now.saturating_duration_since(self.rotated_at);
        if elapsed < self.rotation {
            return;
        }
        if elapsed >= self.rotation * 2 {
            rng.fill_bytes(&mut self.previous);
        } else {
            self.previous = self.current;
        }
        rng.fill_bytes(&mut self.current);
        self.rotated_at = now;
    }

    /// The cookie for `input` under the current secret.
    pub fn issue(&self, input: &CookieInput) -> [u8; COOKIE_LEN] {
        cookie(&self.current, input)
    }

    /// Whether `candidate` is a cookie for `input` under the current or the previous secret.
    pub fn verify(&self, input: &CookieInput, candidate: &[u8]) -> bool {
        // Both checks always run: timing does not tell which secret matched.
        let current = verify_cookie(&self.current, input, candidate);
        let previous = verify_cookie(&self.previous, input, candidate);
        current | previous
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    const INPUT: CookieInput = CookieInput {
        vni: 1,
        leg: 0,
        generation: 1,
        addr: [9; 16],
        port: 1,
    };

    #[test]
    fn cookies_survive_one_rotation_but_not_two() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let period = Duration::from_secs(120);
        let mut jar = CookieJar::new(period, t0, &mut rng);
        let c = jar.issue(&INPUT);
        jar.rotate_if_due(t0 + Duration::from_secs(119), &mut rng);
        assert!(jar.verify(&INPUT, &c), "before the first rotation");
        jar.rotate_if_due(t0 + period, &mut rng);
        assert!(jar.verify(&INPUT, &c), "previous secret still accepted");
        jar.rotate_if_due(t0 + period * 2, &mut rng);
        assert!(!jar.verify(&INPUT, &c), "two rotations later");
    }

    #[test]
    fn a_long_pause_replaces_both_secrets() {
        let mut rng = StdRng::seed_from_u64(2);
        let t0 = Instant::now();
        let period = Duration::from_secs(120);
        let mut jar = CookieJar::new(period, t0, &mut rng);
        let c = jar.issue(&INPUT);
        // No packets for ten minutes, then one rotation check.
        jar.rotate_if_due(t0 + Duration::from_secs(600), &mut rng);
        assert!(!jar.verify(&INPUT, &c));
    }
}
