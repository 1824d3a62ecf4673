//! A session's records in the pinned maps — the fast path's [`fast::Session`] plus the control
//! plane's [`SessionMeta`] — and back. A restarted daemon rebuilds its table from these.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use relay_common::maps::{self as fast, Leg, META_LABEL_LEN, SessionMeta};
use sha2::{Digest, Sha256};

use relay_common::wireguard::WireGuardPair;

use super::session::{LegState, Session, SessionKind, WireGuardSession, address_of_leg};

fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut n = s.len().min(N);
    // Never cut a UTF-8 character in half.
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// First 16 bytes of SHA-256 of an idempotency key, as stored in [`SessionMeta`].
pub fn idempotency_digest(key: &str) -> [u8; 16] {
    Sha256::digest(key.as_bytes())[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

/// The metadata record of `session`.
pub fn to_meta(session: &Session) -> SessionMeta {
    SessionMeta {
        created_unix_ms: session.created_unix_ms,
        generations: [session.legs[0].generation, session.legs[1].generation],
        bind_lifetime_ms: session.bind_lifetime.as_millis().min(u32::MAX as u128) as u32,
        idle_lifetime_ms: session.idle_lifetime.as_millis().min(u32::MAX as u128) as u32,
        keys: [session.legs[0].key, session.legs[1].key],
        token: fixed(&session.token),
        labels: [0, 1]
            .map(|i| fixed::<META_LABEL_LEN>(session.legs[i].label.as_deref().unwrap_or(""))),
        idempotency: session
            .idempotency_key
            .as_deref()
            .map_or([0; 16], idempotency_digest),
    }
}

/// The address a fast-path leg is bound to.
pub fn leg_address(leg: &Leg) -> Option<SocketAddr> {
    if !leg.is_bound() {
        return None;
    }
    address_of_leg(leg)
}

/// Leg labels and the owning token of a metadata record (for the CLI).
pub fn meta_strings(meta: &SessionMeta) -> (String, [Option<String>; 2]) {
    let labels = [0, 1].map(|i| Some(text(&meta.labels[i])).filter(|l| !l.is_empty()));
    (text(&meta.token), labels)
}

/// Rebuilds a session found in the maps. Monotonic times the maps cannot hold become `now`:
/// the adopted session gets a full lifetime from the moment it is adopted. The idempotency key
/// itself is not stored (only its digest), so a retried allocation after a restart creates a
/// new session.
pub fn from_records(vni: u32, fast: &fast::Session, meta: &SessionMeta, now: Instant) -> Session {
    let (token, labels) = meta_strings(meta);
    let [label_a, label_b] = labels;
    let leg = |i: usize, label: Option<String>| {
        let bound = leg_address(&fast.legs[i]);
        LegState {
            key: meta.keys[i],
            label,
            bound,
            generation: meta.generations[i],
            bound_at: bound.map(|_| now),
            last_bind: bound.map(|_| now),
            rebinds: 0,
        }
    };
    Session {
        vni,
        slot: fast.slot,
        token,
        created: now,
        created_unix_ms: meta.created_unix_ms,
        legs: [leg(0, label_a), leg(1, label_b)],
        bind_lifetime: Duration::from_millis(meta.bind_lifetime_ms as u64),
        idle_lifetime: Duration::from_millis(meta.idle_lifetime_ms as u64),
        idempotency_key: None,
        limits: fast.limits,
        kind: SessionKind::Geneve,
    }
}

/// Rebuilds a WireGuard pair found in the maps: its record (legs, ports, limits, a pending
/// move) and the metadata its `id` names (owner, labels, lifetimes, the peers' public keys).
pub fn pair_from_records(pair: &WireGuardPair, meta: &SessionMeta, now: Instant) -> Session {
    let fast = fast::Session {
        legs: pair.legs,
        slot: pair.slot,
        limits: pair.limits,
        vni: pair.id,
    };
    let mut session = from_records(pair.id, &fast, meta, now);
    session.kind = SessionKind::WireGuard(WireGuardSession {
        ports: pair.ports.map(u16::from_be),
        shared_address: pair.shared_address != 0,
        confirm: (pair.confirm_side, pair.confirm_index),
    });
    session
}

#[cfg(test)]
mod tests {
    use relay_common::maps::SessionLimits;

    use super::*;

    #[test]
    fn records_round_trip() {
        let now = Instant::now();
        let mut a = LegState::new([1; 32], Some("alice-laptop".into()));
        a.bound = Some("198.51.100.4:1234".parse().unwrap());
        a.generation = 77;
        a.bound_at = Some(now);
        a.last_bind = Some(now);
        let mut b = LegState::new([2; 32], Some("ñas-ünicode".into()));
        b.bound = Some("[2001:db8::5]:99".parse().unwrap());
        b.generation = 3;
        b.bound_at = Some(now);
        b.last_bind = Some(now);
        let s = Session {
            vni: 0x123456,
            slot: 42,
            token: "alice".into(),
            created: now,
            created_unix_ms: 1_700_000_000_000,
            legs: [a, b],
            bind_lifetime: Duration::from_secs(30),
            idle_lifetime: Duration::from_secs(300),
            idempotency_key: None,
            limits: SessionLimits {
                packets_per_sec: 10,
                kbytes_per_sec: 20,
            },
            kind: SessionKind::Geneve,
        };
        let back = from_records(s.vni, &s.fast_path(), &to_meta(&s), now);
        assert_eq!(back, s);
        let pair = Session {
            kind: SessionKind::WireGuard(WireGuardSession {
                ports: [51_000, 51_001],
                shared_address: true,
                confirm: (2, 0xdead_beef),
            }),
            ..s
        };
        let record = pair.wireguard_record().unwrap();
        assert_eq!(record.id, pair.vni);
        let back = pair_from_records(&record, &to_meta(&pair), now);
        assert_eq!(back, pair);
    }

    #[test]
    fn long_labels_are_cut_on_character_boundaries() {
        let label = "é".repeat(40); // 80 bytes
        let stored: [u8; META_LABEL_LEN] = fixed(&label);
        assert_eq!(text(&stored), "é".repeat(32));
    }
}
