//! Leg learning for stock WireGuard: which address is peer A and which is peer B, learned from
//! their handshakes without any key and without trusting the first packet (sans-IO: the caller
//! passes what arrived, where, and the time; this says where it goes).
//!
//! Each peer has a relay port of its own: peer A sends to port A (its `Endpoint` for B), peer B
//! to port B. What arrives on port A comes from A's side and goes to B's leg, from port B — and
//! the reverse. A leg is an address (IP and port) the relay forwards to and accepts data from.
//!
//! ## The rules (docs/security.md explains why each is there)
//!
//! 1. **Candidates.** A handshake initiation on a side's port whose `mac1` verifies for the
//!    *other* peer's public key makes its source a candidate for that side, remembered with its
//!    sender index for [`CANDIDATE_LIFETIME`] (one per IP address, at most [`MAX_CANDIDATES`]
//!    per side).
//! 2. **Initiations go** to the other side's bound leg when the pair is bound, else to the other
//!    side's live candidates (at bootstrap neither peer's address is known; each peer's own
//!    initiations are the only way to learn where it is).
//! 3. **Responses** (mac1 valid for the initiator's key) are relayed only when their receiver
//!    index is the sender index of a live candidate's initiation on the other side, and only
//!    to that candidate; when the pair is bound, only from the responder's bound leg. Cookie
//!    replies likewise (WireGuard's own DoS protection keeps working through the relay).
//! 4. **Binding** needs both peers to use the new session: first the initiator's data, from the
//!    candidate's address, with the responder's sender index, starting with the session's first
//!    message (counter 0; relayed to the responder), then
//!    the responder's data, from the response's address, with the initiator's sender index. A
//!    real responder sends that only after the initiator's data decrypted under the keys of
//!    *this* handshake, which only the holder of the initiation's ephemeral key can derive.
//!    So a replayed initiation (its response relayed to the replayer) never binds: the replayer
//!    can send data with the right index, but not data the responder accepts, and the
//!    responder's own data then never comes. Both legs bind at once. The counter matters
//!    because a response may name any index, also one of a session the initiator already
//!    uses (made before the pair bound — the peers talked directly — or before a release):
//!    that session's data has long passed counter 0, so it is never relayed to the response's
//!    address (the property test found this).
//! 5. **Moving.** When the pair is bound, a leg moves only through rule 4 with the *other*
//!    leg, as bound, as the responder: one leg at a time (NAT rebinding, roaming), never both.
//!    That responder's confirming data comes from a bound leg, which the fast path forwards
//!    itself, so [`Legs::awaiting`] names it and the pair's record tells the kernel to hand it
//!    up (`super::relaying`). If both peers move at once, the pair falls back to bootstrap
//!    when both legs have been silent for the idle time the caller applies
//!    ([`Legs::release`]).
//! 6. **Two addresses.** The two legs are on different IP addresses (unless the pair is
//!    created with [`Policy::shared_address`]), so one host cannot play both peers — the
//!    only way a keyless relay can be fooled at bootstrap is by two colluding addresses that
//!    both know the public keys and the ports (docs/security.md).
//! 7. **Data** (type 4) is forwarded only from a bound leg, to the other bound leg, and, for
//!    rule 4, between a confirmed response's two addresses. Anything else is dropped with a
//!    reason.
//! 8. **Initiation rate.** Anyone who knows a peer's public key can make a valid mac1, and each
//!    initiation relayed costs the receiving peer a Diffie-Hellman. Initiations relayed per
//!    side are limited ([`HandshakeRate`]): the side's bound leg has a budget of its own, so a
//!    flood from elsewhere never starves the real peer's rekeying; other sources share
//!    [`OTHER_SOURCES`] per-address budgets, a new address taking one only when one has been
//!    idle. WireGuard sends one initiation per 5 s while it retries and one per 2 minutes when
//!    it rekeys: the limits are far above that, and a peer never receives more than
//!    [`HandshakeRate::MAX_PER_SEC`] initiations a second from the relay. Responses and cookie
//!    replies are not limited: they are relayed only as answers to relayed initiations (rule
//!    3), so those bound them, and an honest peer's answer dropped for rate would leave the
//!    pair unbound in a state the other rules do not expect (the fuzz target found one where
//!    an attacker's replay then received the initiator's first data).
//! 9. **A receiving peer roams.** A peer that only receives (keepalives, no data of its own)
//!    never initiates after its NAT mapping changes — its keys are fresh, it has nothing to
//!    send — so rule 5 would leave it cut off until its keys expire (three minutes). When the
//!    pair is bound, data on a side's port from another address whose receiver index is one
//!    the side's sessions use (learnt from the handshakes the relay saw) makes that address a
//!    *roaming candidate* of the side for [`ROAMING_LIFETIME`] (one per IP address, at most
//!    [`MAX_CANDIDATES`]; such data is evaluated at most at the handshake rate per address, so
//!    an index cannot be guessed by flooding). It is not relayed: the address proves nothing
//!    yet. The other peer's initiations from its bound leg — WireGuard retries them every 5 s
//!    once it has heard nothing for 15 s — then go to the bound leg *and* the roaming
//!    candidates; a candidate's response to one is relayed (rule 3), and the move completes
//!    by rule 4 with the bound leg as the initiator: its first data on the new session goes to
//!    the candidate only (the pair's record has the kernel hand that session's data up until
//!    then, [`Legs::awaiting`]), and the candidate's data on it moves the leg. The old address
//!    keeps receiving the other peer's data on the old session until the move. A response
//!    whose sender index is one the initiator's data already carries is refused: a genuine
//!    responder picks a fresh index, and a forged one naming a live session would have that
//!    session's data handed to the forger. After a restart the relay does not know the
//!    sessions the peers made before, so this rule waits until they have expired
//!    ([`REJECT_AFTER_TIME`]).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use relay_common::{verdict::Reason, wireguard::Message};

/// How long an initiation's source stays a candidate. WireGuard retries a handshake every
/// 5 s (REKEY_TIMEOUT) plus up to 333 ms of jitter, so two of a peer's initiations overlap.
pub const CANDIDATE_LIFETIME: Duration = Duration::from_secs(10);
/// How long a relayed response waits for both peers' first data on the new session (sent at
/// once by WireGuard when there is traffic or a keepalive is due; the time covers a response
/// lost and the initiator's retry).
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10);
/// Candidates remembered per side: the real peer plus a few forged ones. More would let a
/// flood of forged initiations turn each real initiation into many relayed copies.
pub const MAX_CANDIDATES: usize = 4;
/// Responses awaiting confirmation.
pub const MAX_PENDING: usize = 4;
/// How long data with a known index keeps an address a roaming candidate (rule 9): the other
/// peer initiates 15 s after it last heard from this one and retries every 5 s, so a candidate
/// made by the first keepalive from the new address meets one of its initiations.
pub const ROAMING_LIFETIME: Duration = Duration::from_secs(20);
/// Receiver indices remembered per side (rule 9): a WireGuard peer keeps its previous, current
/// and next session; the rest covers handshakes the relay saw that the peers abandoned.
pub const KNOWN_INDICES: usize = 8;
/// WireGuard's RejectAfterTime: no session is used longer. After a restart, rule 9 waits this
/// long, until every session made before it (whose indices it never saw) has expired.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// The interval between initiations a budget allows in the long run (one per second: five
/// times what WireGuard's retries send).
pub const HANDSHAKE_INTERVAL: Duration = Duration::from_secs(1);
/// Initiations the bound leg may send at once (a rekey crossing a retry, a burst of retries
/// after an outage).
pub const LEG_HANDSHAKE_BURST: u32 = 5;
/// Initiations any other address may send at once.
pub const OTHER_HANDSHAKE_BURST: u32 = 3;
/// Addresses other than the bound leg that hold a handshake budget at once, per side.
pub const OTHER_SOURCES: usize = 4;

/// A budget of initiations (GCRA: the next message is due at `due`; a full budget
/// lets `burst` through at once).
#[derive(Clone, Copy, Debug, Default)]
struct Budget {
    due: Option<Instant>,
}

impl Budget {
    /// Whether a message may pass at `now`; takes its place if so.
    fn take(&mut self, now: Instant, burst: u32) -> bool {
        let due = self.due.map_or(now, |d| d.max(now));
        if due.saturating_duration_since(now) > HANDSHAKE_INTERVAL * (burst - 1) {
            return false;
        }
        self.due = Some(due + HANDSHAKE_INTERVAL);
        true
    }

    /// Whether the budget is full again at `now` (its address may be forgotten).
    fn idle(&self, now: Instant) -> bool {
        self.due.is_none_or(|d| d <= now)
    }
}

/// Rule 8: the initiations one side's port relays.
#[derive(Clone, Debug, Default)]
pub struct HandshakeRate {
    leg: Budget,
    others: Vec<(std::net::IpAddr, Budget)>,
}

impl HandshakeRate {
    /// The most initiations per second a peer receives through one pair, sustained.
    pub const MAX_PER_SEC: u32 = 1 + OTHER_SOURCES as u32;

    /// Whether an initiation from `from` (the side's bound leg or not) may be relayed.
    fn allow(&mut self, from: SocketAddr, from_leg: bool, now: Instant) -> bool {
        if from_leg {
            return self.leg.take(now, LEG_HANDSHAKE_BURST);
        }
        let ip = from.ip();
        if let Some((_, budget)) = self.others.iter_mut().find(|(a, _)| *a == ip) {
            return budget.take(now, OTHER_HANDSHAKE_BURST);
        }
        self.others.retain(|(_, b)| !b.idle(now));
        if self.others.len() == OTHER_SOURCES {
            return false;
        }
        let mut budget = Budget::default();
        let allowed = budget.take(now, OTHER_HANDSHAKE_BURST);
        self.others.push((ip, budget));
        allowed
    }
}

/// A peer's side: which relay port its packets arrive on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Peer A: sends to port A.
    A,
    /// Peer B: sends to port B.
    B,
}

impl Side {
    /// The other peer's side.
    pub const fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Index into per-side arrays.
    pub const fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// What a pair allows beyond the rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Whether both legs may be on one IP address (two peers behind one NAT or carrier-grade
    /// NAT address). Off by default: it would let a single host that knows both public keys
    /// play both peers at bootstrap.
    pub shared_address: bool,
}

/// What arrived: on which side's port, from where, what it is, and whether its `mac1`
/// verifies for the receiver (the other side's public key; false for non-handshake messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The port it arrived on.
    pub side: Side,
    /// Its source.
    pub from: SocketAddr,
    /// The message's kind and indices.
    pub message: Message,
    /// Whether `mac1` verifies for the other side's public key.
    pub mac1_valid: bool,
    /// Transport data's counter (its nonce: 0 for the first message of a session); 0 for
    /// other messages.
    pub counter: u64,
}

/// Why a datagram is not relayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a WireGuard message (type, reserved bytes, length).
    Invalid,
    /// A handshake message whose `mac1` does not verify for the other peer's key.
    Mac1,
    /// An initiation with nowhere to go yet: the other peer has not been seen (it is kept as
    /// a candidate; WireGuard retries in 5 s).
    NoDestination,
    /// A response or cookie reply that answers no live initiation (or response) relayed here.
    Unanswered,
    /// A handshake reply from an address that is not the bound leg of its side, or from the
    /// initiator's own IP address when the pair's legs must differ.
    NotLeg,
    /// Transport data from an address that is not a leg and confirms nothing.
    Unbound,
    /// An initiation beyond the side's initiation rate (rule 8).
    HandshakeRate,
}

impl Refusal {
    /// The verdict reason it is counted under.
    pub const fn reason(self) -> Reason {
        match self {
            Refusal::Invalid => Reason::DroppedWireGuardInvalid,
            Refusal::Mac1 => Reason::DroppedWireGuardMac1,
            Refusal::NoDestination => Reason::DroppedWireGuardNoDestination,
            Refusal::Unanswered => Reason::DroppedWireGuardUnanswered,
            Refusal::NotLeg => Reason::DroppedWireGuardNotLeg,
            Refusal::Unbound => Reason::DroppedWireGuardUnbound,
            Refusal::HandshakeRate => Reason::DroppedWireGuardHandshakeRate,
        }
    }
}

/// Where an arrival goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Relay it, from the other side's port, to these addresses.
    Relay(Vec<SocketAddr>),
    /// It completed a handshake's confirmation: the legs are now these (A's, B's); relay it
    /// to the other side's new leg.
    Bind {
        /// The new legs, A's then B's.
        legs: [SocketAddr; 2],
        /// Where this message goes (the other side's new leg).
        to: SocketAddr,
    },
    /// Drop it, counted under this reason.
    Refuse(Refusal),
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    from: SocketAddr,
    /// Its initiation's sender index (rule 1), or its data's receiver index (rule 9).
    sender: u32,
    at: Instant,
}

/// A response relayed to an initiator, waiting for both peers' first data (rule 4).
#[derive(Clone, Copy, Debug)]
struct Pending {
    initiator: Side,
    initiator_addr: SocketAddr,
    /// The initiator's sender index: the receiver index of the responder's data.
    initiator_index: u32,
    responder_addr: SocketAddr,
    /// The responder's sender index: the receiver index of the initiator's data.
    responder_index: u32,
    /// Whether the initiator's data came (and was relayed to the responder).
    initiator_sent: bool,
    at: Instant,
}

/// Since when the relay has seen every session the peers may use (rule 9).
#[derive(Clone, Copy, Debug, Default)]
enum Watched {
    /// Since the pair was made: every session of its peers was made through this process.
    #[default]
    Always,
    /// Adopted after a restart, no datagram seen yet.
    Adopted,
    /// Adopted after a restart: from then on (every earlier session has expired).
    From(Instant),
}

/// One WireGuard pair's leg state.
#[derive(Clone, Debug, Default)]
pub struct Legs {
    policy: Policy,
    bound: Option<[SocketAddr; 2]>,
    candidates: [Vec<Candidate>; 2],
    pending: Vec<Pending>,
    /// Per side: its initiations relayed (rule 8).
    handshakes: [HandshakeRate; 2],
    /// Per side: addresses that sent data with one of the side's indices (rule 9).
    roaming: [Vec<Candidate>; 2],
    /// Per side: the receiver indices its data carries on the sessions the relay saw made,
    /// newest last (rule 9).
    indices: [Vec<u32>; 2],
    /// Per side: data from other addresses checked against the indices (rule 9's budget
    /// against guessing them).
    roam_checks: [HandshakeRate; 2],
    watched: Watched,
}

impl Legs {
    /// A pair with no legs (just allocated).
    pub fn new(policy: Policy) -> Legs {
        Legs {
            policy,
            ..Legs::default()
        }
    }

    /// A pair whose legs were bound before (adopted after a restart).
    pub fn bound(policy: Policy, legs: [SocketAddr; 2]) -> Legs {
        Legs {
            policy,
            bound: Some(legs),
            watched: Watched::Adopted,
            ..Legs::default()
        }
    }

    /// The bound legs, A's then B's.
    pub fn legs(&self) -> Option<[SocketAddr; 2]> {
        self.bound
    }

    /// While a bound leg is moving, the data a bound leg sends that the move needs: the side
    /// it arrives on and its receiver index. The fast path forwards data from bound legs
    /// itself, so it must hand these up instead (the caller writes them into the pair's
    /// record): the bound responder's data that completes a move of the initiator (rule 5), or
    /// the bound initiator's data on a session made with a roaming candidate, which goes to
    /// the candidate only (rule 9).
    pub fn awaiting(&self) -> Option<(Side, u32)> {
        let legs = self.bound?;
        self.pending.iter().rev().find_map(|p| {
            let responder = p.initiator.other();
            let responder_bound = legs[responder.index()] == p.responder_addr;
            if p.initiator_sent && responder_bound {
                Some((responder, p.initiator_index))
            } else if legs[p.initiator.index()] == p.initiator_addr && !responder_bound {
                Some((p.initiator, p.responder_index))
            } else {
                None
            }
        })
    }

    /// Forgets the legs (both silent for the idle time): the pair learns them again from the
    /// next handshakes. The indices stay: they are still the peers'.
    pub fn release(&mut self) {
        self.bound = None;
        self.candidates = Default::default();
        self.roaming = Default::default();
        self.pending.clear();
    }

    /// Decides where `arrival` goes at `now`, updating what the pair has learnt.
    pub fn on_arrival(&mut self, arrival: Arrival, now: Instant) -> Decision {
        if let Watched::Adopted = self.watched {
            self.watched = Watched::From(now + REJECT_AFTER_TIME);
        }
        self.forget_stale(now);
        let Arrival {
            side,
            from,
            message,
            mac1_valid,
            counter,
        } = arrival;
        match message {
            Message::Invalid => Decision::Refuse(Refusal::Invalid),
            Message::Initiation { .. } | Message::Response { .. } if !mac1_valid => {
                Decision::Refuse(Refusal::Mac1)
            }
            Message::Initiation { .. }
                if !self.handshakes[side.index()].allow(
                    from,
                    self.bound.is_some_and(|legs| legs[side.index()] == from),
                    now,
                ) =>
            {
                Decision::Refuse(Refusal::HandshakeRate)
            }
            Message::Initiation { sender } => self.initiation(side, from, sender, now),
            Message::Response { sender, receiver } => {
                self.response(side, from, sender, receiver, now)
            }
            Message::CookieReply { receiver } => self.cookie_reply(side, from, receiver),
            Message::Data { receiver } => self.data(side, from, receiver, counter, now),
        }
    }

    fn forget_stale(&mut self, now: Instant) {
        for side in &mut self.candidates {
            side.retain(|c| now.saturating_duration_since(c.at) < CANDIDATE_LIFETIME);
        }
        for side in &mut self.roaming {
            side.retain(|c| now.saturating_duration_since(c.at) < ROAMING_LIFETIME);
        }
        self.pending
            .retain(|p| now.saturating_duration_since(p.at) < PENDING_LIFETIME);
    }

    /// Whether `a` and `b` may be the two legs of this pair (rule 6).
    fn may_pair(&self, a: SocketAddr, b: SocketAddr) -> bool {
        a != b && (self.policy.shared_address || a.ip() != b.ip())
    }

    fn initiation(&mut self, side: Side, from: SocketAddr, sender: u32, now: Instant) -> Decision {
        remember(
            &mut self.candidates[side.index()],
            self.policy.shared_address,
            Candidate {
                from,
                sender,
                at: now,
            },
        );
        let other = side.other().index();
        let to: Vec<SocketAddr> = match self.bound {
            // A bound leg's initiations also reach the other side's roaming candidates (rule 9).
            Some(legs) if legs[side.index()] == from => std::iter::once(legs[other])
                .chain(self.roaming[other].iter().map(|c| c.from))
                .collect(),
            Some(legs) => vec![legs[other]],
            None => self.candidates[other].iter().map(|c| c.from).collect(),
        };
        let to: Vec<SocketAddr> = to.into_iter().filter(|&a| self.may_pair(from, a)).collect();
        if to.is_empty() {
            Decision::Refuse(Refusal::NoDestination)
        } else {
            Decision::Relay(to)
        }
    }

    /// Whether a handshake reply from `from` on `side` may be relayed at all: when the pair is
    /// bound, only the side's bound leg answers (a leg moves by initiating, rule 5), or one of
    /// its roaming candidates (rule 9).
    fn may_answer(&self, side: Side, from: SocketAddr) -> bool {
        self.bound.is_none_or(|legs| {
            legs[side.index()] == from || self.roaming[side.index()].iter().any(|c| c.from == from)
        })
    }

    /// The live initiation on `side` whose sender index is `index`, from an address that may
    /// pair with `responder`.
    fn initiation_by_index(
        &self,
        side: Side,
        index: u32,
        responder: SocketAddr,
    ) -> Option<Candidate> {
        self.candidates[side.index()]
            .iter()
            .rev()
            .find(|c| c.sender == index && self.may_pair(c.from, responder))
            .copied()
    }

    fn response(
        &mut self,
        side: Side,
        from: SocketAddr,
        sender: u32,
        receiver: u32,
        now: Instant,
    ) -> Decision {
        if !self.may_answer(side, from) {
            return Decision::Refuse(Refusal::NotLeg);
        }
        let Some(initiation) = self.initiation_by_index(side.other(), receiver, from) else {
            return Decision::Refuse(Refusal::Unanswered);
        };
        if let Some(legs) = self.bound {
            let initiator_bound = legs[side.other().index()] == initiation.from;
            if legs[side.index()] == from {
                if initiator_bound {
                    // A rekey between the legs: the sessions' indices, for rule 9.
                    self.learn(side.other(), sender);
                    self.learn(side, initiation.sender);
                }
            } else if !initiator_bound || self.indices[side.other().index()].contains(&sender) {
                // A roaming candidate answers only the bound leg's initiations, with an index
                // of its own: one the initiator's data already carries would have that
                // session's data handed to whoever sent this (rule 9).
                return Decision::Refuse(Refusal::NotLeg);
            }
        }
        self.pending
            .retain(|p| !(p.initiator_addr == initiation.from && p.responder_addr == from));
        if self.pending.len() == MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push(Pending {
            initiator: side.other(),
            initiator_addr: initiation.from,
            initiator_index: initiation.sender,
            responder_addr: from,
            responder_index: sender,
            initiator_sent: false,
            at: now,
        });
        Decision::Relay(vec![initiation.from])
    }

    fn cookie_reply(&mut self, side: Side, from: SocketAddr, receiver: u32) -> Decision {
        if !self.may_answer(side, from) {
            return Decision::Refuse(Refusal::NotLeg);
        }
        // Under load, a responder answers an initiation with a cookie reply …
        if let Some(initiation) = self.initiation_by_index(side.other(), receiver, from) {
            return Decision::Relay(vec![initiation.from]);
        }
        // … and an initiator under load answers a response with one.
        match self.pending.iter().rev().find(|p| {
            p.initiator == side && p.initiator_addr == from && p.responder_index == receiver
        }) {
            Some(p) => Decision::Relay(vec![p.responder_addr]),
            None => Decision::Refuse(Refusal::Unanswered),
        }
    }

    fn data(
        &mut self,
        side: Side,
        from: SocketAddr,
        receiver: u32,
        counter: u64,
        now: Instant,
    ) -> Decision {
        // The responder's first data on a confirmed handshake completes it (rule 4); this
        // comes first because the responder may be the bound leg (a roaming initiator).
        if let Some(done) = self.pending.iter().copied().find(|p| {
            p.initiator == side.other()
                && p.initiator_sent
                && p.responder_addr == from
                && p.initiator_index == receiver
        }) {
            let mut legs = [from; 2];
            legs[done.initiator.index()] = done.initiator_addr;
            self.bound = Some(legs);
            self.candidates = Default::default();
            self.roaming = Default::default();
            self.pending.clear();
            self.learn(done.initiator, done.responder_index);
            self.learn(side, done.initiator_index);
            return Decision::Bind {
                legs,
                to: done.initiator_addr,
            };
        }
        // The initiator's data on a relayed response goes to the responder only — before the
        // bound legs' rule, because a bound initiator's data on a session made with a roaming
        // candidate goes to the candidate (rule 9). A rekey between the bound legs needs
        // nothing of this: the next rule carries it. The session must start here: its first
        // message (counter 0) comes first. A response can name any index, also one of a
        // session the initiator already uses (made before the pair bound, or before a
        // release); that session's data has long passed counter 0, so it never follows.
        let legs = self.bound;
        let between_legs = |p: &Pending| {
            legs.is_some_and(|l| {
                l[side.index()] == from && l[side.other().index()] == p.responder_addr
            })
        };
        if let Some(p) = self.pending.iter_mut().find(|p| {
            p.initiator == side
                && p.initiator_addr == from
                && p.responder_index == receiver
                && (p.initiator_sent || counter == 0)
                && !between_legs(p)
        }) {
            p.initiator_sent = true;
            // A silent responder confirms with its next keepalive (up to 10 s): the session
            // stays pending while the initiator uses it.
            p.at = now;
            return Decision::Relay(vec![p.responder_addr]);
        }
        if let Some(legs) = legs
            && legs[side.index()] == from
        {
            return Decision::Relay(vec![legs[side.other().index()]]);
        }
        if let Some(legs) = legs {
            self.note_roaming(side, from, receiver, legs, now);
        }
        Decision::Refuse(Refusal::Unbound)
    }

    /// Rule 9: data from `from`, not a leg, on `side`'s port of the bound pair: with one of the
    /// side's indices, `from` becomes a roaming candidate.
    fn note_roaming(
        &mut self,
        side: Side,
        from: SocketAddr,
        receiver: u32,
        legs: [SocketAddr; 2],
        now: Instant,
    ) {
        let watched = match self.watched {
            Watched::Always => true,
            Watched::From(t) => now >= t,
            Watched::Adopted => false,
        };
        if !watched || !self.may_pair(from, legs[side.other().index()]) {
            return;
        }
        // Each check costs the address its budget, so indices cannot be guessed by flooding.
        if !self.roam_checks[side.index()].allow(from, false, now)
            || !self.indices[side.index()].contains(&receiver)
        {
            return;
        }
        remember(
            &mut self.roaming[side.index()],
            self.policy.shared_address,
            Candidate {
                from,
                sender: receiver,
                at: now,
            },
        );
    }

    /// Notes that `side`'s data carries `receiver` on a session the relay saw made.
    fn learn(&mut self, side: Side, receiver: u32) {
        let known = &mut self.indices[side.index()];
        known.retain(|&i| i != receiver);
        if known.len() == KNOWN_INDICES {
            known.remove(0);
        }
        known.push(receiver);
    }
}

/// Adds `candidate` to `list`, replacing any earlier one of its IP address (of its address and
/// port when legs may share one: a host that floods from many ports holds one slot, not all),
/// and the oldest when the list is full.
fn remember(list: &mut Vec<Candidate>, shared_address: bool, candidate: Candidate) {
    list.retain(|c| {
        if shared_address {
            c.from != candidate.from
        } else {
            c.from.ip() != candidate.from.ip()
        }
    });
    if list.len() == MAX_CANDIDATES {
        list.remove(0);
    }
    list.push(candidate);
}

#[cfg(test)]
mod tests;
