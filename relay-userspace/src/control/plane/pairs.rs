//! Stock WireGuard pairs in the plane. A pair is a session of kind
//! [`SessionKind::WireGuard`]: the table gives it an id, a counter slot, the token's quota, its
//! labels and idempotency; this part adds what only pairs have — their two relay ports from the
//! configured range, their fast-path record in `wg_slots` (written whenever leg learning moves a
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
        let records: Vec<WireGuardPair> = maps.all()?;
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

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, net::SocketAddr};

    use relay_common::maps::Leg;

    use super::*;
    use crate::control::session::leg_at;

    const KEYS: [[u8; 32]; 2] = [[0xA; 32], [0xB; 32]];

    fn plane(pairs: u16, quota: u32) -> Plane {
        let mut plane = Plane::in_memory(16, HashMap::from([("alice".to_string(), quota)]));
        let ports = PortPairs::new(40_000..=40_000 + 2 * pairs - 1).unwrap();
        plane.enable_pairs(PairPlane::new(ports, Duration::from_secs(60), None));
        plane
    }

    fn ask() -> PairAsk {
        PairAsk {
            public_keys: KEYS,
            shared_address: false,
        }
    }

    fn keyed(key: &str) -> AllocationRequest {
        AllocationRequest {
            idempotency_key: Some(key.into()),
            ..Default::default()
        }
    }

    #[test]
    fn pairs_get_distinct_port_pairs_until_the_range_is_used_up() {
        let mut p = plane(3, 10);
        let mut ports = Vec::new();
        for _ in 0..3 {
            let (s, created) = p
                .allocate_pair("alice", AllocationRequest::default(), ask())
                .unwrap();
            assert!(created);
            let w = s.wireguard().unwrap();
            assert_eq!(w.ports[1], w.ports[0] + 1);
            assert!((40_000..40_006).contains(&w.ports[0]) && w.ports[0].is_multiple_of(2));
            assert_eq!([s.legs[0].key, s.legs[1].key], KEYS);
            ports.push(w.ports[0]);
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        let full = p.allocate_pair("alice", AllocationRequest::default(), ask());
        assert!(matches!(
            full,
            Err(AllocateError::Refused(AllocError::NoPorts { pairs: 3 }))
        ));
        // Deleting one frees its ports for the next pair.
        let id = p.table().iter().next().unwrap().vni;
        assert!(
            !p.delete("alice", id, false),
            "a pair is not deleted as a session"
        );
        assert!(p.delete("alice", id, true));
        assert!(
            p.allocate_pair("alice", AllocationRequest::default(), ask())
                .is_ok()
        );
    }

    #[test]
    fn pairs_count_against_the_tokens_quota_and_keep_their_ports_when_refused() {
        let mut p = plane(4, 2);
        p.allocate("alice", AllocationRequest::default()).unwrap();
        p.allocate_pair("alice", AllocationRequest::default(), ask())
            .unwrap();
        let refused = p.allocate_pair("alice", AllocationRequest::default(), ask());
        assert!(matches!(
            refused,
            Err(AllocateError::Refused(AllocError::TokenQuota { .. }))
        ));
        let refused = p.allocate_pair("bob", AllocationRequest::default(), ask());
        assert!(matches!(
            refused,
            Err(AllocateError::Refused(AllocError::TokenQuota { .. }))
        ));
        // The refusals gave their ports back: three more fit once the quota allows.
        p.set_quotas(HashMap::from([("alice".to_string(), 10)]));
        for _ in 0..3 {
            p.allocate_pair("alice", AllocationRequest::default(), ask())
                .unwrap();
        }
    }

    #[test]
    fn an_idempotency_key_returns_the_same_pair_and_never_the_other_kind() {
        let mut p = plane(2, 10);
        let (first, created) = p.allocate_pair("alice", keyed("k"), ask()).unwrap();
        assert!(created);
        let (again, created) = p.allocate_pair("alice", keyed("k"), ask()).unwrap();
        assert!(!created);
        assert_eq!(again.vni, first.vni);
        // The retry gave back the ports it had taken: one more pair fits in a 2-pair range.
        p.allocate_pair("alice", AllocationRequest::default(), ask())
            .unwrap();
        let session = p.allocate("alice", keyed("k"));
        assert!(
            matches!(
                session,
                Err(AllocateError::Refused(AllocError::Invalid {
                    field: "idempotency_key",
                    ..
                }))
            ),
            "{session:?}"
        );
    }

    #[test]
    fn learnt_legs_are_recorded_and_idle_ones_released_but_the_pair_stays() {
        let mut p = plane(2, 10);
        let (s, _) = p
            .allocate_pair("alice", AllocationRequest::default(), ask())
            .unwrap();
        let a: SocketAddr = "198.51.100.1:40000".parse().unwrap();
        let b: SocketAddr = "203.0.113.2:50000".parse().unwrap();
        let mut record = s.wireguard_record().unwrap();
        record.legs = [leg_at(a), leg_at(b)];
        let bound = p.update_pair(&record).unwrap();
        assert_eq!(bound.state(), SessionState::Bound);
        assert_eq!(
            [bound.legs[0].bound, bound.legs[1].bound],
            [Some(a), Some(b)]
        );
        assert_eq!(bound.wireguard_record().unwrap(), record);
        let now = Instant::now();
        assert!(p.expire(now + Duration::from_secs(30)).is_empty());
        let expired = p.expire(now + Duration::from_secs(61));
        assert_eq!(expired, vec![(s.vni, Expiry::Idle(0))]);
        let after = p.table().get(s.vni).expect("the pair stays");
        assert_eq!(after.state(), SessionState::Allocated);
        assert_eq!(after.wireguard_record().unwrap().legs, [Leg::default(); 2]);
        // Unbound pairs never expire (they wait for their peers' configuration).
        assert!(p.expire(now + Duration::from_secs(86_400)).is_empty());
        assert_eq!(p.table().len(), 1);
    }
}
