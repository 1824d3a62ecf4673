//! When a session ends.
//!
//! * Until both legs are bound, a session lives for its bind lifetime from allocation:
//!   credentials nobody uses must not hold a slot (Tailscale: 30 s).
//! * Once bound, each leg must show activity — a data packet it sent through either forwarder,
//!   or a bind refresh — at least once per idle lifetime. One silent leg ends the session: its
//!   client is gone, whatever the other side still sends (Tailscale: 5 min). The client sidecar
//!   refreshes every 25 s, so a live tunnel never expires, even with no data.

use std::time::Instant;

use super::session::{Session, SessionState};

/// Why a session expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Not both legs bound within the bind lifetime.
    BindTimeout,
    /// Leg `0` showed no activity for the idle lifetime.
    Idle(usize),
}

impl Expiry {
    /// Lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Expiry::BindTimeout => "bind_timeout",
            Expiry::Idle(_) => "idle",
        }
    }
}

/// Whether `session` has expired at `now`, given when each leg last sent data (through either
/// forwarder) as far as is known.
pub fn check(session: &Session, now: Instant, last_data: [Option<Instant>; 2]) -> Option<Expiry> {
    if session.state() != SessionState::Bound {
        // Measured from creation rather than as `created + bind_lifetime`: a lifetime too long
        // to add to an `Instant` (the configuration has no upper bound) must not panic.
        let age = now.saturating_duration_since(session.created);
        return (age >= session.bind_lifetime).then_some(Expiry::BindTimeout);
    }
    for (leg, state) in session.legs.iter().enumerate() {
        let activity = [state.last_bind, last_data[leg]]
            .into_iter()
            .flatten()
            .max();
        let idle =
            activity.is_none_or(|a| now.saturating_duration_since(a) >= session.idle_lifetime);
        if idle {
            return Some(Expiry::Idle(leg));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use relay_common::maps::SessionLimits;

    use super::*;
    use crate::control::session::LegState;

    const S: Duration = Duration::from_secs(1);

    fn session(t0: Instant) -> Session {
        Session {
            vni: 1,
            slot: 0,
            token: "t".into(),
            created: t0,
            created_unix_ms: 0,
            legs: [LegState::new([0; 32], None), LegState::new([1; 32], None)],
            bind_lifetime: 30 * S,
            idle_lifetime: 300 * S,
            idempotency_key: None,
            limits: SessionLimits::default(),
            kind: Default::default(),
        }
    }

    fn bind(s: &mut Session, leg: usize, at: Instant) {
        s.legs[leg].bound = Some("198.51.100.1:1".parse().unwrap());
        s.legs[leg].last_bind = Some(at);
    }

    #[test]
    fn unbound_and_half_bound_sessions_expire_after_the_bind_lifetime() {
        let t0 = Instant::now();
        let mut s = session(t0);
        assert_eq!(check(&s, t0 + 29 * S, [None; 2]), None);
        assert_eq!(check(&s, t0 + 30 * S, [None; 2]), Some(Expiry::BindTimeout));
        bind(&mut s, 0, t0 + 5 * S);
        assert_eq!(check(&s, t0 + 30 * S, [None; 2]), Some(Expiry::BindTimeout));
    }

    /// The configuration accepts any lifetime from 1 s up to what a `Duration` parsed from text
    /// holds (`10000000000000000000s`); one too large to add to an `Instant` is a deadline that
    /// never comes, not a panic in the expiry sweep.
    #[test]
    fn a_lifetime_beyond_the_clocks_range_never_expires() {
        let t0 = Instant::now();
        let mut s = session(t0);
        s.bind_lifetime = Duration::from_secs(10_000_000_000_000_000_000);
        assert_eq!(check(&s, t0 + 1000 * S, [None; 2]), None);
    }

    #[test]
    fn bound_sessions_live_while_both_legs_show_activity() {
        let t0 = Instant::now();
        let mut s = session(t0);
        bind(&mut s, 0, t0 + S);
        bind(&mut s, 1, t0 + 2 * S);
        // Long past the bind lifetime: bound sessions follow the idle rule.
        assert_eq!(check(&s, t0 + 100 * S, [None; 2]), None);
        assert_eq!(check(&s, t0 + 301 * S, [None; 2]), Some(Expiry::Idle(0)));
        // Data from both legs (kernel-forwarded traffic counts) keeps it alive.
        let data = [Some(t0 + 250 * S), Some(t0 + 260 * S)];
        assert_eq!(check(&s, t0 + 500 * S, data), None);
        // Leg b went silent: only a's data arrives.
        let data = [Some(t0 + 600 * S), Some(t0 + 260 * S)];
        assert_eq!(check(&s, t0 + 600 * S, data), Some(Expiry::Idle(1)));
        // A bind refresh from b is activity too.
        s.legs[1].last_bind = Some(t0 + 590 * S);
        assert_eq!(check(&s, t0 + 600 * S, data), None);
    }
}
