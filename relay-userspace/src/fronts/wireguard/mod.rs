//! Stock WireGuard through the relay with no client software (work in progress: the protocol
//! logic is here and tested, with real wireguard-go peers in the lab; the daemon's front — API,
//! sockets, map writes, persistence — is not yet). Each peer of a pair gets a relay port of
//! its own as its `Endpoint` for the other; the relay learns which address is which peer from
//! their handshakes, verified by `mac1` (keyed by the receiver's public key, the only key
//! material the relay has, [`mac`]) and by both peers using the session the handshake made
//! ([`legs`]), then forwards their transport data — in the kernel once the legs are learnt, by
//! the rule [`relaying::Pair`] applies first too.

pub mod legs;
pub mod mac;
pub mod ports;
pub mod relaying;
pub mod simulation;
pub mod snippet;
