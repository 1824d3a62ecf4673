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
