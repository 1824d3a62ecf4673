//! `relay serve`: wires the control plane, the fast path, the userspace forwarder and the API
//! together and runs them until SIGTERM/SIGINT. Holds no forwarding or protocol logic itself.

pub mod attach;
pub mod host;
pub mod plane;
pub mod serve;
