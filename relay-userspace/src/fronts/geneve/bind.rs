//! The relay's side of the bind handshake (see docs/protocol.md): Request → Challenge,
//! Answer → Bound. Pure: the datagram, its source and the time go in; a reply and what changed
//! come out.
//!
//! Decisions enforced here, and why:
//! * Every reply is exactly as large as the request (all control messages are 72 bytes), so
//!   the relay cannot amplify traffic towards a spoofed source.
//! * Nothing is answered before the leg's MAC verifies: strangers learn nothing, not even
//!   whether a session exists.
//! * The challenge is stateless (a cookie MAC over VNI, leg, generation and the observed source
//!   under a rotating secret), so request floods cost no memory.
//! * A leg binds only to the address an Answer comes from, and only with a cookie issued to that
//!   address: only a client that receives there could have read it (return routability).
//! * Generations order binds: a newer one moves the leg, a replayed older one is ignored.

use std::{
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use relay_common::geneve::control::{
    CONTROL_LEN, ControlMessage, MessageType, Observed, ParseError, set_mac,
};

use super::{
    cookie_jar::CookieJar,
    crypto::{CookieInput, message_mac, verify_message},
};
use crate::control::{
    address_policy::AddressPolicy,
    session::canonical,
    table::{BindChange, SessionTable},
};

/// Why a control datagram got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindDrop {
    /// Did not parse.
    Malformed(ParseError),
    /// No such session.
    UnknownSession,
    /// The leg's MAC did not verify.
    BadMac,
    /// A Challenge or Bound sent to the relay.
    UnexpectedType,
    /// Older than the leg's accepted generation (or same generation, other address).
    StaleGeneration,
    /// The cookie was not issued to this source (or has expired).
    BadCookie,
    /// The source address may never be a leg (loopback, multicast, …).
    AddressRefused,
}

impl BindDrop {
    /// Lower-case name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            BindDrop::Malformed(_) => "malformed",
            BindDrop::UnknownSession => "unknown_session",
            BindDrop::BadMac => "bad_mac",
            BindDrop::UnexpectedType => "unexpected_type",
            BindDrop::StaleGeneration => "stale_generation",
            BindDrop::BadCookie => "bad_cookie",
            BindDrop::AddressRefused => "address_refused",
        }
    }
}

/// What one control datagram did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// A challenge was issued.
    Challenged,
    /// The leg bound, moved or refreshed.
    Accepted(BindChange),
    /// Dropped silently.
    Dropped(BindDrop),
}

impl BindOutcome {
    /// Lower-case name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            BindOutcome::Challenged => "challenged",
            BindOutcome::Accepted(BindChange::Bound) => "bound",
            BindOutcome::Accepted(BindChange::Moved { .. }) => "rebound",
            BindOutcome::Accepted(BindChange::Refreshed) => "refreshed",
            BindOutcome::Accepted(BindChange::Stale) => "stale_generation",
            BindOutcome::Dropped(d) => d.name(),
        }
    }
}

/// The result of handling one control datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindResponse {
    /// What happened.
    pub outcome: BindOutcome,
    /// Session and leg concerned (when the message parsed).
    pub target: Option<(u32, usize)>,
    /// The datagram to send back to the source, if any (always [`CONTROL_LEN`] bytes).
    pub reply: Option<[u8; CONTROL_LEN]>,
}

fn dropped(outcome: BindDrop, target: Option<(u32, usize)>) -> BindResponse {
    BindResponse {
        outcome: BindOutcome::Dropped(outcome),
        target,
        reply: None,
    }
}

/// The cookie input for a source address (IPv4 as IPv4-mapped, one encoding per address).
fn cookie_input(message: &ControlMessage, src: SocketAddr) -> CookieInput {
    let addr = match src.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    CookieInput {
        vni: message.vni,
        leg: message.leg,
        generation: message.generation,
        addr,
        port: src.port(),
    }
}

/// Encodes `message` and MACs it with `key`.
fn sealed(message: &ControlMessage, key: &[u8; 32]) -> [u8; CONTROL_LEN] {
    let mut bytes = message.encode();
    let mac = message_mac(key, &bytes);
    set_mac(&mut bytes, &mac);
    bytes
}

/// Handles a control datagram from `src`.
pub fn handle(
    table: &mut SessionTable,
    jar: &CookieJar,
    policy: &AddressPolicy,
    datagram: &[u8],
    src: SocketAddr,
    now: Instant,
) -> BindResponse {
    let src = canonical(src);
    let message = match ControlMessage::parse(datagram) {
        Ok(m) => m,
        Err(e) => return dropped(BindDrop::Malformed(e), None),
    };
    let target = Some((message.vni, message.leg as usize));
    // A WireGuard pair is a session too, but its legs' keys are the peers' public keys: it
    // is never bound this way (its legs are learnt from handshakes, `fronts::wireguard`).
    let Some(session) = table.get(message.vni).filter(|s| s.wireguard().is_none()) else {
        return dropped(BindDrop::UnknownSession, target);
    };
    let leg = &session.legs[message.leg as usize];
    let bytes: &[u8; CONTROL_LEN] = datagram.try_into().expect("parse checked the length");
    if !verify_message(&leg.key, bytes) {
        return dropped(BindDrop::BadMac, target);
    }
    if !policy.allows_leg(src.ip()) {
        return dropped(BindDrop::AddressRefused, target);
    }
    if message.generation < leg.generation {
        return dropped(BindDrop::StaleGeneration, target);
    }
    let key = leg.key;
    match message.kind {
        MessageType::Request => {
            let challenge = ControlMessage {
                kind: MessageType::Challenge,
                cookie: jar.issue(&cookie_input(&message, src)),
                observed: None,
                mac: [0; 16],
                ..message
            };
            BindResponse {
                outcome: BindOutcome::Challenged,
                target,
                reply: Some(sealed(&challenge, &key)),
            }
        }
        MessageType::Answer => {
            if !jar.verify(&cookie_input(&message, src), &message.cookie) {
                return dropped(BindDrop::BadCookie, target);
            }
            let change = table
                .bind(
                    message.vni,
                    message.leg as usize,
                    src,
                    message.generation,
                    now,
                )
                .expect("session looked up above");
            if change == BindChange::Stale {
                return dropped(BindDrop::StaleGeneration, target);
            }
            let bound = ControlMessage {
                kind: MessageType::Bound,
                cookie: message.cookie,
                observed: Some(observed(src)),
                mac: [0; 16],
                ..message
            };
            BindResponse {
                outcome: BindOutcome::Accepted(change),
                target,
                reply: Some(sealed(&bound, &key)),
            }
        }
        MessageType::Challenge | MessageType::Bound => dropped(BindDrop::UnexpectedType, target),
    }
}

/// `src` as echoed in a Bound message.
pub fn observed(src: SocketAddr) -> Observed {
    match src.ip() {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            Observed {
                family: 4,
                port: src.port(),
                addr,
            }
        }
        IpAddr::V6(v6) => Observed {
            family: 6,
            port: src.port(),
            addr: v6.octets(),
        },
    }
}

#[cfg(test)]
mod tests;
