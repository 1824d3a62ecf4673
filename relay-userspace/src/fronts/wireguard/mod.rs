//! Stock WireGuard through the relay with no client software (work in progress: the sans-IO
//! parts). Each peer of a pair gets a relay port of its own as its `Endpoint` for the other;
//! the relay learns which address is which peer from their handshakes, verified by `mac1`
//! (keyed by the receiver's public key, the only key material the relay has) and by both peers
//! using the session the handshake made ([`legs`]), then forwards their transport data.

pub mod legs;
pub mod mac;
pub mod relaying;
pub mod simulation;
