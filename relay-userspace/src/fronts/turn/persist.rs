//! Allocations as the pinned maps keep them, and back: what a restarted daemon adopts, what
//! the CLI shows with the daemon down.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use relay_common::{
    maps::{Leg, SessionLimits},
    turn::{
        CLIENT_TCP, CLIENT_TLS, CLIENT_UDP, ChannelBinding, ChannelKey, META_USERNAME_LEN,
        Permission, PermissionKey, RELAYED_V4, RELAYED_V6, TurnAllocation, TurnAllocationMeta,
    },
};

use super::server::{Allocation, Channel, Clock, Families, FiveTuple, Transport};
use crate::{
    control::session::{address_of_leg, leg_at},
    dataplane::turn_maps::TurnRecord,
};

fn transport_code(t: Transport) -> u8 {
    match t {
        Transport::Udp => CLIENT_UDP,
        Transport::Tcp => CLIENT_TCP,
        Transport::Tls => CLIENT_TLS,
    }
}

fn permission_key(slot: u32, ip: IpAddr) -> PermissionKey {
    let leg = leg_at(SocketAddr::new(ip, 0));
    PermissionKey {
        addr: leg.addr,
        family: leg.family,
        reserved: [0; 3],
        slot,
    }
}

/// The maps' records of `allocation` as of `clock` (only usable channels: live, with a live
/// permission).
pub fn to_record(allocation: &Allocation, limits: SessionLimits, clock: &Clock) -> TurnRecord {
    let slot = allocation.slot;
    let client = leg_at(allocation.five_tuple.client);
    let mut username = [0u8; META_USERNAME_LEN];
    let bytes = allocation.username.as_bytes();
    username[..bytes.len().min(META_USERNAME_LEN)]
        .copy_from_slice(&bytes[..bytes.len().min(META_USERNAME_LEN)]);
    let families = if allocation.families.v4 {
        RELAYED_V4
    } else {
        0
    } | if allocation.families.v6 {
        RELAYED_V6
    } else {
        0
    };
    let transport = transport_code(allocation.five_tuple.transport);
    TurnRecord {
        allocation: TurnAllocation {
            client,
            relay_port: allocation.port.to_be(),
            families,
            transport,
            slot,
            limits,
            server_port: allocation.five_tuple.server.port().to_be(),
            live: 1,
        },
        meta: TurnAllocationMeta {
            created_unix_ms: allocation.created_unix_ms,
            expires_unix_ms: clock.unix_ms_of(allocation.expires),
            username,
            sha256: allocation.sha256 as u8,
            reserved: [0; 7],
        },
        channels: allocation
            .live_channels(clock.now)
            .map(|(channel, peer)| {
                (
                    ChannelKey {
                        client,
                        channel: channel.to_be(),
                        transport,
                        reserved: 0,
                    },
                    ChannelBinding {
                        peer: leg_at(peer),
                        slot,
                        expires_unix_ms: clock.unix_ms_of(allocation.channels[&channel].expires),
                    },
                )
            })
            .collect(),
        permissions: allocation
            .permissions
            .iter()
            .filter(|(_, e)| **e > clock.now)
            .map(|(ip, e)| {
                (
                    permission_key(slot, *ip),
                    Permission {
                        expires_unix_ms: clock.unix_ms_of(*e),
                    },
                )
            })
            .collect(),
    }
}

/// The allocation a record describes, with `server` the TURN listen address of the client's
/// family; `None` when it cannot be adopted (a TCP or TLS client, whose connection died with
/// the daemon; an unreadable address).
pub fn from_record(
    record: &TurnRecord,
    server: impl Fn(bool) -> Option<SocketAddr>,
    clock: &Clock,
) -> Option<Allocation> {
    let a = &record.allocation;
    if a.transport != CLIENT_UDP {
        return None;
    }
    let client = address_of_leg(&a.client)?;
    let server = server(client.is_ipv6())?;
    let username_len = record
        .meta
        .username
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(META_USERNAME_LEN);
    let username = String::from_utf8(record.meta.username[..username_len].to_vec()).ok()?;
    let permissions: HashMap<IpAddr, std::time::Instant> = record
        .permissions
        .iter()
        .filter_map(|(key, p)| {
            let leg = Leg {
                addr: key.addr,
                port: 0,
                family: key.family,
                bound: 1,
            };
            Some((
                address_of_leg(&leg)?.ip(),
                clock.instant_of(p.expires_unix_ms),
            ))
        })
        .collect();
    let channels: BTreeMap<u16, Channel> = record
        .channels
        .iter()
        .filter_map(|(key, binding)| {
            Some((
                u16::from_be(key.channel),
                Channel {
                    peer: address_of_leg(&binding.peer)?,
                    expires: clock.instant_of(binding.expires_unix_ms),
                },
            ))
        })
        .collect();
    Some(Allocation {
        slot: a.slot,
        five_tuple: FiveTuple {
            client,
            server,
            transport: Transport::Udp,
        },
        username,
        sha256: record.meta.sha256 != 0,
        port: u16::from_be(a.relay_port),
        families: Families {
            v4: a.families & RELAYED_V4 != 0,
            v6: a.families & RELAYED_V6 != 0,
        },
        created_unix_ms: record.meta.created_unix_ms,
        expires: clock.instant_of(record.meta.expires_unix_ms),
        transaction: 0,
        permissions,
        channels,
    })
}

/// The username stored in a record.
pub fn username_of(meta: &TurnAllocationMeta) -> String {
    let len = meta
        .username
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(META_USERNAME_LEN);
    String::from_utf8_lossy(&meta.username[..len]).into_owned()
}

/// The client address stored in a record.
pub fn client_of(allocation: &TurnAllocation) -> Option<SocketAddr> {
    address_of_leg(&allocation.client)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn an_allocation_round_trips_through_its_records() {
        let now = Instant::now();
        let clock = Clock {
            now,
            unix_ms: 1_800_000_000_000,
        };
        let peer: SocketAddr = "198.51.100.20:4000".parse().unwrap();
        let mut allocation = Allocation {
            slot: 7,
            five_tuple: FiveTuple {
                client: "192.0.2.5:50000".parse().unwrap(),
                server: "203.0.113.1:3478".parse().unwrap(),
                transport: Transport::Udp,
            },
            username: "1800003600:alice".into(),
            sha256: true,
            port: 50_002,
            families: Families { v4: true, v6: true },
            created_unix_ms: 1_799_999_000_000,
            expires: now + Duration::from_secs(600),
            transaction: 42,
            permissions: [(peer.ip(), now + Duration::from_secs(300))].into(),
            channels: [(
                0x4001,
                Channel {
                    peer,
                    expires: now + Duration::from_secs(600),
                },
            )]
            .into(),
        };
        let record = to_record(&allocation, SessionLimits::default(), &clock);
        assert_eq!(record.channels.len(), 1);
        assert_eq!(record.permissions.len(), 1);
        let back = from_record(&record, |_| Some(allocation.five_tuple.server), &clock).unwrap();
        assert_eq!(back.five_tuple, allocation.five_tuple);
        assert_eq!(back.username, allocation.username);
        assert_eq!(
            (back.port, back.families, back.sha256),
            (50_002, allocation.families, true)
        );
        assert_eq!(back.channels[&0x4001].peer, peer);
        assert!(back.permits(peer.ip(), now));
        assert!(back.expires > now + Duration::from_secs(599));
        // A channel whose permission lapsed is not written for the fast path.
        allocation.permissions.clear();
        assert!(
            to_record(&allocation, SessionLimits::default(), &clock)
                .channels
                .is_empty()
        );
        // TCP clients are not adopted: their connection is gone.
        let mut tcp = record.clone();
        tcp.allocation.transport = CLIENT_TCP;
        assert!(from_record(&tcp, |_| Some(allocation.five_tuple.server), &clock).is_none());
    }
}
