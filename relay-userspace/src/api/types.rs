//! The API's JSON documents, shared by the server and the client.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `POST /v1/sessions` body (every field optional; an empty body is fine).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Human labels for the two legs, shown by the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Retrying a request with the same key returns the same session (also accepted as the
    /// `Idempotency-Key` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Leg labels.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    /// Leg a's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<String>,
    /// Leg b's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
}

/// The relay's public endpoints.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Endpoints {
    /// IPv4 endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<SocketAddr>,
    /// IPv6 endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<SocketAddr>,
}

impl Endpoints {
    /// The endpoints present, IPv4 first.
    pub fn all(&self) -> Vec<SocketAddr> {
        self.v4.iter().chain(self.v6.iter()).copied().collect()
    }
}

/// One leg of a session.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LegDetails {
    /// "a" or "b".
    pub leg: String,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The address it is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<SocketAddr>,
    /// Its bind key, base64 (only in responses about a single session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Everything a client needs to join this leg (only in responses about a single session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// A session.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SessionDetails {
    /// Session id (the Geneve VNI).
    pub vni: u32,
    /// Owning token's name.
    pub token: String,
    /// allocated | half_bound | bound.
    pub state: String,
    /// Allocation time, RFC 3339.
    pub created: String,
    /// Where clients send.
    pub relay: Endpoints,
    /// Seconds both legs have to bind.
    pub bind_lifetime_s: u64,
    /// Seconds of silence after which a bound session expires.
    pub idle_lifetime_s: u64,
    /// Legs a and b.
    pub legs: Vec<LegDetails>,
}

/// `GET /v1/sessions`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct SessionList {
    /// The caller's sessions, by VNI.
    pub sessions: Vec<SessionDetails>,
}

/// An error document.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ErrorDocument {
    /// Machine-readable code.
    pub error: String,
    /// Why.
    pub reason: String,
}

/// `POST /v1/wireguard` body: a pair of stock WireGuard peers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreatePair {
    /// The peers' WireGuard public keys, as `wg pubkey` prints them (required).
    #[serde(default)]
    pub public_keys: Option<PairKeys>,
    /// Human labels for the two peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Both peers may be behind one IP address (two peers behind one carrier-grade NAT).
    /// Off by default: it lets one host that knows both public keys play both peers before
    /// they shake hands (docs/security.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_address: bool,
    /// As for sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The two peers' public keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PairKeys {
    /// Peer a's.
    pub a: String,
    /// Peer b's.
    pub b: String,
}

/// One peer of a WireGuard pair.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PeerDetails {
    /// "a" or "b".
    pub peer: String,
    /// Its label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Its WireGuard public key.
    pub public_key: String,
    /// The relay endpoints this peer sends to (its own relay port), per family.
    pub relay: Endpoints,
    /// The address the relay learnt it at, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<SocketAddr>,
    /// The `[Peer]` section this peer adds for the other one (only in responses about a
    /// single pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippet: Option<String>,
}

/// A WireGuard pair.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PairDetails {
    /// Pair id.
    pub id: u32,
    /// Owning token's name.
    pub token: String,
    /// allocated | half_bound | bound (whether the relay has learnt the peers' addresses).
    pub state: String,
    /// Allocation time, RFC 3339.
    pub created: String,
    /// `PersistentKeepalive` of the snippets, seconds.
    pub keepalive_s: u32,
    /// Seconds of silence after which a learnt address is forgotten.
    pub idle_lifetime_s: u64,
    /// Peers a and b.
    pub peers: Vec<PeerDetails>,
}

/// `GET /v1/wireguard`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct PairList {
    /// The caller's pairs, by id.
    pub pairs: Vec<PairDetails>,
}
