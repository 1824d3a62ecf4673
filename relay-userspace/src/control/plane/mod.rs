//! The session control plane with its side effects: the session table applied to the places
//! sessions live — the pinned BPF maps (when the fast path is loaded) and the userspace
//! forwarder's table and counters — plus expiry and the counters' flush into the maps. Shared
//! behind a mutex by the API, the fronts (a bind moves a leg) and the daemon's ticker.

mod pairs;

pub use pairs::{PairAsk, PairPlane};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use rand::{SeedableRng, rngs::StdRng};
use relay_common::maps::SessionStats;
use tracing::{info, warn};

use super::{
    address_policy::AddressPolicy,
    expiry::{self, Expiry},
    persist,
    session::{Session, SessionState},
    table::{AllocError, AllocationRequest, SessionTable, TableSettings},
};
use crate::{
    dataplane::{Dataplane, RelayMaps, clock::JiffiesClock, object::PROGRAM_CLOCK_PROBE},
    forwarder::{
        counters::{SlotSnapshot, UserCounters},
        table::ForwardTable,
    },
};

/// The kernel side, when the XDP object is loaded.
pub struct KernelState {
    /// The loaded object and its pinned maps.
    pub dataplane: Dataplane,
    /// Jiffies calibration for the maps' timestamps.
    pub clock: JiffiesClock,
}

impl KernelState {
    fn maps(&mut self) -> &mut RelayMaps {
        &mut self.dataplane.maps
    }
}

/// Counts of what the control plane did, for logs and metrics.
#[derive(Clone, Debug, Default)]
pub struct PlaneStats {
    /// Expired sessions by reason name.
    pub expired: HashMap<&'static str, u64>,
    /// Sessions allocated.
    pub allocated: u64,
    /// Sessions deleted through the API.
    pub deleted: u64,
}

/// The control plane and everything it writes to.
pub struct Plane {
    table: SessionTable,
    policy: AddressPolicy,
    rng: StdRng,
    forward: Arc<ForwardTable>,
    counters: Arc<UserCounters>,
    kernel: Option<KernelState>,
    /// Latest known data activity per session and leg (from both forwarders' counters).
    activity: HashMap<u32, [Option<Instant>; 2]>,
    /// Userspace counters last written to the maps, per slot.
    flushed: HashMap<u32, SlotSnapshot>,
    /// WireGuard pairs' ports and maps, when the front runs.
    pairs: Option<PairPlane>,
    /// What happened so far.
    pub stats: PlaneStats,
}

/// The plane as the daemon shares it.
pub type SharedPlane = Arc<Mutex<Plane>>;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    /// Refused by the table's rules.
    #[error(transparent)]
    Refused(#[from] AllocError),
    /// The fast-path map refused the entry (capacity or memory).
    #[error("the fast path could not take the session: {0}")]
    FastPath(String),
}

impl Plane {
    /// A plane over an empty table.
    pub fn new(
        settings: TableSettings,
        policy: AddressPolicy,
        forward: Arc<ForwardTable>,
        counters: Arc<UserCounters>,
        kernel: Option<KernelState>,
    ) -> Plane {
        Plane {
            table: SessionTable::new(settings),
            policy,
            rng: StdRng::from_os_rng(),
            forward,
            counters,
            kernel,
            activity: HashMap::new(),
            flushed: HashMap::new(),
            pairs: None,
            stats: PlaneStats::default(),
        }
    }

    /// A plane with no kernel side (sessions live in memory only), the configuration's
    /// defaults for everything but its size and quotas, and a strict address policy: the
    /// control plane the API's in-process tests and its fuzz target drive.
    pub fn in_memory(max_sessions: u32, quotas: HashMap<String, u32>) -> Plane {
        let defaults = crate::config::SessionsConfig::default();
        Plane::new(
            TableSettings {
                max_sessions,
                quotas,
                bind_lifetime: defaults.bind_lifetime,
                idle_lifetime: defaults.idle_lifetime,
                limits: relay_common::maps::SessionLimits {
                    packets_per_sec: defaults.packets_per_sec,
                    kbytes_per_sec: defaults.kbytes_per_sec,
                },
            },
            AddressPolicy::strict(Vec::new()),
            Arc::new(ForwardTable::new()),
            Arc::new(UserCounters::new(max_sessions)),
            None,
        )
    }

    /// The userspace forwarder's counters this plane flushes.
    pub fn counters(&self) -> Arc<UserCounters> {
        self.counters.clone()
    }

    /// The session table.
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// The session table to change, with the address policy legs must pass. Whoever changes a
    /// session through it publishes it afterwards ([`Plane::publish`]).
    pub fn table_and_policy(&mut self) -> (&mut SessionTable, &AddressPolicy) {
        (&mut self.table, &self.policy)
    }

    /// Replaces the per-token quotas (see [`SessionTable::set_quotas`]).
    pub fn set_quotas(&mut self, quotas: std::collections::HashMap<String, u32>) {
        self.table.set_quotas(quotas);
    }

    /// Drops the loaded object (and any XDP link the daemon holds) before exiting.
    pub fn release_kernel(&mut self) {
        self.kernel = None;
    }

    /// Whether the XDP object's maps are in use.
    pub fn has_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// Takes over the sessions a previous daemon left in the pinned maps. Returns how many.
    pub fn adopt_pinned(&mut self) -> anyhow::Result<usize> {
        let Some(kernel) = &mut self.kernel else {
            return Ok(0);
        };
        let now = Instant::now();
        let mut adopted = 0;
        for (vni, fast, meta) in kernel.maps().all_sessions()? {
            let Some(meta) = meta else {
                warn!(vni, "pinned session without metadata: removing it");
                kernel.maps().delete_session(vni)?;
                continue;
            };
            let session = persist::from_records(vni, &fast, &meta, now);
            let user = kernel.maps().userspace_session_stats(session.slot)?;
            if self.table.adopt(session.clone()) {
                self.counters
                    .restore(session.slot, user.packets, user.bytes);
                self.forward.upsert(vni, session.fast_path());
                adopted += 1;
            } else {
                warn!(
                    vni,
                    slot = fast.slot,
                    "pinned session does not fit this configuration: removing it"
                );
                kernel.maps().delete_session(vni)?;
            }
        }
        Ok(adopted)
    }

    /// Writes `session` wherever sessions live.
    pub fn publish(&mut self, session: &Session) -> Result<(), String> {
        if let Some(record) = session.wireguard_record() {
            return self.publish_pair(session, &record);
        }
        if let Some(kernel) = &mut self.kernel {
            kernel
                .maps()
                .put_session(
                    session.vni,
                    &session.fast_path(),
                    &persist::to_meta(session),
                )
                .map_err(|e| e.to_string())?;
        }
        self.forward.upsert(session.vni, session.fast_path());
        Ok(())
    }

    fn unpublish(&mut self, session: &Session) {
        self.activity.remove(&session.vni);
        self.flushed.remove(&session.slot);
        if session.wireguard().is_some() {
            return self.unpublish_pair(session);
        }
        self.forward.remove(session.vni);
        if let Some(kernel) = &mut self.kernel
            && let Err(e) = kernel.maps().delete_session(session.vni)
        {
            warn!(vni = session.vni, error = %e, "removing session from the maps failed");
        }
    }

    /// Allocates a session for `token`.
    pub fn allocate(
        &mut self,
        token: &str,
        request: AllocationRequest,
    ) -> Result<(Session, bool), AllocateError> {
        let (session, created) = self
            .table
            .allocate(token, request, Instant::now(), unix_ms(), &mut self.rng)
            .map(|(s, created)| (s.clone(), created))?;
        if !created {
            return Ok((session, false));
        }
        self.counters.reset(session.slot);
        let reset = match &mut self.kernel {
            Some(kernel) => kernel
                .maps()
                .reset_slot(session.slot)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        };
        if let Err(e) = reset.and_then(|()| self.publish(&session)) {
            self.table.remove(session.vni);
            self.unpublish(&session);
            return Err(AllocateError::FastPath(e));
        }
        self.stats.allocated += 1;
        info!(
            target: "audit",
            token,
            vni = session.vni,
            label_a = session.legs[0].label.as_deref().unwrap_or(""),
            label_b = session.legs[1].label.as_deref().unwrap_or(""),
            "session allocated"
        );
        Ok((session, true))
    }

    /// `token`'s session `vni` if it is of the kind asked (a WireGuard pair if `wireguard`):
    /// each kind's API routes see only their own.
    pub fn owned(&self, token: &str, vni: u32, wireguard: bool) -> Option<&Session> {
        self.table
            .get(vni)
            .filter(|s| s.token == token && s.wireguard().is_some() == wireguard)
    }

    /// All of `token`'s sessions of the kind asked, by id.
    pub fn all_owned(&self, token: &str, wireguard: bool) -> Vec<&Session> {
        let mut owned: Vec<&Session> = self
            .table
            .iter()
            .filter(|s| s.token == token && s.wireguard().is_some() == wireguard)
            .collect();
        owned.sort_by_key(|s| s.vni);
        owned
    }

    /// Deletes session `vni` (a WireGuard pair if `wireguard`) if `token` owns it.
    pub fn delete(&mut self, token: &str, vni: u32, wireguard: bool) -> bool {
        if self.owned(token, vni, wireguard).is_none() {
            return false;
        }
        let session = self.table.remove(vni).expect("looked up above");
        self.unpublish(&session);
        self.stats.deleted += 1;
        info!(target: "audit", token, vni, "session deleted");
        true
    }

    /// When each leg of `session` last sent data, from both forwarders' counters.
    fn data_activity(&mut self, session: &Session, now: Instant) -> [Option<Instant>; 2] {
        let user = self.counters.slot(session.slot).last_seen;
        let mut latest = user;
        if let Some(kernel) = &mut self.kernel
            && let Ok(stats) = kernel.maps().kernel_session_stats(session.slot)
        {
            for (latest, stamp) in latest.iter_mut().zip(stats.last_seen) {
                let seen = kernel
                    .clock
                    .age(stamp, now)
                    .map(|age| now.checked_sub(age).unwrap_or(now));
                *latest = (*latest).max(seen);
            }
        }
        latest
    }

    /// Expires sessions due at `now`; returns them with the reason.
    ///
    /// Counters are only read for sessions that look expired from what is already known, so an
    /// active session costs one map read per idle lifetime, not one per tick.
    pub fn expire(&mut self, now: Instant) -> Vec<(u32, Expiry)> {
        if let Some(kernel) = &mut self.kernel
            && let Ok(probe) = kernel.dataplane.program(PROGRAM_CLOCK_PROBE)
            && let Ok(fresh) = kernel.clock.resample(probe)
        {
            kernel.clock = fresh;
        }
        let candidates: Vec<Session> = self
            .table
            .iter()
            .filter(|s| {
                let known = self.activity.get(&s.vni).copied().unwrap_or([None; 2]);
                expiry::check(s, now, known).is_some()
            })
            .cloned()
            .collect();
        let mut expired = Vec::new();
        for session in candidates {
            if session.wireguard().is_some() {
                // Pairs live until deleted; only their legs are released.
                if let Some(reason) = self.release_idle_pair(&session, now) {
                    expired.push((session.vni, reason));
                }
                continue;
            }
            let reason = if session.state() == SessionState::Bound {
                let activity = self.data_activity(&session, now);
                self.activity.insert(session.vni, activity);
                expiry::check(&session, now, activity)
            } else {
                expiry::check(&session, now, [None; 2])
            };
            if let Some(reason) = reason {
                let session = self.table.remove(session.vni).expect("listed above");
                self.unpublish(&session);
                *self.stats.expired.entry(reason.name()).or_default() += 1;
                info!(target: "audit", vni = session.vni, token = %session.token, reason = reason.name(), "session expired");
                expired.push((session.vni, reason));
            }
        }
        expired
    }

    /// Copies the userspace forwarder's counters into the pinned maps (changed slots only).
    pub fn flush_counters(&mut self, now: Instant) {
        let Some(kernel) = &mut self.kernel else {
            return;
        };
        if let Err(e) = kernel
            .maps()
            .set_userspace_verdicts(&self.counters.verdicts())
        {
            warn!(error = %e, "flushing userspace verdict counters failed");
        }
        for session in self.table.iter() {
            let snap = self.counters.slot(session.slot);
            if self.flushed.get(&session.slot) == Some(&snap) {
                continue;
            }
            let clock = &kernel.clock;
            let jiffies = |at: Option<Instant>| {
                at.map_or(0, |t| {
                    clock
                        .now(now)
                        .saturating_sub(clock.to_ticks(now.saturating_duration_since(t)))
                })
            };
            let stats = SessionStats {
                packets: snap.packets,
                bytes: snap.bytes,
                last_seen: [jiffies(snap.last_seen[0]), jiffies(snap.last_seen[1])],
                ..Default::default()
            };
            if kernel
                .maps()
                .set_userspace_session_stats(session.slot, &stats)
                .is_ok()
            {
                self.flushed.insert(session.slot, snap);
            }
        }
    }
}
