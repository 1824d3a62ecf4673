//! This relay as one of a fleet: **draining** — no new sessions, WireGuard pairs or TURN
//! allocations, while everything that runs keeps running, refreshing and expiring as usual — and
//! the **alternates** named to clients meanwhile (the API's 503 body, TURN's 300 Try Alternate
//! with ALTERNATE-SERVER). Every anchor pins a session to one relay for its life, so taking a
//! relay out is draining it and waiting until nothing is left.
//!
//! The drain state is pinned in bpffs ([`relay_common::maps::FLEET_STATE`]) next to the sessions,
//! so a restarted daemon (an upgrade of a drained relay) keeps draining until an operator says
//! otherwise. With `xdp.mode: off` nothing is pinned and a restart forgets it.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use aya::maps::{Array, Map, MapData};
use relay_common::maps::{FLEET_STATE, FleetState};
use tracing::{info, warn};

use crate::config::FleetConfig;

/// The fleet's other relays, in the order clients should try them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alternates {
    /// Their APIs' base URLs.
    pub api: Vec<String>,
    /// Their TURN addresses for UDP and TCP.
    pub turn: Vec<SocketAddr>,
    /// Their TURN-over-TLS addresses.
    pub turns: Vec<SocketAddr>,
}

impl Alternates {
    /// From the `fleet:` section (validated).
    pub fn from_config(config: Option<&FleetConfig>) -> Alternates {
        let mut out = Alternates::default();
        for a in config.map(|c| c.alternates.as_slice()).unwrap_or_default() {
            out.api.extend(a.api.clone());
            out.turn.extend(&a.turn);
            out.turns.extend(&a.turns);
        }
        out
    }

    /// What a TURN client at `client` is sent to: the first alternate of its own address family
    /// (a client cannot switch families, and libwebrtc ignores one that does) for its transport.
    pub fn turn_for(&self, client: SocketAddr, tls: bool) -> Option<SocketAddr> {
        let list = if tls { &self.turns } else { &self.turn };
        list.iter()
            .find(|a| a.is_ipv6() == client.is_ipv6())
            .copied()
    }
}

/// Draining or not, and since when (seconds since the epoch; 0: not draining).
pub struct Fleet {
    since: AtomicU64,
    pinned: Mutex<Option<Array<MapData, FleetState>>>,
    alternates: ArcSwap<Alternates>,
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1))
}

impl Fleet {
    /// A relay that is not draining and keeps nothing (tests, `xdp.mode: off`).
    pub fn unpinned(alternates: Alternates) -> Fleet {
        Fleet {
            since: AtomicU64::new(0),
            pinned: Mutex::new(None),
            alternates: ArcSwap::from_pointee(alternates),
        }
    }

    /// The state pinned in `pin_dir` (as a previous daemon left it), or not draining.
    pub fn open(alternates: Alternates, pin_dir: Option<&Path>) -> Fleet {
        let fleet = Fleet::unpinned(alternates);
        let Some(dir) = pin_dir else {
            return fleet;
        };
        match open_pinned(dir) {
            Ok(map) => {
                let state = map.get(&0, 0).unwrap_or_default();
                if state.draining != 0 {
                    fleet
                        .since
                        .store(state.since_unix_s.max(1), Ordering::Relaxed);
                    warn!(
                        since = state.since_unix_s,
                        "draining (pinned by a previous daemon): no new sessions, pairs or \
                         allocations until `relay undrain`"
                    );
                }
                *fleet.pinned.lock().unwrap_or_else(|p| p.into_inner()) = Some(map);
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "the drain state cannot be pinned: a restart forgets a drain"
            ),
        }
        fleet
    }

    /// Whether new sessions, pairs and allocations are refused.
    pub fn draining(&self) -> bool {
        self.since.load(Ordering::Relaxed) != 0
    }

    /// When draining began (seconds since the epoch).
    pub fn draining_since(&self) -> Option<u64> {
        Some(self.since.load(Ordering::Relaxed)).filter(|s| *s != 0)
    }

    /// Starts (`true`) or ends draining; returns whether that changed anything. The pinned
    /// state is written first: a drain the next daemon would forget is an error.
    pub fn set_draining(&self, on: bool) -> Result<bool> {
        if on == self.draining() {
            return Ok(false);
        }
        let since = if on { now_unix_s() } else { 0 };
        if let Some(map) = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let state = FleetState {
                draining: u32::from(on),
                reserved: 0,
                since_unix_s: since,
            };
            map.set(0, state, 0)
                .context("writing the pinned drain state")?;
        }
        self.since.store(since, Ordering::Relaxed);
        info!(
            target: "audit",
            draining = on,
            "{}",
            if on {
                "draining: new sessions, pairs and allocations go to the alternates"
            } else {
                "undrained: taking new sessions, pairs and allocations again"
            }
        );
        Ok(true)
    }

    /// Follows the pinned state, which `relay drain --local` writes without the API (on the
    /// host, or in a Kubernetes `preStop` hook): called every tick.
    pub fn follow_pinned(&self) {
        let pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = pinned.as_ref().and_then(|m| m.get(&0, 0).ok()) else {
            return;
        };
        let since = if state.draining != 0 {
            state.since_unix_s.max(1)
        } else {
            0
        };
        let before = self.since.swap(since, Ordering::Relaxed);
        if (before != 0) != (since != 0) {
            info!(
                target: "audit",
                draining = since != 0,
                "drain changed in the pinned state (relay drain --local)"
            );
        }
    }

    /// The alternates in force.
    pub fn alternates(&self) -> Arc<Alternates> {
        self.alternates.load_full()
    }

    /// Replaces the alternates (a reload).
    pub fn set_alternates(&self, alternates: Alternates) {
        self.alternates.store(Arc::new(alternates));
    }
}

fn open_pinned(dir: &Path) -> Result<Array<MapData, FleetState>> {
    let path = dir.join(FLEET_STATE);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Array::try_from(Map::Array(data))?)
}

/// The pinned drain state, for the CLI (works while the daemon is down); None when this build's
/// map is not pinned there.
pub fn pinned_state(dir: &Path) -> Option<FleetState> {
    open_pinned(dir).ok().and_then(|m| m.get(&0, 0).ok())
}

/// Writes the drain state pinned in `dir` (`relay drain --local`); a running daemon follows it
/// within a second. Returns the state now in force.
pub fn set_pinned(dir: &Path, on: bool) -> Result<FleetState> {
    let mut map = open_pinned(dir)?;
    let now = map.get(&0, 0).unwrap_or_default();
    if (now.draining != 0) == on {
        return Ok(now);
    }
    let state = FleetState {
        draining: u32::from(on),
        reserved: 0,
        since_unix_s: if on { now_unix_s() } else { 0 },
    };
    map.set(0, state, 0)
        .context("writing the pinned drain state")?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alternates() -> Alternates {
        Alternates {
            api: vec!["https://relay2.example:8443".into()],
            turn: vec![
                "198.51.100.8:3478".parse().unwrap(),
                "[2001:db8::8]:3478".parse().unwrap(),
            ],
            turns: vec!["198.51.100.8:5349".parse().unwrap()],
        }
    }

    #[test]
    fn a_client_is_sent_to_an_alternate_of_its_family_and_transport() {
        let a = alternates();
        let v4: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:a::5]:40000".parse().unwrap();
        assert_eq!(a.turn_for(v4, false), Some(a.turn[0]));
        assert_eq!(a.turn_for(v6, false), Some(a.turn[1]));
        assert_eq!(a.turn_for(v4, true), Some(a.turns[0]));
        // None of its family for TLS: no redirection.
        assert_eq!(a.turn_for(v6, true), None);
    }

    #[test]
    fn draining_is_a_state_with_a_start_time() {
        let f = Fleet::unpinned(alternates());
        assert!(!f.draining() && f.draining_since().is_none());
        assert!(f.set_draining(true).unwrap());
        assert!(f.draining() && f.draining_since().is_some());
        assert!(!f.set_draining(true).unwrap(), "already draining");
        assert!(f.set_draining(false).unwrap());
        assert!(!f.draining());
    }
}
