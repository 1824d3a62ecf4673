//! How many TCP and TLS connections the TURN server holds, per source address and in all.
//!
//! A connection costs a descriptor and some memory before it has proven anything, and a flood
//! of them (from one address, or from many) must neither exhaust the descriptor table nor keep
//! real clients out. So:
//!
//! * each source address may hold `turn.max_connections_per_source` connections; more from it
//!   are closed at once (a NAT of many users is one address: the default leaves room for a
//!   large office);
//! * the server holds at most `turn.max_connections`; when it is full, a new connection takes
//!   the place of the oldest one that has no allocation yet (a flood of idle or half-open
//!   connections is pushed out by newer ones instead of locking everyone out), and is refused
//!   only when every connection holds an allocation;
//! * a connection without an allocation is closed after [`ALLOCATION_DEADLINE`] anyway
//!   (`super::stream`), so the oldest unproven ones also go by themselves.
//!
//! Bookkeeping only (sans-IO): the caller closes a refused connection and closes an evicted
//! one when its [`Notify`] fires.

use std::{
    collections::{BTreeMap, HashMap, hash_map::Entry},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use super::server::FiveTuple;
use crate::control::address_policy::normalise;

/// A connection that has not created an allocation within this time is closed: a TURN client
/// allocates within a round trip or two of connecting (TLS adds one more).
pub const ALLOCATION_DEADLINE: Duration = Duration::from_secs(10);

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once, all sources.
    pub total: u32,
    /// Connections held at once from one source address.
    pub per_source: u32,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds `per_source` connections.
    PerSource,
    /// The server holds `total` connections, all with allocations.
    Total,
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// No allocation yet; its admission number.
    Pending(u64),
    /// It created an allocation.
    Established,
    /// A newer connection took its place; it is closing and no longer counts in the total.
    Evicted,
}

#[derive(Default)]
struct State {
    connections: HashMap<FiveTuple, Status>,
    per_source: HashMap<IpAddr, u32>,
    /// Connections that count against the total (not evicted).
    total: u32,
    /// Pending connections by admission number (oldest first), with the handle that closes
    /// each.
    pending: BTreeMap<u64, (FiveTuple, Arc<Notify>)>,
    next: u64,
}

/// The server's connections.
pub struct Connections {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

/// An admitted connection: its place is freed when this is dropped.
pub struct Admitted {
    connections: Arc<Connections>,
    five_tuple: FiveTuple,
    /// Notified when a newer connection takes this one's place (the server was full and this
    /// one had no allocation yet): the connection is to be closed.
    pub evicted: Arc<Notify>,
    /// How many older connections without an allocation were closed to make room for it.
    pub made_room: u32,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.remove(&self.five_tuple);
    }
}

impl Connections {
    /// No connections yet.
    pub fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Connections held now: in all, and without an allocation.
    pub fn held(&self) -> (u32, usize) {
        let state = self.lock();
        (state.total, state.pending.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection of `five_tuple`, making room if the server is full.
    pub fn admit(self: &Arc<Self>, five_tuple: FiveTuple) -> Result<Admitted, Refused> {
        let source = normalise(five_tuple.client.ip());
        let mut state = self.lock();
        if state.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source {
            return Err(Refused::PerSource);
        }
        let mut made_room = 0;
        while state.total >= self.limits.total {
            let Some((_, (oldest, evicted))) = state.pending.pop_first() else {
                return Err(Refused::Total);
            };
            evicted.notify_one();
            state.connections.insert(oldest, Status::Evicted);
            state.total -= 1;
            made_room += 1;
        }
        let evicted = Arc::new(Notify::new());
        let seq = state.next;
        state.next += 1;
        state.total += 1;
        *state.per_source.entry(source).or_default() += 1;
        state.pending.insert(seq, (five_tuple, evicted.clone()));
        state.connections.insert(five_tuple, Status::Pending(seq));
        Ok(Admitted {
            connections: self.clone(),
            five_tuple,
            evicted,
            made_room,
        })
    }

    /// `five_tuple`'s connection created an allocation: it is no longer evicted to make room.
    pub fn established(&self, five_tuple: &FiveTuple) {
        let mut state = self.lock();
        if let Some(status) = state.connections.get_mut(five_tuple)
            && let Status::Pending(seq) = *status
        {
            *status = Status::Established;
            state.pending.remove(&seq);
        }
    }

    fn remove(&self, five_tuple: &FiveTuple) {
        let mut state = self.lock();
        match state.connections.remove(five_tuple) {
            Some(Status::Pending(seq)) => {
                state.pending.remove(&seq);
                state.total -= 1;
            }
            Some(Status::Established) => state.total -= 1,
            Some(Status::Evicted) | None => {}
        }
        if let Entry::Occupied(mut n) = state.per_source.entry(normalise(five_tuple.client.ip())) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fronts::turn::server::Transport;

    fn tuple(client: &str) -> FiveTuple {
        FiveTuple {
            client: client.parse().unwrap(),
            server: "192.0.2.10:3478".parse().unwrap(),
            transport: Transport::Tcp,
        }
    }

    #[test]
    fn a_source_holds_at_most_its_cap_and_gets_room_back_as_connections_close() {
        let c = Connections::new(ConnectionLimits {
            total: 100,
            per_source: 2,
        });
        let a = c.admit(tuple("198.51.100.2:1000")).unwrap();
        let _b = c.admit(tuple("198.51.100.2:1001")).unwrap();
        assert_eq!(
            c.admit(tuple("198.51.100.2:1002")).err(),
            Some(Refused::PerSource)
        );
        // The IPv4-mapped spelling is the same source.
        assert_eq!(
            c.admit(tuple("[::ffff:198.51.100.2]:1003")).err(),
            Some(Refused::PerSource)
        );
        // Another source is not affected.
        let _other = c.admit(tuple("203.0.113.2:1000")).unwrap();
        drop(a);
        assert!(c.admit(tuple("198.51.100.2:1002")).is_ok());
        assert_eq!(c.held().0, 2, "the one admitted last was dropped at once");
    }

    #[test]
    fn a_full_server_pushes_out_the_oldest_connection_without_an_allocation() {
        let c = Connections::new(ConnectionLimits {
            total: 3,
            per_source: 100,
        });
        let first = c.admit(tuple("198.51.100.2:1")).unwrap();
        let second = c.admit(tuple("198.51.100.2:2")).unwrap();
        let third = c.admit(tuple("198.51.100.2:3")).unwrap();
        c.established(&first.five_tuple);
        let fourth = c.admit(tuple("203.0.113.9:4")).unwrap();
        assert_eq!(fourth.made_room, 1);
        // The oldest pending one (second) was told to close; the established one was not.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let told = |a: &Admitted| {
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(1), a.evicted.notified())
                    .await
                    .is_ok()
            })
        };
        assert!(told(&second));
        assert!(!told(&first));
        assert!(!told(&third));
        assert_eq!(c.held(), (3, 2));
        // Its close frees nothing more: it no longer counted.
        drop(second);
        assert_eq!(c.held(), (3, 2));
        // All established: the next one is refused.
        c.established(&third.five_tuple);
        c.established(&fourth.five_tuple);
        assert_eq!(c.admit(tuple("203.0.113.9:5")).err(), Some(Refused::Total));
        drop(third);
        assert!(c.admit(tuple("203.0.113.9:5")).is_ok());
    }
}
