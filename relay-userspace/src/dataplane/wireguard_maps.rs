//! Typed access to the WireGuard pair maps (`relay_common::wireguard`): the daemon writes a
//! pair's ports into the port map and its legs into the pair map as it learns them. A pair's
//! counters are the sessions' (its slot is a session slot), read here for tests and tools that
//! open only these maps.

use aya::maps::{Array, Map, MapData, MapError, PerCpuArray};
use relay_common::{
    maps::{PORT_OWNERS, RelayPort, SESSION_STATS, SessionStats},
    wireguard::{FRONT_WIREGUARD, WIREGUARD_PAIRS, WireGuardPair},
};

use super::{maps::MapsError, port_owners::PortOwners, slot_writes::marked_writes};

/// The WireGuard maps, typed.
pub struct WireGuardMaps {
    /// Relay port → owner (shared with TURN).
    pub port_owners: PortOwners,
    /// Slot → pair (`id` 0: none; write through [`WireGuardMaps::put`]).
    pub pairs: Array<MapData, WireGuardPair>,
    /// Slot → per-CPU fast-path counters (the sessions' map).
    pub stats: PerCpuArray<MapData, SessionStats>,
}

fn err(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(err(name))
}

/// Writes `pair` into its slot of `pairs`, in marked steps (only while its `id` is 0 does
/// anything but the id change).
pub fn write_pair<T: std::borrow::BorrowMut<MapData>>(
    pairs: &mut Array<T, WireGuardPair>,
    pair: &WireGuardPair,
) -> Result<(), MapsError> {
    let current = pairs.get(&pair.slot, 0).map_err(err(WIREGUARD_PAIRS))?;
    for step in marked_writes(&current, pair, |p| WireGuardPair { id: 0, ..p }) {
        pairs
            .set(pair.slot, step, 0)
            .map_err(err(WIREGUARD_PAIRS))?;
    }
    Ok(())
}

impl WireGuardMaps {
    /// Reopens the maps pinned in `dir`.
    pub fn open_pinned(dir: &std::path::Path) -> Result<WireGuardMaps, MapsError> {
        let get = |name| super::maps::pinned_map(dir, name);
        Ok(WireGuardMaps {
            port_owners: PortOwners::new(typed(PORT_OWNERS, get(PORT_OWNERS)?)?),
            pairs: typed(WIREGUARD_PAIRS, get(WIREGUARD_PAIRS)?)?,
            stats: typed(SESSION_STATS, get(SESSION_STATS)?)?,
        })
    }

    /// Writes `pair` (its legs bound or not) and claims its two ports for it. The pair is
    /// written first, so a port never names a missing pair.
    pub fn put(&mut self, pair: &WireGuardPair) -> Result<(), MapsError> {
        write_pair(&mut self.pairs, pair)?;
        for (side, port) in pair.ports.iter().enumerate() {
            let owner = RelayPort {
                front: FRONT_WIREGUARD,
                side: side as u8,
                reserved: [0; 2],
                slot: pair.slot,
            };
            self.port_owners.set(*port, owner)?;
        }
        Ok(())
    }

    /// Removes the pair in `slot` and its ports (the ports first, so none names a missing pair).
    pub fn delete(&mut self, slot: u32) -> Result<(), MapsError> {
        let Some(pair) = self.get(slot)? else {
            return Ok(());
        };
        for port in pair.ports {
            self.port_owners
                .release_if(port, |p| p.front == FRONT_WIREGUARD && p.slot == slot)?;
        }
        // Retired by its id alone; the rest stays until the slot's next pair.
        self.pairs
            .set(slot, WireGuardPair { id: 0, ..pair }, 0)
            .map_err(err(WIREGUARD_PAIRS))
    }

    /// The pair in `slot`, if one is there.
    pub fn get(&self, slot: u32) -> Result<Option<WireGuardPair>, MapsError> {
        if slot >= self.pairs.len() {
            return Ok(None);
        }
        let pair = self.pairs.get(&slot, 0).map_err(err(WIREGUARD_PAIRS))?;
        Ok((pair.id != 0).then_some(pair))
    }

    /// Every pair: a scan of every slot (one system call each: a daemon's start, leaving a
    /// configuration without WireGuard, `relay sessions`; never per packet or per request).
    pub fn all(&self) -> Result<Vec<WireGuardPair>, MapsError> {
        let mut out = Vec::new();
        for slot in 0..self.pairs.len() {
            if let Some(pair) = self.get(slot)? {
                out.push(pair);
            }
        }
        Ok(out)
    }

    /// Fast-path counters of `slot`, summed over CPUs.
    pub fn kernel_stats(&self, slot: u32) -> Result<SessionStats, MapsError> {
        let per_cpu = self.stats.get(&slot, 0).map_err(err(SESSION_STATS))?;
        Ok(SessionStats::sum(per_cpu.iter()))
    }
}
