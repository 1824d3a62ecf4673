//! TURN allocations for the privileged tests, installed the way the daemon installs them: a
//! server `Allocation` through `persist::to_record` into `TurnMaps::put`.

use relay_common::{maps::SessionLimits, turn::ChannelDataHdr};
pub use relay_lab::turn_records::{TURN_PORT, allocation, clock, turn_server};
use relay_userspace::{
    dataplane::turn_maps::TurnMaps,
    fronts::turn::{persist, server::Allocation},
};

use super::Fixture;

impl Fixture {
    /// The sandbox's TURN maps, with [`TURN_PORT`] as the server's port.
    pub fn turn(&self) -> TurnMaps {
        let mut maps = TurnMaps::open_pinned(self.sandbox.pin_dir()).unwrap();
        maps.serve_port(TURN_PORT).unwrap();
        maps
    }
}

/// Writes `allocation` into the maps as the daemon does.
pub fn install(maps: &mut TurnMaps, allocation: &Allocation, limits: SessionLimits) {
    maps.put(&persist::to_record(allocation, limits, &clock()))
        .unwrap();
}

/// ChannelData carrying `data` on `channel`, followed by `trailer` (padding).
pub fn channel_data(channel: u16, data: &[u8], trailer: &[u8]) -> Vec<u8> {
    let mut out = ChannelDataHdr::new(channel, data.len() as u16)
        .to_bytes()
        .to_vec();
    out.extend_from_slice(data);
    out.extend_from_slice(trailer);
    out
}
