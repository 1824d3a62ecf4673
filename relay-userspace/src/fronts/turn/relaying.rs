//! Relaying in userspace: the tables the data path reads (a mirror of the server's allocations,
//! updated on every change) and the decisions for each datagram, without sockets. The rules are
//! the kernel's: data from a client goes to a peer only over a bound channel whose peer has a
//! live permission, or in a Send indication to a peer with a live permission; data from a peer
//! reaches the client only when its IP has a permission — as ChannelData when the peer's address
//! has a channel, else in a Data indication. Nothing here refreshes anything.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    ops::Range,
    sync::Arc,
};

use dashmap::DashMap;
use relay_common::{
    maps::SessionLimits,
    turn::{CHANNEL_DATA_HLEN, ChannelDataHdr, ToClient, TurnDatagram},
    verdict::Reason,
};
use stun_types::message::{Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec};
use turn_types::{
    attribute::{Data, XorPeerAddress},
    message::{DATA, SEND},
};

use super::server::{Allocation, FiveTuple, TurnSettings};
use crate::control::address_policy::normalise;

/// What the data path knows of one allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Its slot (counters).
    pub slot: u32,
    /// The client.
    pub five_tuple: FiveTuple,
    /// Its relayed port.
    pub port: u16,
    /// Rate limits per direction.
    pub limits: SessionLimits,
}

/// The allocations as the data path reads them: lock-free lookups from any thread.
#[derive(Default)]
pub struct RelayTables {
    routes: DashMap<u32, Arc<Route>>,
    clients: DashMap<FiveTuple, u32>,
    channels: DashMap<(FiveTuple, u16), (u32, SocketAddr)>,
    peers: DashMap<(u32, SocketAddr), u16>,
    permissions: DashMap<(u32, IpAddr), ()>,
    /// What was installed per slot, to remove exactly that.
    installed: DashMap<u32, Installed>,
}

#[derive(Clone, Debug, Default)]
struct Installed {
    five_tuple: Option<FiveTuple>,
    channels: HashSet<(u16, SocketAddr)>,
    permissions: HashSet<IpAddr>,
}

impl RelayTables {
    /// Empty tables.
    pub fn new() -> RelayTables {
        RelayTables::default()
    }

    /// Makes the tables match `allocation` as of `now` (only live channels with live
    /// permissions are usable).
    pub fn sync(&self, allocation: &Allocation, settings: &TurnSettings, now: std::time::Instant) {
        let slot = allocation.slot;
        let five = allocation.five_tuple;
        let want_channels: HashSet<(u16, SocketAddr)> = allocation.live_channels(now).collect();
        let want_permissions: HashSet<IpAddr> = allocation
            .permissions
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(ip, _)| *ip)
            .collect();
        let mut installed = self.installed.entry(slot).or_default();
        for (channel, peer) in installed.channels.difference(&want_channels) {
            self.channels.remove(&(five, *channel));
            self.peers.remove(&(slot, *peer));
        }
        for ip in installed.permissions.difference(&want_permissions) {
            self.permissions.remove(&(slot, *ip));
        }
        for ip in &want_permissions {
            self.permissions.insert((slot, *ip), ());
        }
        for (channel, peer) in &want_channels {
            self.channels.insert((five, *channel), (slot, *peer));
            self.peers.insert((slot, *peer), *channel);
        }
        installed.channels = want_channels;
        installed.permissions = want_permissions;
        installed.five_tuple = Some(five);
        self.clients.insert(five, slot);
        self.routes.insert(
            slot,
            Arc::new(Route {
                slot,
                five_tuple: five,
                port: allocation.port,
                limits: settings.limits,
            }),
        );
    }

    /// Removes everything of `slot`.
    pub fn remove(&self, slot: u32) {
        let Some((_, installed)) = self.installed.remove(&slot) else {
            return;
        };
        if let Some(five) = installed.five_tuple {
            for (channel, peer) in installed.channels {
                self.channels.remove(&(five, channel));
                self.peers.remove(&(slot, peer));
            }
            self.clients.remove(&five);
        }
        for ip in installed.permissions {
            self.permissions.remove(&(slot, ip));
        }
        self.routes.remove(&slot);
    }

    /// The route of `slot`.
    pub fn route(&self, slot: u32) -> Option<Arc<Route>> {
        self.routes.get(&slot).map(|r| r.clone())
    }

    /// Number of allocations.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn permits(&self, slot: u32, ip: IpAddr) -> bool {
        self.permissions.contains_key(&(slot, normalise(ip)))
    }
}

/// What to do with a datagram from a client on the TURN port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromClient {
    /// Send `payload[range]` from the allocation's relayed port to `peer`.
    ToPeer {
        /// The allocation.
        slot: u32,
        /// Its relayed port.
        port: u16,
        /// The peer.
        peer: SocketAddr,
        /// The application data within the datagram.
        range: Range<usize>,
        /// Its rate limits.
        limits: SessionLimits,
    },
    /// A STUN request for the server.
    Stun,
    /// Dropped, counted under the reason.
    Drop(Reason),
}

/// Decides a datagram from `five_tuple` on the TURN port.
pub fn from_client(payload: &[u8], five_tuple: &FiveTuple, tables: &RelayTables) -> FromClient {
    match TurnDatagram::classify(payload) {
        TurnDatagram::Malformed => FromClient::Drop(Reason::DroppedTurnMalformed),
        TurnDatagram::ChannelData { channel, len } => {
            let Some(route) = tables.channels.get(&(*five_tuple, channel)) else {
                return FromClient::Drop(Reason::DroppedTurnUnknownChannel);
            };
            let (slot, peer) = *route;
            drop(route);
            let Some(r) = tables.route(slot) else {
                return FromClient::Drop(Reason::DroppedTurnNoAllocation);
            };
            FromClient::ToPeer {
                slot,
                port: r.port,
                peer,
                range: CHANNEL_DATA_HLEN..CHANNEL_DATA_HLEN + len,
                limits: r.limits,
            }
        }
        TurnDatagram::Stun => {
            let Ok(message) = Message::from_bytes(payload) else {
                return FromClient::Drop(Reason::DroppedTurnMalformed);
            };
            if message.has_class(MessageClass::Request) {
                return FromClient::Stun;
            }
            if !(message.has_class(MessageClass::Indication) && message.method() == SEND) {
                return FromClient::Drop(Reason::DroppedTurnMalformed);
            }
            send_indication(payload, &message, five_tuple, tables)
        }
    }
}

fn send_indication(
    payload: &[u8],
    message: &Message,
    five_tuple: &FiveTuple,
    tables: &RelayTables,
) -> FromClient {
    let Some(slot) = tables.clients.get(five_tuple).map(|s| *s) else {
        return FromClient::Drop(Reason::DroppedTurnNoAllocation);
    };
    let (Ok(peer), Ok(data)) = (
        message.attribute::<XorPeerAddress>(),
        message.attribute::<Data>(),
    ) else {
        return FromClient::Drop(Reason::DroppedTurnMalformed);
    };
    let peer = peer.addr(message.transaction_id());
    let peer = SocketAddr::new(normalise(peer.ip()), peer.port());
    if !tables.permits(slot, peer.ip()) {
        return FromClient::Drop(Reason::DroppedTurnNoPermission);
    }
    let Some(route) = tables.route(slot) else {
        return FromClient::Drop(Reason::DroppedTurnNoAllocation);
    };
    let data = data.data();
    // DATA's value is a slice of the datagram itself.
    let start = data.as_ptr() as usize - payload.as_ptr() as usize;
    FromClient::ToPeer {
        slot,
        port: route.port,
        peer,
        range: start..start + data.len(),
        limits: route.limits,
    }
}

/// How a datagram from a peer reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromPeer {
    /// Framed as ChannelData on this channel.
    Channel(u16),
    /// In a Data indication (a permission but no channel).
    Indication,
    /// Dropped, counted under the reason.
    Drop(Reason),
}

/// Decides a datagram from `peer` to `slot`'s relayed port (the kernel's rule:
/// [`relay_common::turn::to_client`]).
pub fn from_peer(slot: u32, peer: SocketAddr, tables: &RelayTables) -> FromPeer {
    let peer = SocketAddr::new(normalise(peer.ip()), peer.port());
    let channel = tables.peers.get(&(slot, peer)).map(|c| *c);
    let permitted = channel.is_none() && tables.permits(slot, peer.ip());
    match relay_common::turn::to_client(channel, permitted) {
        Ok(ToClient::Channel(c)) => FromPeer::Channel(c),
        Ok(ToClient::Indication) => FromPeer::Indication,
        Err(reason) => FromPeer::Drop(reason),
    }
}

/// Writes ChannelData for `data` on `channel` into `out` (padded to 4 bytes when `padded`, as
/// TCP requires).
pub fn channel_data(channel: u16, data: &[u8], padded: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&ChannelDataHdr::new(channel, data.len() as u16).to_bytes());
    out.extend_from_slice(data);
    if padded {
        out.resize(relay_common::turn::padded(out.len()), 0);
    }
}

/// A Data indication carrying `data` from `peer`.
pub fn data_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut m = Message::builder_indication(DATA, MessageWriteVec::with_capacity(data.len() + 48));
    let transaction = m.transaction_id();
    let _ = m.add_attribute(&XorPeerAddress::new(peer, transaction));
    let _ = m.add_attribute(&Data::new(data));
    m.finish()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, HashMap},
        net::SocketAddr,
        time::{Duration, Instant},
    };

    use rand::{Rng, SeedableRng, rngs::StdRng};
    use stun_types::message::{MessageWrite, MessageWriteExt};

    use super::*;
    use crate::fronts::turn::server::{
        Allocation, Channel, Families, FiveTuple, Transport, TurnSettings,
    };

    fn settings() -> TurnSettings {
        TurnSettings {
            channel_max: relay_common::turn::CHANNEL_MAX_RFC5766,
            max_allocations: 4,
            ..TurnSettings::new(50_000..=50_010)
        }
    }

    fn five(addr: &str) -> FiveTuple {
        FiveTuple {
            client: addr.parse().unwrap(),
            server: "192.0.2.10:3478".parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let mut m = Message::builder_indication(SEND, MessageWriteVec::new());
        let t = m.transaction_id();
        let _ = m.add_attribute(&XorPeerAddress::new(peer, t));
        let _ = m.add_attribute(&Data::new(data));
        m.finish()
    }

    /// 200 000 random datagrams against one allocation: data leaves for a peer only over the
    /// client's bound channel whose peer has a live permission, or in the client's Send
    /// indication to a peer with a permission — with exactly the application bytes — and a
    /// peer's datagram reaches the client only with a permission, over its channel if it has one.
    #[test]
    fn only_bound_channels_and_permitted_peers_are_relayed() {
        let now = Instant::now();
        let client = five("198.51.100.9:40000");
        let live_peer: SocketAddr = "198.51.100.20:4000".parse().unwrap();
        let lapsed_peer: SocketAddr = "198.51.100.21:4000".parse().unwrap();
        let permitted_only: SocketAddr = "198.51.100.22:4000".parse().unwrap();
        let allocation = Allocation {
            slot: 3,
            five_tuple: client,
            username: "alice".into(),
            sha256: false,
            port: 50_001,
            families: Families {
                v4: true,
                v6: false,
            },
            created_unix_ms: 0,
            expires: now + Duration::from_secs(600),
            transaction: 0,
            permissions: HashMap::from([
                (live_peer.ip(), now + Duration::from_secs(100)),
                (lapsed_peer.ip(), now - Duration::from_secs(1)),
                (permitted_only.ip(), now + Duration::from_secs(100)),
            ]),
            channels: BTreeMap::from([
                (
                    0x4000,
                    Channel {
                        peer: live_peer,
                        expires: now + Duration::from_secs(100),
                    },
                ),
                (
                    0x4001,
                    Channel {
                        peer: lapsed_peer,
                        expires: now + Duration::from_secs(100),
                    },
                ),
            ]),
        };
        let tables = RelayTables::new();
        tables.sync(&allocation, &settings(), now);
        let stranger = five("198.51.100.99:40000");
        let peers = [
            live_peer,
            lapsed_peer,
            permitted_only,
            "203.0.113.5:9".parse().unwrap(),
        ];
        let mut rng = StdRng::seed_from_u64(8656);
        let (mut relayed, mut to_client) = (0, 0);
        for _ in 0..200_000 {
            let from = if rng.random_bool(0.8) {
                client
            } else {
                stranger
            };
            let data: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            let (frame, intended): (Vec<u8>, Option<(SocketAddr, &[u8])>) = match rng
                .random_range(0..4)
            {
                0 => {
                    let channel = [0x4000, 0x4001, 0x4002, rng.random()][rng.random_range(0..4)];
                    let mut f = ChannelDataHdr::new(channel, data.len() as u16)
                        .to_bytes()
                        .to_vec();
                    f.extend_from_slice(&data);
                    f.extend(std::iter::repeat_n(0, rng.random_range(0..4)));
                    let target = match channel {
                        0x4000 => Some(live_peer),
                        _ => None,
                    };
                    (f, target.map(|t| (t, &data[..])))
                }
                1 => {
                    let peer = peers[rng.random_range(0..peers.len())];
                    let target = [live_peer, permitted_only].contains(&peer).then_some(peer);
                    (send_indication(peer, &data), target.map(|t| (t, &data[..])))
                }
                2 => {
                    // A mutated valid frame.
                    let mut f = send_indication(peers[0], &data);
                    let i = rng.random_range(0..f.len());
                    f[i] ^= 1 << rng.random_range(0..8);
                    (f, None)
                }
                _ => (data.clone(), None),
            };
            match from_client(&frame, &from, &tables) {
                FromClient::ToPeer {
                    slot,
                    port,
                    peer,
                    range,
                    ..
                } => {
                    relayed += 1;
                    assert_eq!((slot, port, from), (3, 50_001, client));
                    // A permission is per IP address, whatever the port (RFC 8656 §9).
                    assert!(
                        peer.ip() == live_peer.ip() || peer.ip() == permitted_only.ip(),
                        "relayed to {peer}: {frame:02x?}"
                    );
                    if let Some((target, bytes)) = intended {
                        assert_eq!((peer, &frame[range]), (target, bytes), "{frame:02x?}");
                    }
                }
                FromClient::Stun | FromClient::Drop(_) => {
                    assert!(
                        intended.is_none() || from != client,
                        "not relayed: {frame:02x?}"
                    );
                }
            }
            let peer = peers[rng.random_range(0..peers.len())];
            match from_peer(3, peer, &tables) {
                FromPeer::Channel(c) => {
                    to_client += 1;
                    assert_eq!((c, peer), (0x4000, live_peer));
                }
                FromPeer::Indication => assert_eq!(peer, permitted_only),
                FromPeer::Drop(r) => {
                    assert_eq!(r, Reason::DroppedTurnNoPermission);
                    assert!(peer != live_peer && peer != permitted_only);
                }
            }
        }
        assert!(
            relayed > 40_000 && to_client > 40_000,
            "{relayed} {to_client}"
        );
        // Every intended datagram from the client was relayed.
        let mut f = ChannelDataHdr::new(0x4000, 2).to_bytes().to_vec();
        f.extend_from_slice(b"ok");
        assert!(matches!(
            from_client(&f, &client, &tables),
            FromClient::ToPeer { .. }
        ));
        assert!(matches!(
            from_client(&send_indication(permitted_only, b"ok"), &client, &tables),
            FromClient::ToPeer { .. }
        ));
        // Expired state goes: after removal nothing is relayed.
        tables.remove(3);
        assert_eq!(
            from_client(&f, &client, &tables),
            FromClient::Drop(Reason::DroppedTurnUnknownChannel)
        );
    }
}
