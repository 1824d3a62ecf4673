//! The client side: joining a session from a ticket (or the API), the bind handshake, and the
//! sidecar that carries an application's UDP through the relay.

pub mod api;
pub mod handshake;
pub mod link;
pub mod sidecar;
