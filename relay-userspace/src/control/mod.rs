//! The control plane's logic, free of I/O: sessions and their table, the bind handshake with
//! its cookies, leg address rules, expiry, and tickets. Time and randomness are passed in, so
//! every rule is a fast unit test; the daemon wraps this in sockets, HTTP and timers.

pub mod address_policy;
pub mod bind;
pub mod cookie_jar;
pub mod crypto;
pub mod expiry;
pub mod persist;
pub mod session;
pub mod source_limit;
pub mod table;
pub mod ticket;
