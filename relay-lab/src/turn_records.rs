//! TURN allocations as the daemon's TURN server holds them, for the sandbox's tests and the
//! micro-benchmark: built here, written through the daemon's own code (`persist::to_record`
//! into `TurnMaps::put`).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use relay_userspace::fronts::turn::server::{
    Allocation, Channel, Clock, Families, FiveTuple, Transport,
};

use crate::sandbox::relay_at;

/// The TURN server's port in the sandbox.
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
    relay_at(client, TURN_PORT)
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
