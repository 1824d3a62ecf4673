//! A world around one pair — the daemon's [`Pair`]: the kernel's rule, then leg learning
//! ([`super::legs::Legs`]) — for the unit tests and the `wireguard_legs` fuzz target:
//! two honest WireGuard peers that behave as the protocol makes them (they answer only
//! authentic handshake messages, refuse a replayed initiation by its timestamp, accept only
//! data of a session they made), NATs that rebind, and an attacker that knows both public keys
//! (its handshake messages carry a valid `mac1`) and the ports, sends anything from its own
//! addresses — one IP address, any port — and replays whatever reaches it.
//!
//! What the relay sees is the bytes of each message (type, indices, `mac1` under the real
//! receiver's key when the sender knows it, which the attacker does): authorship, timestamps and
//! sessions are the model's stand-in for the cryptography the relay cannot check. After every step the world checks the
//! two security properties: no attacker address is ever a leg, and no tunnel data of the
//! honest peers ever reaches the attacker.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use relay_common::wireguard::Message;

use relay_common::wireguard::{
    COOKIE_REPLY_LEN, DATA_MIN_LEN, INITIATION_LEN, RESPONSE_LEN, WireGuardPair,
};

use super::{
    legs::{Policy, Side},
    mac::{Mac1Key, PublicKey},
    relaying::{Outcome, Pair},
};

/// The two peers' public keys (the model's; any distinct values do).
const KEYS: [PublicKey; 2] = [[0xA1; 32], [0xB2; 32]];

/// The bytes of `message` as the relay receives it on `side`'s port: addressed to the other
/// peer, whose key makes `mac1` when `mac1_valid`.
fn encode(packet: &Packet, side: Side) -> Vec<u8> {
    let (kind, len, first, second) = match packet.message {
        Message::Initiation { sender } => (1, INITIATION_LEN, sender, 0),
        Message::Response { sender, receiver } => (2, RESPONSE_LEN, sender, receiver),
        Message::CookieReply { receiver } => (3, COOKIE_REPLY_LEN, receiver, 0),
        Message::Data { receiver } => (4, DATA_MIN_LEN, receiver, 0),
        Message::Invalid => (9, DATA_MIN_LEN, 0, 0),
    };
    let mut m = vec![0u8; len];
    m[0] = kind;
    m[4..8].copy_from_slice(&first.to_le_bytes());
    if kind == 2 {
        m[8..12].copy_from_slice(&second.to_le_bytes());
    }
    if kind == 4 {
        m[8..16].copy_from_slice(&packet.counter.to_le_bytes());
    }
    if packet.mac1_valid {
        Mac1Key::for_receiver(&KEYS[side.other().index()]).seal(&mut m);
    }
    m
}

/// Who made a message (hidden from the relay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Author {
    /// An honest peer.
    Peer(Side),
    /// The attacker.
    Attacker,
}

/// A datagram in the world: what the relay sees, plus what only the endpoints can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// What the relay sees.
    pub message: Message,
    /// Whether `mac1` verifies for the receiver.
    pub mac1_valid: bool,
    /// Who made it.
    pub author: Author,
    /// An initiation's timestamp (a responder answers only a newer one than it last did).
    pub stamp: u64,
    /// Transport data's counter (0: the first message of its session).
    pub counter: u64,
}

/// One thing that happens.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// An honest peer starts a handshake (a new sender index and timestamp).
    Initiate(Side),
    /// An honest peer sends data on its current session, if it has one.
    Talk(Side),
    /// An honest peer's NAT maps it to a new port.
    Rebind(Side),
    /// Time passes, in half seconds.
    Wait(u8),
    /// The legs are released (both idle).
    Release,
    /// The attacker sends a message it makes up, from one of its ports, to a side's port;
    /// `reuse` takes its indices from something it has seen instead.
    Forge {
        /// Which of its ports.
        port: u8,
        /// Which relay port.
        to: Side,
        /// Message type (1–4; anything else is invalid).
        kind: u8,
        /// Sender (or receiver) index.
        first: u32,
        /// Receiver index of a response.
        second: u32,
        /// Whether `mac1` is valid (it knows the keys).
        mac1: bool,
        /// Take the indices from the `reuse`-th packet it has seen.
        reuse: Option<u8>,
    },
    /// The attacker sends a data message carrying the receiver index peer `of`'s data carries
    /// on its current session — as an attacker that observed the peers' traffic would know it —
    /// from one of its ports to a side's port (rule 9's forged keepalive).
    ForgeData {
        /// Which of its ports.
        port: u8,
        /// Which relay port.
        to: Side,
        /// Whose index.
        of: Side,
    },
    /// The attacker answers the `which`-th packet it has seen (an initiation, it hopes) with a
    /// response whose sender index is the one peer `of`'s data carries on its current session
    /// (a live session's index, as an attacker that observed it would pick), valid `mac1`,
    /// from one of its ports to a side's port.
    ForgeAnswer {
        /// Which of its ports.
        port: u8,
        /// Which relay port.
        to: Side,
        /// Whose index.
        of: Side,
        /// Which packet it answers.
        which: u8,
    },
    /// The attacker sends a copy of the `which`-th packet it has seen, from one of its ports,
    /// to a side's port.
    Replay {
        /// Which of its ports.
        port: u8,
        /// Which relay port.
        to: Side,
        /// Which packet.
        which: u8,
    },
}

#[derive(Clone, Debug)]
struct Peer {
    side: Side,
    addr: SocketAddr,
    stamp: u64,
    /// Sender indices of our initiations still waiting for a response.
    outstanding: Vec<u32>,
    /// The newest initiation timestamp we answered.
    answered: u64,
    /// Handshakes we answered and whose first data has not come: (ours, theirs).
    responding: Vec<(u32, u32)>,
    /// The session in use: (our receiving index, theirs).
    session: Option<(u32, u32)>,
    /// Data messages sent on it (the next one's counter).
    sent: u64,
    /// Data messages of the other peer received.
    received: u64,
}

/// The world.
pub struct World {
    pair: Pair,
    now: Instant,
    peers: [Peer; 2],
    attacker_ip: IpAddr,
    /// What reached the attacker (the most recent 64).
    seen: VecDeque<Packet>,
    next_index: u32,
    next_port: u16,
    /// Every address each peer has used.
    used: [Vec<SocketAddr>; 2],
    queue: VecDeque<(Side, SocketAddr, Packet)>,
}

const ATTACKER_PORTS: u16 = 8;

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// Two peers behind different NATs, an attacker on a third address, nothing bound.
    pub fn new() -> World {
        let a: SocketAddr = (Ipv4Addr::new(198, 51, 100, 1), 40_000).into();
        let b: SocketAddr = (Ipv4Addr::new(203, 0, 113, 1), 50_000).into();
        let peer = |side, addr| Peer {
            side,
            addr,
            stamp: 0,
            outstanding: Vec::new(),
            answered: 0,
            responding: Vec::new(),
            session: None,
            sent: 0,
            received: 0,
        };
        World {
            pair: Pair::new(
                WireGuardPair {
                    ports: [51_820u16.to_be(), 51_821u16.to_be()],
                    ..Default::default()
                },
                &KEYS[0],
                &KEYS[1],
                Policy::default(),
            ),
            now: Instant::now(),
            peers: [peer(Side::A, a), peer(Side::B, b)],
            attacker_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66)),
            seen: VecDeque::new(),
            next_index: 1,
            next_port: 41_000,
            used: [vec![a], vec![b]],
            queue: VecDeque::new(),
        }
    }

    /// The pair's legs.
    pub fn legs(&self) -> Option<[SocketAddr; 2]> {
        let legs = self.pair.record.legs;
        legs.iter()
            .all(|l| l.is_bound())
            .then(|| legs.map(|l| crate::control::session::address_of_leg(&l).expect("bound")))
    }

    /// A peer's current address.
    pub fn address(&self, side: Side) -> SocketAddr {
        self.peers[side.index()].addr
    }

    /// Data messages a peer has received from the other.
    pub fn received(&self, side: Side) -> u64 {
        self.peers[side.index()].received
    }

    fn index(&mut self) -> u32 {
        // Distinct and unguessable enough for the model: the attacker learns indices only by
        // seeing them.
        self.next_index = self.next_index.wrapping_mul(2_654_435_761).wrapping_add(97);
        self.next_index
    }

    /// Runs one step and checks the security properties.
    pub fn step(&mut self, step: Step) {
        match step {
            Step::Initiate(side) => {
                let sender = self.index();
                let peer = &mut self.peers[side.index()];
                peer.stamp += 1;
                peer.outstanding.push(sender);
                let packet = Packet {
                    message: Message::Initiation { sender },
                    mac1_valid: true,
                    author: Author::Peer(side),
                    stamp: peer.stamp,
                    counter: 0,
                };
                self.queue.push_back((side, peer.addr, packet));
            }
            Step::Talk(side) => {
                let peer = &mut self.peers[side.index()];
                if let Some((_, theirs)) = peer.session {
                    let packet = Packet {
                        message: Message::Data { receiver: theirs },
                        mac1_valid: false,
                        author: Author::Peer(side),
                        stamp: 0,
                        counter: peer.sent,
                    };
                    peer.sent += 1;
                    self.queue.push_back((side, peer.addr, packet));
                }
            }
            Step::Rebind(side) => {
                self.next_port = self.next_port.wrapping_add(1).max(1024);
                let peer = &mut self.peers[side.index()];
                peer.addr.set_port(self.next_port);
                self.used[side.index()].push(peer.addr);
            }
            Step::Wait(half_seconds) => {
                self.now += Duration::from_millis(500) * u32::from(half_seconds);
            }
            Step::Release => {
                self.pair.release();
            }
            Step::Forge {
                port,
                to,
                kind,
                first,
                second,
                mac1,
                reuse,
            } => {
                let (mut first, mut second) = (first, second);
                if let Some(which) = reuse
                    && !self.seen.is_empty()
                {
                    let seen = self.seen[usize::from(which) % self.seen.len()];
                    (first, second) = match seen.message {
                        Message::Initiation { sender } => (sender, sender),
                        Message::Response { sender, receiver } => (sender, receiver),
                        Message::CookieReply { receiver } | Message::Data { receiver } => {
                            (receiver, receiver)
                        }
                        Message::Invalid => (first, second),
                    };
                }
                let message = match kind % 5 {
                    1 => Message::Initiation { sender: first },
                    2 => Message::Response {
                        sender: first,
                        receiver: second,
                    },
                    3 => Message::CookieReply { receiver: first },
                    4 => Message::Data { receiver: first },
                    _ => Message::Invalid,
                };
                let mac1 = mac1 && matches!(kind % 5, 1 | 2);
                self.forge(port, to, message, mac1, u64::from(first));
            }
            Step::ForgeData { port, to, of } => {
                if let Some((_, theirs)) = self.peers[of.index()].session {
                    self.forge(port, to, Message::Data { receiver: theirs }, false, 0);
                }
            }
            Step::ForgeAnswer {
                port,
                to,
                of,
                which,
            } => {
                if let Some((_, theirs)) = self.peers[of.index()].session
                    && !self.seen.is_empty()
                {
                    let answered = match self.seen[usize::from(which) % self.seen.len()].message {
                        Message::Initiation { sender } => sender,
                        _ => 0,
                    };
                    let response = Message::Response {
                        sender: theirs,
                        receiver: answered,
                    };
                    self.forge(port, to, response, true, 0);
                }
            }
            Step::Replay { port, to, which } => {
                if !self.seen.is_empty() {
                    let packet = self.seen[usize::from(which) % self.seen.len()];
                    let from = self.attacker(port);
                    self.queue.push_back((to, from, packet));
                }
            }
        }
        self.run();
        self.check();
    }

    /// Queues `message`, made up by the attacker, from one of its ports to `to`'s port.
    fn forge(&mut self, port: u8, to: Side, message: Message, mac1_valid: bool, stamp: u64) {
        let packet = Packet {
            message,
            mac1_valid,
            author: Author::Attacker,
            stamp,
            counter: 0,
        };
        let from = self.attacker(port);
        self.queue.push_back((to, from, packet));
    }

    fn attacker(&self, port: u8) -> SocketAddr {
        SocketAddr::new(self.attacker_ip, 60_000 + u16::from(port) % ATTACKER_PORTS)
    }

    /// Delivers queued datagrams to the relay and what it relays to their destinations, until
    /// nothing is left (bounded: each honest reply answers one message).
    fn run(&mut self) {
        let mut budget = 1_000;
        while let Some((side, from, packet)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "the world does not settle");
            let bytes = encode(&packet, side);
            let to = match self.pair.on_datagram(side, from, &bytes, self.now) {
                Outcome::Relay { to, .. } => to,
                Outcome::Bound { to, .. } => vec![to],
                Outcome::Refuse(_) => continue,
            };
            for addr in to {
                self.deliver(addr, packet);
            }
        }
    }

    fn deliver(&mut self, to: SocketAddr, packet: Packet) {
        if to.ip() == self.attacker_ip {
            assert!(
                !(matches!(packet.message, Message::Data { .. })
                    && matches!(packet.author, Author::Peer(_))),
                "tunnel data reached the attacker at {to}: {packet:?}"
            );
            if self.seen.len() == 64 {
                self.seen.pop_front();
            }
            self.seen.push_back(packet);
            return;
        }
        let Some(peer) = self.peers.iter().position(|p| p.addr == to) else {
            return; // a peer's old address: its NAT mapping is gone
        };
        if let Some(reply) = self.receive(peer, packet) {
            let p = &self.peers[peer];
            self.queue.push_back((p.side, p.addr, reply));
        }
    }

    /// An honest peer's reaction to a datagram: the reply it sends, if any.
    fn receive(&mut self, peer: usize, packet: Packet) -> Option<Packet> {
        let side = self.peers[peer].side;
        if packet.author != Author::Peer(side.other()) {
            return None; // forged: its cryptography fails
        }
        let reply = |message| Packet {
            message,
            mac1_valid: matches!(message, Message::Response { .. }),
            author: Author::Peer(side),
            stamp: 0,
            counter: 0,
        };
        match packet.message {
            Message::Initiation { sender } => {
                if packet.stamp <= self.peers[peer].answered {
                    return None; // a replay: not newer than the last one answered
                }
                let ours = self.index();
                let p = &mut self.peers[peer];
                p.answered = packet.stamp;
                p.responding.push((ours, sender));
                Some(reply(Message::Response {
                    sender: ours,
                    receiver: sender,
                }))
            }
            Message::Response { sender, receiver } => {
                let p = &mut self.peers[peer];
                let at = p.outstanding.iter().position(|&i| i == receiver)?;
                p.outstanding.remove(at);
                p.session = Some((receiver, sender));
                // The session's first message (counter 0) confirms it.
                p.sent = 1;
                Some(reply(Message::Data { receiver: sender }))
            }
            Message::Data { receiver } => {
                let p = &mut self.peers[peer];
                if let Some(at) = p.responding.iter().position(|&(ours, _)| ours == receiver) {
                    let (ours, theirs) = p.responding.remove(at);
                    p.session = Some((ours, theirs));
                    p.sent = 1;
                    p.received += 1;
                    return Some(reply(Message::Data { receiver: theirs }));
                }
                if p.session.is_some_and(|(ours, _)| ours == receiver) {
                    p.received += 1;
                }
                None
            }
            Message::CookieReply { .. } | Message::Invalid => None,
        }
    }

    fn check(&self) {
        if let Some(legs) = self.legs() {
            for side in [Side::A, Side::B] {
                let leg = legs[side.index()];
                assert!(
                    self.used[side.index()].contains(&leg),
                    "{side:?}'s leg {leg} is not an address of peer {side:?}"
                );
            }
        }
    }
}
