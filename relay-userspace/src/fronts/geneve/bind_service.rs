//! The bind handshake at work: the sans-IO handshake ([`super::bind`]) with the state it needs
//! between datagrams (the rotating cookie secret, per-source limits) and its effect (a bound or
//! moved leg published through the shared [`Plane`]).

use std::{collections::HashMap, net::SocketAddr, time::Duration, time::Instant};

use rand::{SeedableRng, rngs::StdRng};
use relay_common::geneve::control::CONTROL_LEN;
use tracing::{debug, info, warn};

use super::{
    bind::{self, BindOutcome},
    cookie_jar::CookieJar,
};
use crate::{
    control::{plane::Plane, source_limit::SourceLimiter, table::BindChange},
    logging::{THROTTLE_EVERY, Throttle},
};

/// A message over its source's rate: dropped before any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("over sessions.binds_per_sec_per_source")]
pub struct RateLimited;

static BIND_RATE: Throttle = Throttle::new(THROTTLE_EVERY);

/// The relay's side of every bind: one per daemon, behind a mutex (taken before the plane's).
pub struct BindService {
    jar: CookieJar,
    sources: SourceLimiter,
    rng: StdRng,
    /// Bind-handshake results by outcome name.
    pub stats: HashMap<&'static str, u64>,
}

impl BindService {
    /// A service whose cookie secret rotates every `cookie_rotation`, answering at most
    /// `binds_per_sec` messages per second per source address (0: unlimited).
    pub fn new(cookie_rotation: Duration, binds_per_sec: u32) -> BindService {
        let mut rng = StdRng::from_os_rng();
        let now = Instant::now();
        BindService {
            jar: CookieJar::new(cookie_rotation, now, &mut rng),
            sources: SourceLimiter::new(binds_per_sec, now),
            rng,
            stats: HashMap::new(),
        }
    }

    /// Handles a bind-handshake datagram from `src`; returns the reply to send back, if any,
    /// or `Err(RateLimited)` when `src` is over `sessions.binds_per_sec_per_source`.
    pub fn handle(
        &mut self,
        plane: &mut Plane,
        datagram: &[u8],
        src: SocketAddr,
        now: Instant,
    ) -> Result<Option<[u8; CONTROL_LEN]>, RateLimited> {
        if !self.sources.allow(src.ip(), now) {
            // Before any MAC or cookie work: a flood costs a hash and a table slot.
            *self.stats.entry("rate_limited").or_default() += 1;
            if let Some(held) = BIND_RATE.allow(now) {
                warn!(
                    source = %src.ip(),
                    rate = self.sources.rate(),
                    held,
                    "bind-handshake messages beyond sessions.binds_per_sec_per_source dropped \
                     (clients retry; raise the key if many clients share this address)"
                );
            }
            return Err(RateLimited);
        }
        self.jar.rotate_if_due(now, &mut self.rng);
        let (table, policy) = plane.table_and_policy();
        let response = bind::handle(table, &self.jar, policy, datagram, src, now);
        *self.stats.entry(response.outcome.name()).or_default() += 1;
        if let (BindOutcome::Accepted(change), Some((vni, leg))) =
            (response.outcome, response.target)
        {
            let session = plane.table().get(vni).expect("bound above").clone();
            match change {
                BindChange::Bound | BindChange::Moved { .. } => {
                    info!(vni, leg, addr = %src, change = response.outcome.name(), state = session.state().name(), "leg bound");
                }
                _ => debug!(vni, leg, addr = %src, "leg refreshed"),
            }
            // Refreshes only move the generation, which the metadata keeps for restarts.
            if let Err(e) = plane.publish(&session) {
                warn!(vni, error = %e, "updating the fast path after a bind failed");
            }
        }
        Ok(response.reply)
    }
}
