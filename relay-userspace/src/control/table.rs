//! The authoritative session table: allocation (random slots and VNIs naming them, quotas,
//! idempotence), lookup, binding and removal. Pure logic: time and randomness are passed in.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::SocketAddr,
    time::{Duration, Instant},
};

use rand::{Rng, RngCore};
use relay_common::{
    geneve::{VNI_MAX, control::KEY_LEN},
    maps::{SessionLimits, session_slot_bits, vni_slot},
};

use relay_common::wireguard::WireGuardPair;

use super::session::{LegIndex, LegState, Session, SessionKind, WireGuardSession, address_of_leg};

/// Longest leg label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What the caller asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationRequest {
    /// Labels of leg a and leg b.
    pub labels: [Option<String>; 2],
    /// Makes a retried request return the same session.
    pub idempotency_key: Option<String>,
    /// A stock WireGuard pair rather than a Geneve session.
    pub wireguard: Option<PairRequest>,
}

/// What makes a session a WireGuard pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairRequest {
    /// Peer a's and peer b's WireGuard public keys.
    pub public_keys: [[u8; KEY_LEN]; 2],
    /// The relay ports the peers send to (chosen by the plane from the configured range).
    pub ports: [u16; 2],
    /// Whether both peers may be behind one IP address.
    pub shared_address: bool,
    /// Idle lifetime of the pair's legs (WireGuard's keepalive sets its own pace).
    pub idle_lifetime: Duration,
    /// Time for both peers to be configured and shake hands.
    pub bind_lifetime: Duration,
}

/// Why an allocation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The token holds its quota of sessions.
    #[error("token {token:?} holds its quota of {quota} sessions")]
    TokenQuota {
        /// Token name.
        token: String,
        /// Its quota.
        quota: u32,
    },
    /// The relay holds its maximum number of sessions.
    #[error("the relay holds its maximum of {max} sessions")]
    RelayFull {
        /// The limit.
        max: u32,
    },
    /// Every WireGuard relay port pair is in use.
    #[error("every WireGuard relay port pair is in use ({pairs} pairs; see wireguard.relay_ports)")]
    NoPorts {
        /// Pairs the range holds.
        pairs: u32,
    },
    /// A label or key is unacceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Table-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSettings {
    /// Sessions at once, all tokens.
    pub max_sessions: u32,
    /// Quota per token name.
    pub quotas: HashMap<String, u32>,
    /// Time for both legs to bind.
    pub bind_lifetime: Duration,
    /// Idle lifetime of bound sessions.
    pub idle_lifetime: Duration,
    /// Limits given to new sessions.
    pub limits: SessionLimits,
}

/// What binding a leg did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindChange {
    /// The leg bound for the first time.
    Bound,
    /// The leg moved to a new address (NAT rebinding) with a newer generation.
    Moved {
        /// Where it was bound before.
        from: SocketAddr,
    },
    /// Same address, newer or same generation: a refresh (keepalive).
    Refreshed,
    /// Older generation, or the same generation from another address: ignored.
    Stale,
}

/// All sessions.
pub struct SessionTable {
    settings: TableSettings,
    sessions: HashMap<u32, Session>,
    /// Unused counter slots; reused most-recently-freed first.
    free_slots: Vec<u32>,
    per_token: HashMap<String, u32>,
    idempotency: HashMap<(String, String), u32>,
}

impl SessionTable {
    /// An empty table with slots `0..max_sessions`.
    pub fn new(settings: TableSettings) -> SessionTable {
        let free_slots = (0..settings.max_sessions).rev().collect();
        SessionTable {
            settings,
            sessions: HashMap::new(),
            free_slots,
            per_token: HashMap::new(),
            idempotency: HashMap::new(),
        }
    }

    /// Table settings.
    pub fn settings(&self) -> &TableSettings {
        &self.settings
    }

    /// Replaces the per-token quotas (a configuration reload). A token now over its quota keeps
    /// its sessions and allocates no more until it is under; a token no longer listed holds its
    /// sessions until they expire or are deleted.
    pub fn set_quotas(&mut self, quotas: HashMap<String, u32>) {
        self.settings.quotas = quotas;
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Session `vni`.
    pub fn get(&self, vni: u32) -> Option<&Session> {
        self.sessions.get(&vni)
    }

    /// Every session, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Sessions held by `token`.
    pub fn held_by(&self, token: &str) -> u32 {
        self.per_token.get(token).copied().unwrap_or(0)
    }

    /// Allocates a session for `token`, or returns the one a previous request with the same
    /// idempotency key created (the bool is `false` then).
    pub fn allocate(
        &mut self,
        token: &str,
        request: AllocationRequest,
        now: Instant,
        unix_ms: u64,
        rng: &mut impl RngCore,
    ) -> Result<(&Session, bool), AllocError> {
        validate(&request)?;
        if let Some(key) = &request.idempotency_key
            && let Some(vni) = self.idempotency.get(&(token.to_string(), key.clone()))
        {
            let existing = &self.sessions[vni];
            if existing.wireguard().is_some() != request.wireguard.is_some() {
                return Err(AllocError::Invalid {
                    field: "idempotency_key",
                    reason: "already names an allocation of the other kind".into(),
                });
            }
            return Ok((existing, false));
        }
        let quota = self.settings.quotas.get(token).copied().unwrap_or(0);
        if self.held_by(token) >= quota {
            return Err(AllocError::TokenQuota {
                token: token.to_string(),
                quota,
            });
        }
        if self.free_slots.is_empty() {
            return Err(AllocError::RelayFull {
                max: self.settings.max_sessions,
            });
        }
        // A random free slot, and a VNI that names it with random bits above: unpredictable as
        // a VNI drawn from all 2^24 (a guess hits a live session as often either way), yet the
        // fast path finds the session by indexing, not hashing.
        let slot = self
            .free_slots
            .swap_remove(rng.random_range(0..self.free_slots.len()));
        let vni = self.random_free_vni(slot, rng);
        let key = |rng: &mut dyn RngCore| {
            let mut k = [0u8; KEY_LEN];
            rng.fill_bytes(&mut k);
            k
        };
        let [label_a, label_b] = request.labels;
        let (keys, kind, bind_lifetime, idle_lifetime) = match request.wireguard {
            None => (
                [key(rng), key(rng)],
                SessionKind::Geneve,
                self.settings.bind_lifetime,
                self.settings.idle_lifetime,
            ),
            Some(pair) => (
                pair.public_keys,
                SessionKind::WireGuard(WireGuardSession {
                    ports: pair.ports,
                    shared_address: pair.shared_address,
                    confirm: (0, 0),
                }),
                pair.bind_lifetime,
                pair.idle_lifetime,
            ),
        };
        let [key_a, key_b] = keys;
        let session = Session {
            vni,
            slot,
            token: token.to_string(),
            created: now,
            created_unix_ms: unix_ms,
            legs: [LegState::new(key_a, label_a), LegState::new(key_b, label_b)],
            bind_lifetime,
            idle_lifetime,
            idempotency_key: request.idempotency_key.clone(),
            limits: self.settings.limits,
            kind,
        };
        *self.per_token.entry(token.to_string()).or_default() += 1;
        if let Some(key) = request.idempotency_key {
            self.idempotency.insert((token.to_string(), key), vni);
        }
        Ok((self.sessions.entry(vni).or_insert(session), true))
    }

    /// A random VNI that names `slot` ([`vni_slot`]) and is not in use. VNIs are unpredictable:
    /// the slot is drawn at random and so are the bits above it, so knowing one session's id
    /// tells nothing about another's. (The slot is free, so only a session adopted from an
    /// earlier build, whose VNI names no slot of its own, can hold one; and the table holds at
    /// most 1/8 of all VNIs, leaving at least 3 random bits: this ends quickly.)
    fn random_free_vni(&self, slot: u32, rng: &mut impl RngCore) -> u32 {
        let bits = session_slot_bits(self.settings.max_sessions);
        let tags = (VNI_MAX >> bits) + 1;
        loop {
            let vni = (rng.random_range(0..tags) << bits) | slot;
            if vni != 0 && !self.sessions.contains_key(&vni) {
                debug_assert_eq!(vni_slot(vni, bits), slot);
                return vni;
            }
        }
    }

    /// Removes session `vni`, freeing its slot and quota.
    pub fn remove(&mut self, vni: u32) -> Option<Session> {
        let session = self.sessions.remove(&vni)?;
        self.free_slots.push(session.slot);
        if let Entry::Occupied(mut held) = self.per_token.entry(session.token.clone()) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
        if let Some(key) = &session.idempotency_key {
            self.idempotency
                .remove(&(session.token.clone(), key.clone()));
        }
        Some(session)
    }

    /// Re-inserts a session taken over from a previous daemon (its slot must be free).
    pub fn adopt(&mut self, session: Session) -> bool {
        let Some(pos) = self.free_slots.iter().position(|s| *s == session.slot) else {
            return false;
        };
        if self.sessions.contains_key(&session.vni) {
            return false;
        }
        self.free_slots.swap_remove(pos);
        *self.per_token.entry(session.token.clone()).or_default() += 1;
        if let Some(key) = &session.idempotency_key {
            self.idempotency
                .insert((session.token.clone(), key.clone()), session.vni);
        }
        self.sessions.insert(session.vni, session);
        true
    }

    /// Applies a verified bind of leg `leg` of `vni` from `addr` with `generation`.
    ///
    /// A newer generation always wins (the client moved, or restarted); the same generation is
    /// accepted again only from the same address (a retransmitted answer or a keepalive
    /// refresh). Anything else is stale: an old answer replayed must never move a leg back.
    pub fn bind(
        &mut self,
        vni: u32,
        leg: LegIndex,
        addr: SocketAddr,
        generation: u64,
        now: Instant,
    ) -> Option<BindChange> {
        let state = &mut self.sessions.get_mut(&vni)?.legs[leg & 1];
        let change = match state.bound {
            _ if generation < state.generation => BindChange::Stale,
            Some(current) if generation == state.generation && current != addr => BindChange::Stale,
            Some(current) if current == addr => BindChange::Refreshed,
            Some(current) => BindChange::Moved { from: current },
            None => BindChange::Bound,
        };
        if change == BindChange::Stale {
            return Some(change);
        }
        if let BindChange::Moved { .. } = change {
            state.rebinds += 1;
        }
        if state.bound.is_none() {
            state.bound_at = Some(now);
        }
        state.bound = Some(addr);
        state.generation = generation;
        state.last_bind = Some(now);
        Some(change)
    }
}

impl SessionTable {
    /// Records a WireGuard pair's legs and pending move as leg learning decided them (`record`
    /// is the fast path's view). A leg at a new address counts as a rebind. Returns `false`
    /// for an unknown id or a Geneve session.
    pub fn update_pair(&mut self, vni: u32, record: &WireGuardPair, now: Instant) -> bool {
        let Some(session) = self.sessions.get_mut(&vni) else {
            return false;
        };
        let SessionKind::WireGuard(w) = &mut session.kind else {
            return false;
        };
        w.confirm = (record.confirm_side, record.confirm_index);
        for (leg, fast) in session.legs.iter_mut().zip(&record.legs) {
            let addr = fast.is_bound().then(|| address_of_leg(fast)).flatten();
            if leg.bound == addr {
                continue;
            }
            match addr {
                Some(_) => {
                    if leg.bound.is_some() {
                        leg.rebinds += 1;
                    }
                    leg.bound_at = leg.bound_at.or(Some(now));
                    leg.last_bind = Some(now);
                }
                None => {
                    leg.bound_at = None;
                    leg.last_bind = None;
                }
            }
            leg.bound = addr;
        }
        true
    }
}

fn validate(request: &AllocationRequest) -> Result<(), AllocError> {
    for (i, label) in request.labels.iter().enumerate() {
        if let Some(l) = label {
            let field = ["labels[0]", "labels[1]"][i];
            if l.is_empty() || l.len() > MAX_LABEL_LEN {
                return Err(AllocError::Invalid {
                    field,
                    reason: format!("must be 1 to {MAX_LABEL_LEN} bytes"),
                });
            }
            if l.chars().any(char::is_control) {
                return Err(AllocError::Invalid {
                    field,
                    reason: "must not contain control characters".into(),
                });
            }
        }
    }
    if let Some(k) = &request.idempotency_key
        && (k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(AllocError::Invalid {
            field: "idempotency_key",
            reason: format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn table(max: u32, quota: u32) -> SessionTable {
        SessionTable::new(TableSettings {
            max_sessions: max,
            quotas: [("alice".to_string(), quota), ("bob".to_string(), quota)].into(),
            bind_lifetime: Duration::from_secs(30),
            idle_lifetime: Duration::from_secs(300),
            limits: SessionLimits::default(),
        })
    }

    fn labelled(a: &str, b: &str) -> AllocationRequest {
        AllocationRequest {
            labels: [Some(a.into()), Some(b.into())],
            ..Default::default()
        }
    }

    #[test]
    fn allocation_gives_random_vnis_distinct_slots_and_keys() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut t = table(100, 100);
        let now = Instant::now();
        let mut vnis = Vec::new();
        let mut slots = Vec::new();
        for _ in 0..50 {
            let (s, created) = t
                .allocate("alice", AllocationRequest::default(), now, 0, &mut rng)
                .unwrap();
            assert!(created);
            assert!(s.vni >= 1 && s.vni <= VNI_MAX);
            // The VNI names the slot (the fast path indexes by it); the bits above are random.
            assert_eq!(vni_slot(s.vni, session_slot_bits(100)), s.slot);
            assert_ne!(s.legs[0].key, s.legs[1].key);
            vnis.push(s.vni);
            slots.push(s.slot);
        }
        // Slots are drawn at random too: not the first 50 in order.
        assert_ne!(slots, (0..50).collect::<Vec<_>>());
        assert_ne!(slots, (50..100).rev().collect::<Vec<_>>());
        let tags: std::collections::BTreeSet<u32> = vnis.iter().map(|v| v >> 7).collect();
        assert!(tags.len() > 40, "the bits above the slot repeat: {tags:?}");
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 50);
        // Not sequential: consecutive allocations are far apart on average.
        let steps = vnis.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert_eq!(steps, 0, "{vnis:?}");
        let mut unique = vnis.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 50);
    }

    #[test]
    fn labels_are_kept_and_validated() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut t = table(10, 10);
        let now = Instant::now();
        let (s, _) = t
            .allocate(
                "alice",
                labelled("alice-laptop", "office-nas"),
                now,
                0,
                &mut rng,
            )
            .unwrap();
        assert_eq!(s.legs[0].label.as_deref(), Some("alice-laptop"));
        assert_eq!(s.legs[1].label.as_deref(), Some("office-nas"));
        let long = "x".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            t.allocate("alice", labelled(&long, "b"), now, 0, &mut rng),
            Err(AllocError::Invalid {
                field: "labels[0]",
                ..
            })
        ));
        assert!(matches!(
            t.allocate("alice", labelled("a", "bad\u{7}bell"), now, 0, &mut rng),
            Err(AllocError::Invalid {
                field: "labels[1]",
                ..
            })
        ));
        assert_eq!(t.len(), 1, "refused requests allocate nothing");
    }

    #[test]
    fn new_quotas_apply_to_the_next_allocation() {
        let mut t = table(10, 2);
        let now = Instant::now();
        let mut rng = rand::rng();
        for _ in 0..2 {
            t.allocate("alice", AllocationRequest::default(), now, 0, &mut rng)
                .unwrap();
        }
        t.set_quotas([("alice".to_string(), 1), ("carol".to_string(), 1)].into());
        assert!(matches!(
            t.allocate("alice", AllocationRequest::default(), now, 0, &mut rng),
            Err(AllocError::TokenQuota { quota: 1, .. })
        ));
        assert_eq!(t.held_by("alice"), 2, "nothing is taken away");
        assert!(matches!(
            t.allocate("bob", AllocationRequest::default(), now, 0, &mut rng),
            Err(AllocError::TokenQuota { quota: 0, .. })
        ));
        t.allocate("carol", AllocationRequest::default(), now, 0, &mut rng)
            .unwrap();
    }

    #[test]
    fn quotas_per_token_and_in_total() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut t = table(3, 2);
        let now = Instant::now();
        let req = AllocationRequest::default;
        t.allocate("alice", req(), now, 0, &mut rng).unwrap();
        t.allocate("alice", req(), now, 0, &mut rng).unwrap();
        assert_eq!(
            t.allocate("alice", req(), now, 0, &mut rng).unwrap_err(),
            AllocError::TokenQuota {
                token: "alice".into(),
                quota: 2
            }
        );
        t.allocate("bob", req(), now, 0, &mut rng).unwrap();
        assert_eq!(
            t.allocate("bob", req(), now, 0, &mut rng).unwrap_err(),
            AllocError::RelayFull { max: 3 }
        );
        assert!(matches!(
            t.allocate("mallory", req(), now, 0, &mut rng),
            Err(AllocError::TokenQuota { quota: 0, .. })
        ));
        // Removing frees both the quota and the slot.
        let vni = t.iter().find(|s| s.token == "alice").unwrap().vni;
        let slot = t.remove(vni).unwrap().slot;
        assert_eq!(t.held_by("alice"), 1);
        let (s, _) = t.allocate("alice", req(), now, 0, &mut rng).unwrap();
        assert_eq!(s.slot, slot, "freed slot reused");
    }

    #[test]
    fn idempotency_key_returns_the_same_session_per_token() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut t = table(10, 10);
        let now = Instant::now();
        let req = AllocationRequest {
            labels: [None, None],
            idempotency_key: Some("k1".into()),
            wireguard: None,
        };
        let (first, created) = t.allocate("alice", req.clone(), now, 0, &mut rng).unwrap();
        let first = first.clone();
        assert!(created);
        let (again, created) = t.allocate("alice", req.clone(), now, 0, &mut rng).unwrap();
        assert!(!created);
        assert_eq!(again, &first);
        assert_eq!(t.held_by("alice"), 1);
        // Another token's identical key is its own.
        let (bobs, created) = t.allocate("bob", req.clone(), now, 0, &mut rng).unwrap();
        assert!(created);
        assert_ne!(bobs.vni, first.vni);
        // After deletion the key allocates anew.
        t.remove(first.vni);
        let (fresh, created) = t.allocate("alice", req, now, 0, &mut rng).unwrap();
        assert!(created);
        assert_ne!(fresh.vni, first.vni);
    }

    #[test]
    fn bind_generations_move_refresh_and_ignore_stale() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut t = table(10, 10);
        let t0 = Instant::now();
        let vni = t
            .allocate("alice", AllocationRequest::default(), t0, 0, &mut rng)
            .unwrap()
            .0
            .vni;
        let a1: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let a2: SocketAddr = "198.51.100.1:2000".parse().unwrap();
        assert_eq!(t.bind(vni, 0, a1, 10, t0), Some(BindChange::Bound));
        assert_eq!(t.bind(vni, 0, a1, 10, t0), Some(BindChange::Refreshed));
        assert_eq!(t.bind(vni, 0, a1, 11, t0), Some(BindChange::Refreshed));
        // Same generation from elsewhere: stale (a copy of an old answer).
        assert_eq!(t.bind(vni, 0, a2, 11, t0), Some(BindChange::Stale));
        // NAT rebinding: a newer generation from the new address moves the leg.
        assert_eq!(
            t.bind(vni, 0, a2, 12, t0),
            Some(BindChange::Moved { from: a1 })
        );
        // The old address replaying its old generation cannot move it back.
        assert_eq!(t.bind(vni, 0, a1, 11, t0), Some(BindChange::Stale));
        let leg = &t.get(vni).unwrap().legs[0];
        assert_eq!((leg.bound, leg.generation, leg.rebinds), (Some(a2), 12, 1));
        assert_eq!(leg.bound_at, Some(t0));
        assert_eq!(t.bind(vni + 1, 0, a1, 99, t0), None, "unknown session");
    }
}
