//! The client's side of the bind handshake, without I/O: it produces the datagrams to send and
//! consumes the relay's, with time passed in. Request → (Challenge) → Answer → (Bound).
//!
//! Lost datagrams are retransmitted with exponential backoff; replies are accepted only when
//! they carry the leg key's MAC and belong to the current attempt's generation, so neither a
//! stranger nor an old reply can make the client believe it is bound.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use relay_common::geneve::control::{
    CONTROL_LEN, ControlMessage, KEY_LEN, MessageType, Observed, set_mac,
};

use crate::fronts::geneve::crypto::{message_mac, verify_message};

/// First retransmission delay; doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(300);
/// Longest retransmission delay.
pub const MAX_RETRY: Duration = Duration::from_secs(3);
/// Transmissions of one message before the attempt is given up.
pub const MAX_TRIES: u32 = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Idle,
    AwaitChallenge {
        request: [u8; CONTROL_LEN],
        next: Instant,
        tries: u32,
    },
    AwaitBound {
        answer: [u8; CONTROL_LEN],
        next: Instant,
        tries: u32,
    },
}

/// What a handshake step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this to the relay.
    Send([u8; CONTROL_LEN]),
    /// The relay bound the leg; it sees the client at `observed`.
    Bound {
        /// The client's public address as the relay sees it.
        observed: SocketAddr,
    },
    /// The attempt failed after [`MAX_TRIES`] transmissions.
    GaveUp,
    /// Nothing to do.
    Nothing,
}

/// One leg's bind handshakes.
pub struct Handshake {
    vni: u32,
    leg: u8,
    key: [u8; KEY_LEN],
    generation: u64,
    state: State,
    bound: Option<SocketAddr>,
}

fn observed_addr(o: &Observed) -> SocketAddr {
    let ip: IpAddr = if o.family == 4 {
        Ipv4Addr::new(o.addr[0], o.addr[1], o.addr[2], o.addr[3]).into()
    } else {
        Ipv6Addr::from(o.addr).into()
    };
    SocketAddr::new(ip, o.port)
}

fn backoff(tries: u32) -> Duration {
    (FIRST_RETRY * 2u32.saturating_pow(tries.saturating_sub(1))).min(MAX_RETRY)
}

impl Handshake {
    /// A handshake for leg `leg` of session `vni` with `key`.
    pub fn new(vni: u32, leg: u8, key: [u8; KEY_LEN]) -> Handshake {
        Handshake {
            vni,
            leg,
            key,
            generation: 0,
            state: State::Idle,
            bound: None,
        }
    }

    /// The address the relay last confirmed.
    pub fn observed(&self) -> Option<SocketAddr> {
        self.bound
    }

    /// Whether an attempt is under way.
    pub fn in_progress(&self) -> bool {
        self.state != State::Idle
    }

    fn sealed(&self, kind: MessageType, cookie: [u8; 16]) -> [u8; CONTROL_LEN] {
        let message = ControlMessage {
            vni: self.vni,
            kind,
            leg: self.leg,
            generation: self.generation,
            cookie,
            observed: None,
            mac: [0; 16],
        };
        let mut bytes = message.encode();
        let mac = message_mac(&self.key, &bytes);
        set_mac(&mut bytes, &mac);
        bytes
    }

    /// Starts a new attempt (a bind, a keepalive refresh, or a re-bind after moving). Its
    /// generation is the wall clock in milliseconds, and always above the previous one, so it
    /// supersedes every earlier bind — also one from before the client restarted.
    pub fn start(&mut self, now: Instant, unix_ms: u64) -> [u8; CONTROL_LEN] {
        self.generation = unix_ms.max(self.generation + 1);
        let request = self.sealed(MessageType::Request, [0; 16]);
        self.state = State::AwaitChallenge {
            request,
            next: now + backoff(1),
            tries: 1,
        };
        request
    }

    /// Handles a control datagram from the relay.
    pub fn on_datagram(&mut self, datagram: &[u8], now: Instant) -> Step {
        let Ok(message) = ControlMessage::parse(datagram) else {
            return Step::Nothing;
        };
        let bytes: &[u8; CONTROL_LEN] = datagram.try_into().expect("parsed: exact length");
        if message.vni != self.vni
            || message.leg != self.leg
            || message.generation != self.generation
            || !verify_message(&self.key, bytes)
        {
            return Step::Nothing;
        }
        match (message.kind, &self.state) {
            (MessageType::Challenge, State::AwaitChallenge { .. }) => {
                let answer = self.sealed(MessageType::Answer, message.cookie);
                self.state = State::AwaitBound {
                    answer,
                    next: now + backoff(1),
                    tries: 1,
                };
                Step::Send(answer)
            }
            (MessageType::Bound, State::AwaitBound { .. }) => {
                let Some(o) = message.observed else {
                    return Step::Nothing;
                };
                let observed = observed_addr(&o);
                self.state = State::Idle;
                self.bound = Some(observed);
                Step::Bound { observed }
            }
            _ => Step::Nothing,
        }
    }

    /// Retransmits when a reply is overdue; gives up after [`MAX_TRIES`].
    pub fn poll(&mut self, now: Instant) -> Step {
        let (message, next, tries) = match &mut self.state {
            State::Idle => return Step::Nothing,
            State::AwaitChallenge {
                request,
                next,
                tries,
            } => (*request, next, tries),
            State::AwaitBound {
                answer,
                next,
                tries,
            } => (*answer, next, tries),
        };
        if now < *next {
            return Step::Nothing;
        }
        if *tries >= MAX_TRIES {
            self.state = State::Idle;
            return Step::GaveUp;
        }
        *tries += 1;
        *next = now + backoff(*tries);
        Step::Send(message)
    }

    /// When [`Handshake::poll`] next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::AwaitChallenge { next, .. } | State::AwaitBound { next, .. } => Some(*next),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{SeedableRng, rngs::StdRng};
    use relay_common::maps::SessionLimits;

    use super::*;
    use crate::{
        control::{
            address_policy::AddressPolicy,
            table::{AllocationRequest, SessionTable, TableSettings},
        },
        fronts::geneve::{bind, cookie_jar::CookieJar},
    };

    struct Relay {
        table: SessionTable,
        jar: CookieJar,
        policy: AddressPolicy,
    }

    fn relay() -> (Relay, u32, [[u8; 32]; 2]) {
        let mut rng = StdRng::seed_from_u64(5);
        let now = Instant::now();
        let mut table = SessionTable::new(TableSettings {
            max_sessions: 4,
            quotas: [("t".to_string(), 4)].into(),
            bind_lifetime: Duration::from_secs(30),
            idle_lifetime: Duration::from_secs(300),
            limits: SessionLimits::default(),
        });
        let (s, _) = table
            .allocate("t", AllocationRequest::default(), now, 0, &mut rng)
            .unwrap();
        let (vni, keys) = (s.vni, [s.legs[0].key, s.legs[1].key]);
        let jar = CookieJar::new(Duration::from_secs(120), now, &mut rng);
        (
            Relay {
                table,
                jar,
                policy: AddressPolicy::strict(vec![]),
            },
            vni,
            keys,
        )
    }

    fn to_relay(r: &mut Relay, bytes: &[u8], src: &str) -> Option<[u8; CONTROL_LEN]> {
        bind::handle(
            &mut r.table,
            &r.jar,
            &r.policy,
            bytes,
            src.parse().unwrap(),
            Instant::now(),
        )
        .reply
    }

    #[test]
    fn client_and_relay_complete_a_bind_and_a_rebind() {
        let (mut r, vni, keys) = relay();
        let mut hs = Handshake::new(vni, 1, keys[1]);
        let t = Instant::now();
        let req = hs.start(t, 1_000);
        let challenge = to_relay(&mut r, &req, "198.51.100.9:4000").unwrap();
        let Step::Send(answer) = hs.on_datagram(&challenge, t) else {
            panic!("no answer")
        };
        let bound = to_relay(&mut r, &answer, "198.51.100.9:4000").unwrap();
        assert_eq!(
            hs.on_datagram(&bound, t),
            Step::Bound {
                observed: "198.51.100.9:4000".parse().unwrap()
            }
        );
        assert!(!hs.in_progress());
        // The NAT moved; the next attempt (same wall clock) still gets a newer generation.
        let req = hs.start(t, 1_000);
        let challenge = to_relay(&mut r, &req, "198.51.100.9:5000").unwrap();
        let Step::Send(answer) = hs.on_datagram(&challenge, t) else {
            panic!()
        };
        let bound = to_relay(&mut r, &answer, "198.51.100.9:5000").unwrap();
        assert!(matches!(hs.on_datagram(&bound, t), Step::Bound { .. }));
        assert_eq!(
            r.table.get(vni).unwrap().legs[1].bound,
            Some("198.51.100.9:5000".parse().unwrap())
        );
    }

    #[test]
    fn a_wireguard_pairs_public_keys_bind_nothing_through_the_session_protocol() {
        let (mut r, ..) = relay();
        let keys = [[0xA; 32], [0xB; 32]];
        let request = AllocationRequest {
            wireguard: Some(crate::control::table::PairRequest {
                public_keys: keys,
                ports: [40_000, 40_001],
                shared_address: false,
                idle_lifetime: Duration::from_secs(60),
                bind_lifetime: Duration::from_secs(60),
            }),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(9);
        let (pair, _) = r
            .table
            .allocate("t", request, Instant::now(), 0, &mut rng)
            .unwrap();
        let id = pair.vni;
        // The keys are public: anyone could run the bind handshake with them.
        let mut hs = Handshake::new(id, 0, keys[0]);
        let req = hs.start(Instant::now(), 1_000);
        assert_eq!(to_relay(&mut r, &req, "198.51.100.9:4000"), None);
        assert_eq!(r.table.get(id).unwrap().legs[0].bound, None);
    }

    #[test]
    fn forged_or_stale_replies_are_ignored() {
        let (mut r, vni, keys) = relay();
        let mut hs = Handshake::new(vni, 0, keys[0]);
        let t = Instant::now();
        let old = hs.start(t, 10);
        let old_challenge = to_relay(&mut r, &old, "198.51.100.9:1").unwrap();
        let _ = hs.start(t, 20);
        assert_eq!(
            hs.on_datagram(&old_challenge, t),
            Step::Nothing,
            "previous generation"
        );
        let mut forged = old_challenge;
        forged[20] ^= 1;
        assert_eq!(hs.on_datagram(&forged, t), Step::Nothing);
        // Leg b's key cannot talk to leg a's handshake.
        let mut other = Handshake::new(vni, 0, keys[1]);
        let req = other.start(t, 30);
        assert!(to_relay(&mut r, &req, "198.51.100.9:1").is_none());
    }

    #[test]
    fn retransmits_with_backoff_then_gives_up() {
        let mut hs = Handshake::new(1, 0, [0; 32]);
        let t = Instant::now();
        let req = hs.start(t, 1);
        assert_eq!(hs.poll(t), Step::Nothing);
        let mut at;
        let mut sends = 1;
        loop {
            at = hs.deadline().unwrap();
            match hs.poll(at) {
                Step::Send(m) => {
                    assert_eq!(m, req);
                    sends += 1;
                }
                Step::GaveUp => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sends, MAX_TRIES);
        assert!(
            at - t < Duration::from_secs(20),
            "gave up after {:?}",
            at - t
        );
        assert!(!hs.in_progress());
    }
}
