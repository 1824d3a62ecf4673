//! TURN allocations for the privileged tests, installed the way the daemon installs them: a
//! server `Allocation` through `persist::to_record` into `TurnMaps::put`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use relay_common::{maps::SessionLimits, turn::ChannelDataHdr};
use relay_userspace::{
    dataplane::turn_maps::TurnMaps,
    fronts::turn::{
        persist,
        server::{Allocation, Channel, Clock, Families, FiveTuple, Transport},
    },
};

use super::{Fixture, RELAY_V4, RELAY_V6};

/// The TURN server's port in these tests.
pub const TURN_PORT: u16 = 3478;

/// Now, as the TURN server's clock.
pub fn clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    }
}

/// The TURN port of the relay's address in `client`'s family.
pub fn turn_server(client: SocketAddr) -> SocketAddr {
    match client {
        SocketAddr::V4(_) => SocketAddr::new(RELAY_V4.into(), TURN_PORT),
        SocketAddr::V6(_) => SocketAddr::new(RELAY_V6.into(), TURN_PORT),
    }
}

/// A dual-stack allocation of `client` relaying on `port`, with `channels` bound (each peer
/// with a permission) and further permissions for `permitted`.
pub fn allocation(
    slot: u32,
    client: SocketAddr,
    transport: Transport,
    port: u16,
    channels: &[(u16, SocketAddr)],
    permitted: &[IpAddr],
) -> Allocation {
    let now = Instant::now();
    let later = now + Duration::from_secs(300);
    let mut permissions: HashMap<IpAddr, Instant> =
        permitted.iter().map(|ip| (*ip, later)).collect();
    for (_, peer) in channels {
        permissions.insert(peer.ip(), later);
    }
    Allocation {
        slot,
        five_tuple: FiveTuple {
            client,
            server: turn_server(client),
            transport,
        },
        username: "alice".into(),
        sha256: false,
        port,
        families: Families { v4: true, v6: true },
        created_unix_ms: clock().unix_ms,
        expires: now + Duration::from_secs(600),
        transaction: 1,
        permissions,
        channels: channels
            .iter()
            .map(|(n, peer)| {
                (
                    *n,
                    Channel {
                        peer: *peer,
                        expires: later,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

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
