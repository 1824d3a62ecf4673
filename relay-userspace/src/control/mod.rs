//! The control services every front shares: sessions and their table (allocation, quotas,
//! binding legs), leg address rules, per-source limits, expiry, and how sessions persist in the
//! pinned maps. Everything but [`plane`] is free of I/O: time and randomness are passed in, so
//! every rule is a fast unit test. [`plane`] applies the table to where sessions live (the BPF
//! maps, the userspace forwarder's table and counters).

pub mod address_policy;
pub mod expiry;
pub mod persist;
pub mod plane;
pub mod session;
pub mod source_limit;
pub mod table;
