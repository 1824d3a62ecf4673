//! Whether maps a previous daemon left pinned fit this build. A restarted daemon reuses pinned
//! maps as they are (that is how sessions survive); a map whose layout or size differs would be
//! misread by both the program and the daemon, so state maps must match exactly. Counter-only
//! maps are recreated instead (their counts restart): an upgrade that adds a verdict reason must
//! not require dropping every session.

use std::{mem::size_of, path::Path};

use anyhow::{Result, bail};
use aya::maps::MapInfo;
use relay_common::{
    maps::{self as names, BuildInfo, RelayConfig, Session, SessionMeta, SessionStats},
    verdict::{Reason, VerdictCounter},
};
use tracing::warn;

/// What losing a map's contents costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Sessions, bindings, configuration: must match.
    State,
    /// Counters only: recreated when they do not match.
    Counters,
}

/// The layout this build expects of one pinned map.
struct Expected {
    name: &'static str,
    key: u32,
    /// None: not checked (program arrays' value size is fixed by the kernel).
    value: Option<u32>,
    /// None: not checked.
    entries: Option<u32>,
    kind: Kind,
}

fn expected(max_sessions: u32, max_allocations: u32) -> Vec<Expected> {
    let map = |name, value: Option<usize>, entries, kind| Expected {
        name,
        key: 4,
        value: value.map(|v| v as u32),
        entries,
        kind,
    };
    let per_session = Some(max_sessions);
    vec![
        map(
            names::SESSION_SLOTS,
            Some(size_of::<relay_common::maps::SlotSession>()),
            per_session,
            Kind::State,
        ),
        map(
            names::SESSIONS,
            Some(size_of::<Session>()),
            per_session,
            Kind::State,
        ),
        map(
            names::SESSION_META,
            Some(size_of::<SessionMeta>()),
            per_session,
            Kind::State,
        ),
        map(
            names::SESSION_STATS,
            Some(size_of::<SessionStats>()),
            per_session,
            Kind::State,
        ),
        map(
            names::USERSPACE_STATS,
            Some(size_of::<SessionStats>()),
            per_session,
            Kind::State,
        ),
        map(
            names::CONFIG,
            Some(size_of::<RelayConfig>()),
            Some(1),
            Kind::State,
        ),
        map(names::REDIRECT, None, None, Kind::State),
        map(
            names::BUILD_INFO,
            Some(size_of::<BuildInfo>()),
            Some(1),
            Kind::State,
        ),
        map(
            names::VERDICTS,
            Some(size_of::<VerdictCounter>()),
            Some(Reason::COUNT),
            Kind::Counters,
        ),
        map(
            names::USERSPACE_VERDICTS,
            Some(size_of::<VerdictCounter>()),
            Some(Reason::COUNT),
            Kind::Counters,
        ),
        // No state: each load installs its programs (the kernel fixes the value size).
        map(
            names::FRONT_PROGRAMS,
            None,
            Some(names::FRONT_PROGRAM_COUNT),
            Kind::Counters,
        ),
    ]
    .into_iter()
    .chain(port_fronts_expected(max_sessions, max_allocations))
    .collect()
}

/// The maps of the fronts behind the port map (TURN, WireGuard) this build expects.
fn port_fronts_expected(max_sessions: u32, max_allocations: u32) -> Vec<Expected> {
    use relay_common::{
        turn::{self as t, *},
        wireguard,
    };
    let bindings = Some(super::turn_maps::binding_capacity(max_allocations));
    let per_allocation = Some(max_allocations);
    let state = |name, key: usize, value: usize, entries| Expected {
        name,
        key: key as u32,
        value: Some(value as u32),
        entries,
        kind: Kind::State,
    };
    vec![
        state(
            t::PORT_OWNERS,
            4,
            size_of::<RelayPort>(),
            Some(t::PORT_OWNER_ENTRIES),
        ),
        state(
            t::TURN_ALLOCATIONS,
            4,
            size_of::<TurnAllocation>(),
            per_allocation,
        ),
        state(
            t::TURN_ALLOCATION_META,
            4,
            size_of::<TurnAllocationMeta>(),
            per_allocation,
        ),
        state(
            t::TURN_CHANNELS,
            size_of::<ChannelKey>(),
            size_of::<ChannelBinding>(),
            bindings,
        ),
        state(
            t::TURN_PEERS,
            size_of::<PeerKey>(),
            size_of::<PeerChannel>(),
            bindings,
        ),
        state(
            t::TURN_PERMISSIONS,
            size_of::<PermissionKey>(),
            size_of::<Permission>(),
            bindings,
        ),
        state(t::TURN_STATS, 4, size_of::<SessionStats>(), per_allocation),
        state(
            t::TURN_USERSPACE_STATS,
            4,
            size_of::<SessionStats>(),
            per_allocation,
        ),
        state(t::TURN_KEYS, 4, size_of::<TurnKeys>(), Some(1)),
        state(
            wireguard::WIREGUARD_PAIRS,
            4,
            size_of::<wireguard::WireGuardPair>(),
            Some(max_sessions),
        ),
    ]
}

/// Checks the maps pinned in `dir` against this build. Returns the counter maps it removed so
/// they are created anew; fails, naming the map and the way out, for state maps that differ.
pub fn check_pinned(
    dir: &Path,
    max_sessions: u32,
    max_allocations: u32,
) -> Result<Vec<&'static str>> {
    let mut recreated = Vec::new();
    for Expected {
        name,
        key,
        value,
        entries,
        kind,
    } in expected(max_sessions, max_allocations)
    {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)?;
        let mismatch = if info.key_size() != key {
            Some(format!("key size {} (this build: {key})", info.key_size()))
        } else if value.is_some_and(|v| v != info.value_size()) {
            Some(format!(
                "value size {} (this build: {})",
                info.value_size(),
                value.unwrap()
            ))
        } else if entries.is_some_and(|e| e != info.max_entries()) {
            Some(format!(
                "{} entries (this build: {})",
                info.max_entries(),
                entries.unwrap()
            ))
        } else {
            None
        };
        let Some(mismatch) = mismatch else { continue };
        match kind {
            Kind::Counters => {
                warn!(map = name, %mismatch, "pinned counter map from another build: starting it afresh");
                std::fs::remove_file(&path)?;
                recreated.push(name);
            }
            Kind::State
                if name != names::CONFIG && entries.is_some_and(|e| e != info.max_entries()) =>
            {
                let key = if name.starts_with("turn") {
                    "turn.max_allocations"
                } else {
                    "sessions.max_sessions"
                };
                bail!(
                    "pinned map `{name}` in {} has {mismatch}: {key} changed since the pinned \
                 state was created. Restore the old value, or run `relay down` first (drops \
                 every session and allocation)",
                    dir.display()
                )
            }
            Kind::State => bail!(
                "pinned map `{name}` in {} has {mismatch}: the pinned state comes from an \
                 incompatible relay build. Run that build, or `relay down` first (drops every session)",
                dir.display()
            ),
        }
    }
    Ok(recreated)
}
