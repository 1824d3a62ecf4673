//! The sessions as the userspace forwarder sees them: the same records the XDP program reads,
//! kept in a concurrent map so forwarder threads look sessions up without a global lock.

use dashmap::DashMap;
use relay_common::maps as fast;

/// VNI → fast-path view of the session.
#[derive(Default)]
pub struct ForwardTable {
    sessions: DashMap<u32, fast::Session>,
}

impl ForwardTable {
    /// An empty table.
    pub fn new() -> ForwardTable {
        ForwardTable::default()
    }

    /// Session `vni`.
    pub fn get(&self, vni: u32) -> Option<fast::Session> {
        self.sessions.get(&vni).map(|s| *s)
    }

    /// Inserts or replaces a session.
    pub fn upsert(&self, vni: u32, session: fast::Session) {
        self.sessions.insert(vni, session);
    }

    /// Removes a session.
    pub fn remove(&self, vni: u32) {
        self.sessions.remove(&vni);
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}
