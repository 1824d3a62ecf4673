//! What waits for one TCP or TLS client: frames appended by whoever relays to it (its
//! allocation's relayed-port reader, its connection's replies), written by the connection's
//! writer in as few writes as it can.
//!
//! Frames are appended to one buffer, not queued one allocation each, and the writer takes the
//! whole buffer at once (swapping it with its own, emptied one): a burst of small ChannelData
//! frames leaves in one `write` (one TLS record per 16 KiB), where one write per frame drained
//! slower than a bursting peer filled it. The buffer is bounded in bytes
//! ([`CLIENT_BUFFER_BYTES`]): a frame that does not fit is refused whole, and the caller counts
//! it (`dropped_turn_client_slow`) — by then the kernel's send buffer and TCP's window are full
//! too, so the client is not reading at the rate its peers send. Memory per connection: at most
//! the bound, counting the bytes the writer took but has not written yet (it writes them in
//! pieces of [`WRITE_CHUNK`] and says so after each).
//!
//! All stream clients' outboxes also share one [`Budget`] (`turn.stream_buffers_mib`), so the
//! sum stays bounded however many connections there are (16 384 by default: at 512 KiB each,
//! 8 GiB). Clients that stopped reading cannot crowd out those that read: past half of the
//! budget only clients within an equal share may grow, and the last quarter is kept for
//! clients that hold almost nothing ([`Budget::take`]).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// Bytes that may wait for one stream client, beyond what its socket's send buffer holds.
pub const CLIENT_BUFFER_BYTES: usize = 512 * 1024;

/// A client holding no more than this keeps up with its peers: the budget's last quarter is
/// kept for such clients.
pub const KEEPING_UP: usize = 16 * 1024;

/// Bytes per write: one write of a burst of small frames, and the step in which the bytes a
/// writer took stop counting against its bound.
pub const WRITE_CHUNK: usize = 64 * 1024;

/// A writer's buffer grown beyond this is given back once written, so an idle connection holds
/// little.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Whether a frame was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Appended; the writer is woken.
    Queued,
    /// Refused: the buffer holds too much already (the client does not keep up).
    Full,
    /// Refused: all stream clients together hold what the budget allows (and this one more
    /// than it may take of what is left).
    OverBudget,
    /// Refused: the connection is closing.
    Closed,
}

/// The bytes all stream clients' outboxes may hold together.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    held: AtomicUsize,
    connections: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            held: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        })
    }

    /// Bytes held by all outboxes now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes `len` more bytes for an outbox that holds `own` already, if the budget allows:
    /// all of it for a client holding at most [`KEEPING_UP`]; three quarters of it for one
    /// within an equal share (the budget over the connections); half of it for the rest. So
    /// clients that stopped reading fill at most half between them, clients within their share
    /// a quarter more, and the last quarter stays for those that keep up — bytes a client holds
    /// already are not taken back, so only this reserve keeps them relaying.
    fn take(&self, own: usize, len: usize) -> bool {
        let connections = self.connections.load(Ordering::Relaxed).max(1);
        let fair_share = self.limit / connections;
        let wants = own + len;
        let ceiling = if wants <= KEEPING_UP {
            self.limit
        } else if wants <= fair_share {
            self.limit - self.limit / 4
        } else {
            self.limit / 2
        };
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + len <= ceiling).then_some(held + len)
            })
            .is_ok()
    }

    fn give_back(&self, len: usize) {
        self.held.fetch_sub(len, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes taken from the budget: those pending and those the writer is writing.
    held: usize,
    closed: bool,
}

/// One stream client's outgoing bytes (shared by its writers and its connection's writer task).
#[derive(Debug)]
pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    limit: usize,
    budget: Arc<Budget>,
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes of `budget`.
    pub fn new(limit: usize, budget: Arc<Budget>) -> Arc<Outbox> {
        budget.connections.fetch_add(1, Ordering::Relaxed);
        Arc::new(Outbox {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            limit,
            budget,
        })
    }

    /// Appends `frame`, whole or not at all.
    pub fn push(&self, frame: &[u8]) -> Push {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.closed {
                return Push::Closed;
            }
            if pending.held + frame.len() > self.limit {
                return Push::Full;
            }
            if !self.budget.take(pending.held, frame.len()) {
                return Push::OverBudget;
            }
            pending.held += frame.len();
            pending.bytes.extend_from_slice(frame);
        }
        self.ready.notify_one();
        Push::Queued
    }

    /// Whether more than a quarter of what may wait for the client is waiting (or being
    /// written): what its peers have in flight towards it still fits.
    pub fn backlogged(&self) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).held > self.limit / 4
    }

    /// The writer wrote (or gave up on) `len` bytes it took: they are no longer held.
    pub fn written(&self, len: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let len = len.min(pending.held);
        pending.held -= len;
        self.budget.give_back(len);
    }

    /// Waits for bytes and moves all of them into `into` (whose earlier contents are dropped,
    /// its capacity kept unless grown large); false once the outbox is closed and empty. The
    /// bytes stay held until the writer says they are [`written`](Outbox::written).
    pub async fn take(&self, into: &mut Vec<u8>) -> bool {
        into.clear();
        if into.capacity() > KEEP_CAPACITY {
            *into = Vec::new();
        }
        loop {
            {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if !pending.bytes.is_empty() {
                    std::mem::swap(into, &mut pending.bytes);
                    return true;
                }
                if pending.closed {
                    return false;
                }
            }
            // A push between the check and here left a permit: this returns at once.
            self.ready.notified().await;
        }
    }

    /// Refuses further frames; the writer still takes what is pending, then stops.
    pub fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.ready.notify_one();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let held = self
            .pending
            .get_mut()
            .map_or_else(|p| p.into_inner().held, |p| p.held);
        self.budget.give_back(held);
        self.budget.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Arc<Budget> {
        Budget::new(1 << 20)
    }

    #[tokio::test]
    async fn frames_leave_together_in_order_and_the_bound_refuses_whole_frames() {
        let outbox = Outbox::new(10, budget());
        assert_eq!(outbox.push(b"abcd"), Push::Queued);
        assert_eq!(outbox.push(b"efgh"), Push::Queued);
        assert_eq!(outbox.push(b"ijk"), Push::Full, "8 + 3 > 10: refused whole");
        assert_eq!(outbox.push(b"ij"), Push::Queued);
        let mut out = Vec::new();
        assert!(outbox.take(&mut out).await);
        assert_eq!(out, b"abcdefghij", "one write for all of them");
        // Taken but not yet written: still held.
        assert_eq!(outbox.push(b"0"), Push::Full);
        outbox.written(4);
        assert_eq!(outbox.push(b"0123"), Push::Queued);
        assert_eq!(outbox.push(b"4"), Push::Full);
        outbox.written(6);
        assert_eq!(outbox.push(b"456789"), Push::Queued);
        assert!(outbox.take(&mut out).await);
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn all_outboxes_share_one_budget_the_greedy_are_refused_first_and_a_quarter_is_kept() {
        // 4 × KEEPING_UP for all; each connection may hold the whole budget on its own.
        let limit = 4 * KEEPING_UP;
        let budget = Budget::new(limit);
        let (a, b) = (
            Outbox::new(limit, budget.clone()),
            Outbox::new(limit, budget.clone()),
        );
        const K: usize = KEEPING_UP;
        // Holding little: the whole budget. Over its equal share (2 K with two connections):
        // only while at most half is held.
        assert_eq!(a.push(&[0; K]), Push::Queued);
        assert_eq!(
            a.push(&[0; K + 1]),
            Push::OverBudget,
            "a would hold over its share"
        );
        // Within its share: up to three quarters.
        assert_eq!(a.push(&[0; K]), Push::Queued);
        assert_eq!(
            a.push(&[0]),
            Push::OverBudget,
            "a would hold over its share, half is held"
        );
        assert_eq!(
            b.push(&[0; K + 1]),
            Push::OverBudget,
            "b would pass three quarters"
        );
        assert_eq!(
            b.push(&[0; K]),
            Push::Queued,
            "the last quarter: b holds little"
        );
        assert_eq!(b.push(&[0]), Push::OverBudget);
        assert_eq!(budget.held(), 3 * K);
        // A third connection's shares are smaller (a and b keep what they hold); what it takes
        // while keeping up comes from the last quarter, and the budget is never exceeded.
        let c = Outbox::new(limit, budget.clone());
        assert_eq!(c.push(&[0; K]), Push::Queued);
        assert_eq!(c.push(&[0]), Push::OverBudget);
        assert_eq!(budget.held(), limit);
        // Written bytes and closed connections give their share back.
        c.written(K);
        assert_eq!(budget.held(), 3 * K);
        drop(b);
        assert_eq!(budget.held(), 2 * K);
        assert_eq!(c.push(&[0; K]), Push::Queued);
        drop((a, c));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn the_writer_waits_for_a_push_and_drains_before_it_stops() {
        let outbox = Outbox::new(1024, budget());
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let (mut out, mut all) = (Vec::new(), Vec::new());
                while outbox.take(&mut out).await {
                    all.extend_from_slice(&out);
                    outbox.written(out.len());
                }
                all
            })
        };
        tokio::task::yield_now().await;
        for i in 0..100u8 {
            assert_eq!(outbox.push(&[i]), Push::Queued);
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        outbox.close();
        assert_eq!(outbox.push(b"late"), Push::Closed);
        assert_eq!(writer.await.unwrap(), (0..100).collect::<Vec<u8>>());
    }
}
