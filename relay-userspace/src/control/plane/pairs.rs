//! Stock WireGuard pairs in the plane. A pair is a session of kind
//! [`SessionKind::WireGuard`]: the table gives it an id, a counter slot, the token's quota, its
//! labels and idempotency; this part adds what only pairs have — their two relay ports from the
//! configured range, their fast-path record in `wg_pairs` (written whenever leg learning moves a
//! leg), their adoption after a restart, and idle release: a pair lives until deleted, but a
//! leg that went silent is forgotten, to be learnt again from the next handshake.

use std::time::{Duration, Instant};

use relay_common::wireguard::WireGuardPair;
use tracing::{info, warn};

use super::{AllocateError, Plane};
use crate::{
    control::{
        expiry::Expiry,
        persist,
        session::{Session, SessionState},
        table::{AllocError, AllocationRequest, PairRequest},
    },
    dataplane::wireguard_maps::WireGuardMaps,
    fronts::wireguard::ports::{PortPairs, SlotPool},
};

/// What the plane keeps for WireGuard pairs (present when the front runs).
pub struct PairPlane {
    ports: PortPairs,
    pool: SlotPool,
    maps: Option<WireGuardMaps>,
    idle_lifetime: Duration,
}

/// What a caller asks for beyond a session's labels and idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairAsk {
    /// Peer a's and peer b's public keys.
    pub public_keys: [[u8; 32]; 2],
    /// Whether both peers may be behind one IP address.
    pub shared_address: bool,
}

impl PairPlane {
    /// Pairs on `ports`, legs released after `idle_lifetime` of silence; `maps` when the fast
    /// path's maps are in use.
    pub fn new(ports: PortPairs, idle_lifetime: Duration, maps: Option<WireGuardMaps>) -> Self {
        PairPlane {
            pool: SlotPool::new(ports.count()),
            ports,
            maps,
            idle_lifetime,
        }
    }
}

/// Which port pair of `ports` a pair session holds (`None` if its ports are not one of them).
fn index_of(ports: &PortPairs, session: &Session) -> Option<u32> {
    let w = session.wireguard()?;
    let (index, _) = ports.owner(w.ports[0])?;
    (ports.ports(index) == w.ports).then_some(index)
}

impl Plane {
    /// Starts serving WireGuard pairs (the front does, before [`Plane::adopt_pairs`]).
    pub fn enable_pairs(&mut self, pairs: PairPlane) {
        self.pairs = Some(pairs);
    }

    /// Whether pairs are served.
    pub fn serves_pairs(&self) -> bool {
        self.pairs.is_some()
    }

    /// Allocates a pair for `token` (or returns the one an earlier request with the same
    /// idempotency key made; the bool is `false` then).
    pub fn allocate_pair(
        &mut self,
        token: &str,
        mut request: AllocationRequest,
        ask: PairAsk,
    ) -> Result<(Session, bool), AllocateError> {
        let Some(pairs) = &mut self.pairs else {
            return Err(AllocError::Invalid {
                field: "wireguard",
                reason: "this relay serves no WireGuard pairs".into(),
            }
            .into());
        };
        let Some(index) = pairs.pool.take(&mut self.rng) else {
            return Err(AllocError::NoPorts {
                pairs: pairs.ports.count(),
            }
            .into());
        };
        request.wireguard = Some(PairRequest {
            public_keys: ask.public_keys,
            ports: pairs.ports.ports(index),
            shared_address: ask.shared_address,
            idle_lifetime: pairs.idle_lifetime,
            bind_lifetime: pairs.idle_lifetime,
        });
        let give_back = |plane: &mut Plane| {
            if let Some(pairs) = &mut plane.pairs {
                pairs.pool.give(index);
            }
        };
        match self.allocate(token, request) {
            Ok((session, true)) => Ok((session, true)),
            Ok((session, false)) => {
                give_back(self);
                Ok((session, false))
            }
            // The table refused: nothing was made. (A fast-path failure was undone by
            // `unpublish`, which gave the ports back.)
            Err(e @ AllocateError::Refused(_)) => {
                give_back(self);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a pair's record (with the legs and the pending move leg learning decided) to the
    /// table and the fast path.
    pub fn update_pair(&mut self, record: &WireGuardPair) -> Result<Session, String> {
        if !self.table.update_pair(record.id, record, Instant::now()) {
            return Err(format!("no WireGuard pair {}", record.id));
        }
        let session = self.table.get(record.id).expect("updated above").clone();
        self.publish(&session)?;
        Ok(session)
    }

    /// Writes a pair's fast-path record and metadata (the kernel part of [`Plane::publish`]).
    pub(super) fn publish_pair(
        &mut self,
        session: &Session,
        record: &WireGuardPair,
    ) -> Result<(), String> {
        let (
            Some(kernel),
            Some(PairPlane {
                maps: Some(maps), ..
            }),
        ) = (&mut self.kernel, &mut self.pairs)
        else {
            return Ok(());
        };
        kernel
            .maps()
            .put_meta(session.vni, &persist::to_meta(session))
            .map_err(|e| e.to_string())?;
        maps.put(record).map_err(|e| e.to_string())
    }

    /// Removes a pair's records and frees its ports (the pair part of `unpublish`).
    pub(super) fn unpublish_pair(&mut self, session: &Session) {
        let Some(pairs) = &mut self.pairs else {
            return;
        };
        if let Some(index) = index_of(&pairs.ports, session) {
            pairs.pool.give(index);
        }
        if let Some(maps) = &mut pairs.maps
            && let Err(e) = maps.delete(session.slot)
        {
            warn!(id = session.vni, error = %e, "removing a WireGuard pair from the maps failed");
        }
        if let Some(kernel) = &mut self.kernel
            && let Err(e) = kernel.maps().delete_session(session.vni)
        {
            warn!(id = session.vni, error = %e, "removing a WireGuard pair's record failed");
        }
    }

    /// Takes over the pairs a previous daemon left in the pinned maps. Returns how many. A pair
    /// whose ports are outside this configuration's range, or whose record has no metadata, is
    /// removed.
    pub fn adopt_pairs(&mut self) -> anyhow::Result<usize> {
        let (Some(kernel), Some(pairs)) = (&mut self.kernel, &mut self.pairs) else {
            return Ok(0);
        };
        let Some(maps) = &mut pairs.maps else {
            return Ok(0);
        };
        let now = Instant::now();
        let records: Vec<WireGuardPair> = maps
            .pairs
            .iter()
            .filter_map(Result::ok)
            .map(|(_, pair)| pair)
            .collect();
        let mut adopted = 0;
        for record in records {
            let session = match kernel.maps().meta(record.id)? {
                Some(meta) => persist::pair_from_records(&record, &meta, now),
                None => {
                    warn!(
                        id = record.id,
                        "pinned WireGuard pair without metadata: removing it"
                    );
                    maps.delete(record.slot)?;
                    continue;
                }
            };
            let index = index_of(&pairs.ports, &session);
            let claimed = index.is_some_and(|index| pairs.pool.claim(index));
            if claimed && self.table.adopt(session.clone()) {
                let user = kernel.maps().userspace_session_stats(session.slot)?;
                self.counters
                    .restore(session.slot, user.packets, user.bytes);
                adopted += 1;
            } else {
                if claimed && let Some(index) = index {
                    pairs.pool.give(index);
                }
                warn!(
                    id = record.id,
                    "pinned WireGuard pair does not fit this configuration: removing it"
                );
                maps.delete(record.slot)?;
                kernel.maps().delete_session(record.id)?;
            }
        }
        Ok(adopted)
    }

    /// Releases the legs of pair `session` when one of them has been silent for the idle
    /// lifetime (the pair stays; its next handshakes learn the legs again). Returns why.
    pub(super) fn release_idle_pair(&mut self, session: &Session, now: Instant) -> Option<Expiry> {
        if session.state() != SessionState::Bound {
            return None;
        }
        let activity = self.data_activity(session, now);
        self.activity.insert(session.vni, activity);
        let reason = super::expiry::check(session, now, activity)?;
        let Expiry::Idle(leg) = reason else {
            return None;
        };
        let mut record = session.wireguard_record()?;
        record.legs = Default::default();
        record.confirm_side = 0;
        record.confirm_index = 0;
        if let Err(e) = self.update_pair(&record) {
            warn!(id = session.vni, error = %e, "releasing an idle WireGuard pair's legs failed");
            return None;
        }
        *self
            .stats
            .expired
            .entry("wireguard_legs_released")
            .or_default() += 1;
        info!(target: "audit", id = session.vni, token = %session.token, leg, "WireGuard legs released (idle)");
        Some(reason)
    }
}
