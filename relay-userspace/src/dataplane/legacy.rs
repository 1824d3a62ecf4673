//! State that earlier builds kept in maps this build replaced, moved into this build's maps
//! when a daemon starts on their pins (an upgrade): hash maps the program now finds by
//! indexing arrays (port owners, TURN allocations, WireGuard pairs). Sessions are not moved: a session's VNI is
//! its clients' and names no slot, so adopted sessions stay in the hash map the program still
//! falls back to (`relay_common::maps::SESSIONS`).
//!
//! A program of the earlier build still attached keeps its own references to the old maps
//! until this daemon's program replaces it, and no daemon writes to them meanwhile: the old
//! pins can go as soon as their contents are copied.

use std::path::Path;

use aya::maps::{HashMap, MapData};
use relay_common::{
    turn::{LEGACY_TURN_ALLOCATIONS, RELAY_PORTS, RelayPort, RelayPortKey, TurnAllocation},
    wireguard::{LEGACY_WIREGUARD_PAIRS, WireGuardPair},
};

use super::maps::{MapsError, RelayMaps, pinned_map};

/// What [`migrate`] moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Port owners from `relay_ports`.
    pub ports: usize,
    /// TURN allocations from `turn_allocs`.
    pub allocations: usize,
    /// WireGuard pairs from `wg_pairs`.
    pub pairs: usize,
}

/// Moves what an earlier build left pinned in `dir` into `maps` (and the WireGuard pairs into
/// `pairs`, this build's pair array) and unpins the old maps.
pub fn migrate<T: std::borrow::BorrowMut<MapData>>(
    dir: &Path,
    maps: &mut RelayMaps,
    pairs: &mut aya::maps::Array<T, WireGuardPair>,
) -> Result<Migrated, MapsError> {
    let mut moved = Migrated::default();
    if let Some(legacy) = open::<RelayPortKey, RelayPort>(dir, RELAY_PORTS)? {
        for entry in legacy.iter() {
            let (key, owner) = entry.map_err(map_err(RELAY_PORTS))?;
            if owner.front != 0 {
                maps.turn.port_owners.set(key.port, owner)?;
                moved.ports += 1;
            }
        }
        unpin(dir, RELAY_PORTS)?;
    }
    if let Some(legacy) = open::<u32, TurnAllocation>(dir, LEGACY_TURN_ALLOCATIONS)? {
        for entry in legacy.iter() {
            let (_, allocation) = entry.map_err(map_err(LEGACY_TURN_ALLOCATIONS))?;
            maps.turn.write_allocation(&allocation)?;
            moved.allocations += 1;
        }
        unpin(dir, LEGACY_TURN_ALLOCATIONS)?;
    }
    if let Some(legacy) = open::<u32, WireGuardPair>(dir, LEGACY_WIREGUARD_PAIRS)? {
        for entry in legacy.iter() {
            let (_, pair) = entry.map_err(map_err(LEGACY_WIREGUARD_PAIRS))?;
            super::wireguard_maps::write_pair(pairs, &pair)?;
            moved.pairs += 1;
        }
        unpin(dir, LEGACY_WIREGUARD_PAIRS)?;
    }
    Ok(moved)
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<Option<HashMap<MapData, K, V>>, MapsError> {
    if !dir.join(name).exists() {
        return Ok(None);
    }
    HashMap::try_from(pinned_map(dir, name)?)
        .map(Some)
        .map_err(map_err(name))
}

fn unpin(dir: &Path, name: &str) -> Result<(), MapsError> {
    let path = dir.join(name);
    std::fs::remove_file(&path).map_err(|source| MapsError::Unpin { path, source })
}
