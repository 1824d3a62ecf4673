//! The port-owner array (`port_owners`): which front owns each relay port, indexed by the port.
//!
//! An array update copies the new value over the old in place, so the program may read a mix
//! of the two (see `slot_writes` for sessions). An owner is therefore changed only while its
//! `front` is 0 (no owner: the program ignores the rest), and `front` is set last when a port is
//! taken and cleared first when it is released: one byte, read whole.

use aya::maps::{Array, MapData};
use relay_common::turn::{PORT_OWNER_ENTRIES, PORT_OWNERS, RelayPort, port_owner_index};

use super::{maps::MapsError, slot_writes::marked_writes};

/// The records to write, in order, to turn port owner `current` into `target`.
pub fn owner_writes(current: &RelayPort, target: &RelayPort) -> Vec<RelayPort> {
    marked_writes(current, target, |o| RelayPort { front: 0, ..o })
}

/// Typed access to `port_owners`.
pub struct PortOwners {
    map: Array<MapData, RelayPort>,
}

fn err(source: aya::maps::MapError) -> MapsError {
    MapsError::Map {
        map: PORT_OWNERS,
        source,
    }
}

impl PortOwners {
    /// Wraps the map.
    pub fn new(map: Array<MapData, RelayPort>) -> PortOwners {
        PortOwners { map }
    }

    /// The owner of `port` (raw network order), if it has one.
    pub fn get(&self, port: u16) -> Result<Option<RelayPort>, MapsError> {
        let owner = self.map.get(&port_owner_index(port), 0).map_err(err)?;
        Ok((owner.front != 0).then_some(owner))
    }

    /// Makes `owner` the owner of `port` (raw), in steps no reader can mix up.
    pub fn set(&mut self, port: u16, owner: RelayPort) -> Result<(), MapsError> {
        let index = port_owner_index(port);
        let current = self.map.get(&index, 0).map_err(err)?;
        for step in owner_writes(&current, &owner) {
            self.map.set(index, step, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Releases `port` (raw) if `still` holds for its owner.
    pub fn release_if(
        &mut self,
        port: u16,
        still: impl FnOnce(&RelayPort) -> bool,
    ) -> Result<(), MapsError> {
        let index = port_owner_index(port);
        let current = self.map.get(&index, 0).map_err(err)?;
        if current.front != 0 && still(&current) {
            let released = RelayPort {
                front: 0,
                ..current
            };
            self.map.set(index, released, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Every owned port (raw) with its owner: a scan of all 65 536 entries (start-up, a front
    /// leaving, `relay explain`; never per packet or per request).
    pub fn all(&self) -> Result<Vec<(u16, RelayPort)>, MapsError> {
        let mut out = Vec::new();
        for index in 0..PORT_OWNER_ENTRIES {
            let owner = self.map.get(&index, 0).map_err(err)?;
            if owner.front != 0 {
                out.push((index as u16, owner));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(front: u8, side: u8, slot: u32) -> RelayPort {
        RelayPort {
            front,
            side,
            reserved: [0; 2],
            slot,
        }
    }

    /// What the program makes of a record: the owner, or none (front 0).
    fn seen(r: &RelayPort) -> Option<(u8, u8, u32)> {
        (r.front != 0).then_some((r.front, r.side, r.slot))
    }

    /// Every byte-wise mix of two records.
    fn mixes(a: &RelayPort, b: &RelayPort) -> Vec<RelayPort> {
        let bytes = |r: &RelayPort| {
            let mut v = vec![r.front, r.side, r.reserved[0], r.reserved[1]];
            v.extend_from_slice(&r.slot.to_ne_bytes());
            v
        };
        let (x, y) = (bytes(a), bytes(b));
        (0u32..256)
            .map(|mask| {
                let m: Vec<u8> = (0..8)
                    .map(|i| if mask & (1 << i) != 0 { y[i] } else { x[i] })
                    .collect();
                RelayPort {
                    front: m[0],
                    side: m[1],
                    reserved: [m[2], m[3]],
                    slot: u32::from_ne_bytes([m[4], m[5], m[6], m[7]]),
                }
            })
            .collect()
    }

    #[test]
    fn no_torn_read_shows_an_owner_neither_record_names() {
        let records = [
            owner(0, 0, 0),
            owner(1, 0, 0x0102_0304),
            owner(3, 1, 0x0a0b_0c0d),
            owner(2, 0, 0),
            owner(0, 1, 77),
        ];
        for current in &records {
            for target in &records {
                let steps = owner_writes(current, target);
                assert_eq!(*steps.last().unwrap_or(current), *target);
                let mut before = *current;
                for after in steps {
                    for mix in mixes(&before, &after) {
                        let got = seen(&mix);
                        assert!(
                            got.is_none() || got == seen(&before) || got == seen(&after),
                            "{before:?} → {after:?}: a reader could see {mix:?}"
                        );
                    }
                    before = after;
                }
            }
        }
    }
}
