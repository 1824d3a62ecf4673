//! Typed access to the TURN maps (`relay_common::turn`): the daemon mirrors its allocations
//! into them, a restarted daemon adopts from them, the CLI reads them.

use std::collections::HashSet;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use relay_common::{
    maps::SessionStats,
    turn::{
        self as names, ChannelBinding, ChannelKey, FRONT_TURN, FRONT_TURN_SERVER, PeerChannel,
        PeerKey, Permission, PermissionKey, RelayPort, TurnAllocation, TurnAllocationMeta,
        TurnKeys,
    },
};

use super::{maps::MapsError, port_owners::PortOwners, slot_writes::marked_writes};

/// Capacity of the binding maps (channels, peers, permissions) for `max_allocations`: four per
/// allocation on average, at least 1024.
pub fn binding_capacity(max_allocations: u32) -> u32 {
    max_allocations.saturating_mul(4).max(1024)
}

/// One allocation as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnRecord {
    /// The fast path's view.
    pub allocation: TurnAllocation,
    /// The daemon's record.
    pub meta: TurnAllocationMeta,
    /// Its live channels (with their peer-side entries).
    pub channels: Vec<(ChannelKey, ChannelBinding)>,
    /// Its permissions.
    pub permissions: Vec<(PermissionKey, Permission)>,
}

/// The TURN maps, typed.
pub struct TurnMaps {
    /// Relay port → owner.
    pub port_owners: PortOwners,
    /// Slot → allocation (`live` 0: none; write through [`TurnMaps::put`]).
    pub allocations: Array<MapData, TurnAllocation>,
    /// Slot → the daemon's record.
    pub meta: HashMap<MapData, u32, TurnAllocationMeta>,
    /// (client, channel) → binding.
    pub channels: HashMap<MapData, ChannelKey, ChannelBinding>,
    /// (slot, peer) → channel.
    pub peers: HashMap<MapData, PeerKey, PeerChannel>,
    /// (slot, peer IP) → permission.
    pub permissions: HashMap<MapData, PermissionKey, Permission>,
    /// Slot → per-CPU fast-path counters.
    pub stats: PerCpuArray<MapData, SessionStats>,
    /// Slot → userspace counters.
    pub user_stats: Array<MapData, SessionStats>,
    /// Persistent secrets.
    pub keys: Array<MapData, TurnKeys>,
    /// The binding entries of every slot that has any: built by one scan of the maps the
    /// first time it is needed (a restarted daemon's allocations), then kept up to date by
    /// [`TurnMaps::put`] and [`TurnMaps::delete`], so a change touches only its allocation's
    /// entries. (Scanning the maps for every new allocation's slot made creating n allocations
    /// cost n² map reads: the load harness's crowd spent more CPU in `bpf_map_get_next_key`
    /// than anywhere else.)
    installed: Option<std::collections::HashMap<u32, Installed>>,
}

/// The binding entries of one slot.
#[derive(Clone, Debug, Default)]
struct Installed {
    channels: Vec<(ChannelKey, ChannelBinding)>,
    permissions: Vec<PermissionKey>,
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

/// `Ok` for a removal whose key was already gone.
fn gone(r: Result<(), MapError>, map: &'static str) -> Result<(), MapsError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if super::maps::key_absent(&e) => Ok(()),
        Err(source) => Err(MapsError::Map { map, source }),
    }
}

impl TurnMaps {
    /// Every TURN map name.
    pub const NAMES: [&'static str; 9] = [
        names::PORT_OWNERS,
        names::TURN_ALLOCATIONS,
        names::TURN_ALLOCATION_META,
        names::TURN_CHANNELS,
        names::TURN_PEERS,
        names::TURN_PERMISSIONS,
        names::TURN_STATS,
        names::TURN_USERSPACE_STATS,
        names::TURN_KEYS,
    ];

    /// Reopens the TURN maps pinned in `dir` (the TURN front's own handles next to the plane's).
    pub fn open_pinned(dir: &std::path::Path) -> Result<TurnMaps, MapsError> {
        Self::assemble(|name| super::maps::pinned_map(dir, name))
    }

    /// Builds the typed set from a source of untyped maps by name.
    pub fn assemble(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<TurnMaps, MapsError> {
        Ok(TurnMaps {
            port_owners: PortOwners::new(typed(names::PORT_OWNERS, get(names::PORT_OWNERS)?)?),
            allocations: typed(names::TURN_ALLOCATIONS, get(names::TURN_ALLOCATIONS)?)?,
            meta: typed(
                names::TURN_ALLOCATION_META,
                get(names::TURN_ALLOCATION_META)?,
            )?,
            channels: typed(names::TURN_CHANNELS, get(names::TURN_CHANNELS)?)?,
            peers: typed(names::TURN_PEERS, get(names::TURN_PEERS)?)?,
            permissions: typed(names::TURN_PERMISSIONS, get(names::TURN_PERMISSIONS)?)?,
            stats: typed(names::TURN_STATS, get(names::TURN_STATS)?)?,
            user_stats: typed(
                names::TURN_USERSPACE_STATS,
                get(names::TURN_USERSPACE_STATS)?,
            )?,
            keys: typed(names::TURN_KEYS, get(names::TURN_KEYS)?)?,
            installed: None,
        })
    }

    /// The nonce key kept with the allocations, creating it from `fresh` on first use.
    pub fn nonce_key(&mut self, fresh: [u8; 32]) -> Result<[u8; 32], MapsError> {
        let stored = self.keys.get(&0, 0).map_err(err(names::TURN_KEYS))?;
        if stored.nonce_key != [0; 32] {
            return Ok(stored.nonce_key);
        }
        self.keys
            .set(0, TurnKeys { nonce_key: fresh }, 0)
            .map_err(err(names::TURN_KEYS))?;
        Ok(fresh)
    }

    /// Writes an allocation (its port entry, records, channels and permissions), replacing
    /// the bindings it had.
    pub fn put(&mut self, record: &TurnRecord) -> Result<(), MapsError> {
        let slot = record.allocation.slot;
        self.meta
            .insert(slot, record.meta, 0)
            .map_err(err(names::TURN_ALLOCATION_META))?;
        self.write_allocation(&record.allocation)?;
        self.port_owners.set(
            record.allocation.relay_port,
            RelayPort {
                front: FRONT_TURN,
                side: 0,
                reserved: [0; 2],
                slot,
            },
        )?;
        let want_channels: HashSet<ChannelKey> = record.channels.iter().map(|(k, _)| *k).collect();
        let want_permissions: HashSet<PermissionKey> =
            record.permissions.iter().map(|(k, _)| *k).collect();
        self.remove_bindings(
            slot,
            |key| !want_channels.contains(key),
            |key| !want_permissions.contains(key),
        )?;
        for (key, permission) in &record.permissions {
            self.permissions
                .insert(key, permission, 0)
                .map_err(err(names::TURN_PERMISSIONS))?;
        }
        for (key, binding) in &record.channels {
            self.peers
                .insert(
                    PeerKey {
                        peer: binding.peer,
                        slot,
                    },
                    PeerChannel {
                        channel: key.channel,
                        reserved: 0,
                    },
                    0,
                )
                .map_err(err(names::TURN_PEERS))?;
            self.channels
                .insert(key, binding, 0)
                .map_err(err(names::TURN_CHANNELS))?;
        }
        let installed = Installed {
            channels: record.channels.clone(),
            permissions: want_permissions.into_iter().collect(),
        };
        self.index()?.insert(slot, installed);
        Ok(())
    }

    /// Removes the channels (with their reverse peer entries) and permissions of `slot` that
    /// the filters pick.
    fn remove_bindings(
        &mut self,
        slot: u32,
        channel: impl Fn(&ChannelKey) -> bool,
        permission: impl Fn(&PermissionKey) -> bool,
    ) -> Result<(), MapsError> {
        let (channels, permissions) = self.bindings_of(slot)?;
        for (key, binding) in channels.into_iter().filter(|(k, _)| channel(k)) {
            gone(self.channels.remove(&key), names::TURN_CHANNELS)?;
            let peer = PeerKey {
                peer: binding.peer,
                slot,
            };
            gone(self.peers.remove(&peer), names::TURN_PEERS)?;
        }
        for key in permissions.into_iter().filter(|k| permission(k)) {
            gone(self.permissions.remove(&key), names::TURN_PERMISSIONS)?;
        }
        Ok(())
    }

    /// The channel and permission entries of `slot`.
    #[allow(clippy::type_complexity)]
    fn bindings_of(
        &mut self,
        slot: u32,
    ) -> Result<(Vec<(ChannelKey, ChannelBinding)>, Vec<PermissionKey>), MapsError> {
        let i = self.index()?.get(&slot).cloned().unwrap_or_default();
        Ok((i.channels, i.permissions))
    }

    /// Every slot's binding entries, from one scan of the maps the first time.
    fn index(&mut self) -> Result<&mut std::collections::HashMap<u32, Installed>, MapsError> {
        if self.installed.is_none() {
            let mut index: std::collections::HashMap<u32, Installed> = Default::default();
            for (key, binding) in self.scan_channels()? {
                index
                    .entry(binding.slot)
                    .or_default()
                    .channels
                    .push((key, binding));
            }
            for (key, _) in self.scan_permissions()? {
                index.entry(key.slot).or_default().permissions.push(key);
            }
            self.installed = Some(index);
        }
        Ok(self.installed.as_mut().expect("built above"))
    }

    fn scan_channels(&self) -> Result<Vec<(ChannelKey, ChannelBinding)>, MapsError> {
        self.channels
            .iter()
            .map(|e| e.map_err(err(names::TURN_CHANNELS)))
            .collect()
    }

    fn scan_permissions(&self) -> Result<Vec<(PermissionKey, Permission)>, MapsError> {
        self.permissions
            .iter()
            .map(|e| e.map_err(err(names::TURN_PERMISSIONS)))
            .collect()
    }

    /// Removes an allocation and everything of it.
    pub fn delete(&mut self, slot: u32) -> Result<(), MapsError> {
        let allocation = self.allocation(slot)?;
        if let Some(allocation) = allocation {
            self.port_owners.release_if(allocation.relay_port, |p| {
                p.front == FRONT_TURN && p.slot == slot
            })?;
        }
        self.remove_bindings(slot, |_| true, |_| true)?;
        self.index()?.remove(&slot);
        if let Some(allocation) = allocation {
            // Retired by its marker alone; the rest stays until the slot's next allocation.
            let retired = TurnAllocation {
                live: 0,
                ..allocation
            };
            self.allocations
                .set(slot, retired, 0)
                .map_err(err(names::TURN_ALLOCATIONS))?;
        }
        gone(self.meta.remove(&slot), names::TURN_ALLOCATION_META)
    }

    /// Writes `allocation` (marked live) into its slot, in marked steps.
    pub fn write_allocation(&mut self, allocation: &TurnAllocation) -> Result<(), MapsError> {
        let slot = allocation.slot;
        let current = self
            .allocations
            .get(&slot, 0)
            .map_err(err(names::TURN_ALLOCATIONS))?;
        let target = TurnAllocation {
            live: 1,
            ..*allocation
        };
        for step in marked_writes(&current, &target, |a| TurnAllocation { live: 0, ..a }) {
            self.allocations
                .set(slot, step, 0)
                .map_err(err(names::TURN_ALLOCATIONS))?;
        }
        Ok(())
    }

    /// The allocation in `slot`, if one is live there.
    pub fn allocation(&self, slot: u32) -> Result<Option<TurnAllocation>, MapsError> {
        if slot >= self.allocations.len() {
            return Ok(None);
        }
        let allocation = self
            .allocations
            .get(&slot, 0)
            .map_err(err(names::TURN_ALLOCATIONS))?;
        Ok((allocation.live != 0).then_some(allocation))
    }

    /// The slots of every allocation, through the daemon's records (one per allocation)
    /// rather than a scan of every slot of the array.
    fn live_slots(&self) -> Result<Vec<u32>, MapsError> {
        let mut slots = Vec::new();
        for slot in self.meta.keys() {
            let slot = slot.map_err(err(names::TURN_ALLOCATION_META))?;
            if self.allocation(slot)?.is_some() {
                slots.push(slot);
            }
        }
        Ok(slots)
    }

    /// Every allocation with its records, sorted by slot (one pass over each map).
    pub fn all(&self) -> Result<Vec<TurnRecord>, MapsError> {
        let mut channels: std::collections::HashMap<u32, Vec<(ChannelKey, ChannelBinding)>> =
            Default::default();
        for (key, binding) in self.scan_channels()? {
            channels
                .entry(binding.slot)
                .or_default()
                .push((key, binding));
        }
        let mut permissions: std::collections::HashMap<u32, Vec<(PermissionKey, Permission)>> =
            Default::default();
        for (key, permission) in self.scan_permissions()? {
            permissions
                .entry(key.slot)
                .or_default()
                .push((key, permission));
        }
        let mut out = Vec::new();
        for slot in self.live_slots()? {
            let Some(allocation) = self.allocation(slot)? else {
                continue;
            };
            let meta = match self.meta.get(&slot, 0) {
                Ok(m) => m,
                Err(MapError::KeyNotFound) => TurnAllocationMeta::default(),
                Err(source) => {
                    return Err(MapsError::Map {
                        map: names::TURN_ALLOCATION_META,
                        source,
                    });
                }
            };
            out.push(TurnRecord {
                allocation,
                meta,
                channels: channels.remove(&slot).unwrap_or_default(),
                permissions: permissions.remove(&slot).unwrap_or_default(),
            });
        }
        out.sort_by_key(|r| r.allocation.slot);
        Ok(out)
    }

    /// Fast-path counters of `slot`, summed over CPUs.
    pub fn kernel_stats(&self, slot: u32) -> Result<SessionStats, MapsError> {
        let per_cpu = self.stats.get(&slot, 0).map_err(err(names::TURN_STATS))?;
        Ok(SessionStats::sum(per_cpu.iter()))
    }

    /// Userspace counters of `slot`, as last flushed.
    pub fn userspace_stats(&self, slot: u32) -> Result<SessionStats, MapsError> {
        self.user_stats
            .get(&slot, 0)
            .map_err(err(names::TURN_USERSPACE_STATS))
    }

    /// Stores the userspace counters of `slot`.
    pub fn set_userspace_stats(
        &mut self,
        slot: u32,
        stats: &SessionStats,
    ) -> Result<(), MapsError> {
        self.user_stats
            .set(slot, stats, 0)
            .map_err(err(names::TURN_USERSPACE_STATS))
    }

    /// Zeroes both counter slots of `slot` before a new allocation uses it.
    pub fn reset_slot(&mut self, slot: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
        let zeros =
            PerCpuValues::try_from(vec![SessionStats::default(); cpus]).map_err(MapsError::Cpus)?;
        self.stats
            .set(slot, zeros, 0)
            .map_err(err(names::TURN_STATS))?;
        self.user_stats
            .set(slot, SessionStats::default(), 0)
            .map_err(err(names::TURN_USERSPACE_STATS))
    }

    /// Makes `port` the TURN server's port in the fast path (ChannelData from clients arrives
    /// there), and no other port: one a previous configuration used is released.
    pub fn serve_port(&mut self, port: u16) -> Result<(), MapsError> {
        let raw = port.to_be();
        for old in self.server_ports()? {
            if old != raw {
                self.port_owners
                    .release_if(old, |p| p.front == FRONT_TURN_SERVER)?;
            }
        }
        self.port_owners.set(
            raw,
            RelayPort {
                front: FRONT_TURN_SERVER,
                side: 0,
                reserved: [0; 2],
                slot: 0,
            },
        )
    }

    /// The TURN server's ports (raw).
    fn server_ports(&self) -> Result<Vec<u16>, MapsError> {
        Ok(self
            .port_owners
            .all()?
            .into_iter()
            .filter(|(_, owner)| owner.front == FRONT_TURN_SERVER)
            .map(|(port, _)| port)
            .collect())
    }

    /// Removes every allocation and the server's port: TURN is no longer configured, and the
    /// fast path must not go on relaying what no daemon manages. The nonce key stays.
    pub fn clear(&mut self) -> Result<usize, MapsError> {
        let slots = self.live_slots()?;
        for slot in &slots {
            self.delete(*slot)?;
        }
        for port in self.server_ports()? {
            self.port_owners
                .release_if(port, |p| p.front == FRONT_TURN_SERVER)?;
        }
        Ok(slots.len())
    }

    /// Capacity of the allocation map.
    pub fn capacity(&self) -> u32 {
        self.allocations.len()
    }
}
