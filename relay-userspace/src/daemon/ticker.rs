//! The daemon's clock: once a second the session plane expires what is due and copies the
//! userspace counters into the pinned maps, and the drain state follows its pinned copy (which
//! `relay drain --local` writes); under systemd each tick also pings the watchdog.

use std::time::{Duration, Instant};

use tokio::{sync::watch, task::JoinHandle};

use crate::control::plane::SharedPlane;

/// How often sessions are checked for expiry and userspace counters copied to the maps.
const TICK: Duration = Duration::from_secs(1);

/// Ticks until `stopped` turns true.
pub fn start(
    plane: SharedPlane,
    fleet: std::sync::Arc<crate::fleet::Fleet>,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Under systemd with WatchdogSec=, a ping per tick proves the control plane still turns
    // over (a stuck lock stops the pings and systemd restarts the daemon).
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            {
                let mut plane = plane.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                plane.expire(now);
                plane.flush_counters(now);
            }
            fleet.follow_pinned();
            if watchdog {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        }
    })
}
