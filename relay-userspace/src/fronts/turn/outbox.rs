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
//! twice the bound (the buffer filling while the writer writes the one it took).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Bytes that may wait for one stream client, beyond what its socket's send buffer holds.
pub const CLIENT_BUFFER_BYTES: usize = 512 * 1024;

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
    /// Refused: the connection is closing.
    Closed,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// One stream client's outgoing bytes (shared by its writers and its connection's writer task).
#[derive(Debug)]
pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
    limit: usize,
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes.
    pub fn new(limit: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            limit,
        })
    }

    /// Appends `frame`, whole or not at all.
    pub fn push(&self, frame: &[u8]) -> Push {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.closed {
                return Push::Closed;
            }
            if pending.bytes.len() + frame.len() > self.limit {
                return Push::Full;
            }
            pending.bytes.extend_from_slice(frame);
        }
        self.ready.notify_one();
        Push::Queued
    }

    /// Waits for bytes and moves all of them into `into` (whose earlier contents are dropped,
    /// its capacity kept unless grown large); false once the outbox is closed and empty.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_leave_together_in_order_and_the_bound_refuses_whole_frames() {
        let outbox = Outbox::new(10);
        assert_eq!(outbox.push(b"abcd"), Push::Queued);
        assert_eq!(outbox.push(b"efgh"), Push::Queued);
        assert_eq!(outbox.push(b"ijk"), Push::Full, "8 + 3 > 10: refused whole");
        assert_eq!(outbox.push(b"ij"), Push::Queued);
        let mut out = Vec::new();
        assert!(outbox.take(&mut out).await);
        assert_eq!(out, b"abcdefghij", "one write for all of them");
        // Taken: room again, while the writer still holds the taken bytes.
        assert_eq!(outbox.push(b"0123456789"), Push::Queued);
        assert!(outbox.take(&mut out).await);
        assert_eq!(out, b"0123456789");
    }

    #[tokio::test]
    async fn the_writer_waits_for_a_push_and_drains_before_it_stops() {
        let outbox = Outbox::new(1024);
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let (mut out, mut all) = (Vec::new(), Vec::new());
                while outbox.take(&mut out).await {
                    all.extend_from_slice(&out);
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
