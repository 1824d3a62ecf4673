//! The return path first: a TCP or TLS client's uploads wait while its allocation's relayed
//! port has a backlog of what peers sent it.
//!
//! Both directions of a stream client's allocation compete for the same CPU, but only one can
//! wait without loss: bytes not yet read from the client's connection stay in TCP's buffers
//! and window (the client is slowed, nothing is lost), while datagrams not yet read from the
//! relayed port overflow its receive buffer and are gone. A client that bursts uploads to an
//! echoing peer — or a call whose both directions peak at once — made the relay read the
//! connection faster than it drained the relayed port: measured in the lab, ten TLS clients
//! each bursting 3 000 × 1 000 B to an echo peer got 40 % of the echoes back, the rest lost to
//! `UdpRcvbufErrors` on the relayed ports (coturn, same load: 83 %). So before each read from
//! the connection, the reader looks at the receive queue of the relayed socket it last sent
//! from and, while that is more than a quarter full, waits for the port's reader to drain it —
//! at most [`MAX_WAIT`] per read, so a peer sending faster than the relay can forward slows the
//! client's uploads but cannot stop them.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{Arc, Weak},
    time::Duration,
};

/// The longest one read from the connection waits for the relayed port to drain.
pub const MAX_WAIT: Duration = Duration::from_millis(25);
/// How often the queue is looked at while waiting.
const POLL: Duration = Duration::from_millis(1);

/// A queue fuller than `1 / FULL_FRACTION` of its buffer is a backlog.
const FULL_FRACTION: u32 = 4;

/// The relayed socket a connection last sent from (weakly: a released allocation's port is
/// not kept bound by it).
#[derive(Default)]
pub struct ReturnPath {
    socket: Option<Weak<UdpSocket>>,
}

impl ReturnPath {
    /// The connection's data just left from `socket`.
    pub fn sent_from(&mut self, socket: &Arc<UdpSocket>) {
        if self
            .socket
            .as_ref()
            .is_none_or(|held| !std::ptr::eq(held.as_ptr(), Arc::as_ptr(socket)))
        {
            self.socket = Some(Arc::downgrade(socket));
        }
    }

    /// Waits (at most [`MAX_WAIT`]) while the relayed socket has a backlog; whether it waited.
    pub async fn wait(&self) -> bool {
        let Some(socket) = self.socket.as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        let mut waited = Duration::ZERO;
        while waited < MAX_WAIT && backlogged(&socket) {
            tokio::time::sleep(POLL).await;
            waited += POLL;
        }
        !waited.is_zero()
    }
}

/// Whether `socket`'s receive queue holds more than a quarter of its buffer.
fn backlogged(socket: &UdpSocket) -> bool {
    queue(socket).is_some_and(|(queued, buffer)| queued > buffer / FULL_FRACTION)
}

/// Bytes queued for reading (as the kernel charges them: datagrams' true sizes) and the
/// receive buffer's size, from `SO_MEMINFO`.
fn queue(socket: &UdpSocket) -> Option<(u32, u32)> {
    use nix::libc;
    // SK_MEMINFO_VARS: the kernel fills as many of its counters as `len` has room for.
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        (
            info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
            info[libc::SK_MEMINFO_RCVBUF as usize],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_relayed_queue_holds_the_next_read_until_drained_or_max_wait() {
        let relayed = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        relayed.set_nonblocking(true).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut path = ReturnPath::default();
        assert!(!path.wait().await, "no socket yet: nothing to wait for");
        path.sent_from(&relayed);
        assert!(!path.wait().await, "an empty queue is no backlog");

        let (queued, buffer) = queue(&relayed).unwrap();
        assert_eq!(queued, 0);
        let to = relayed.local_addr().unwrap();
        while !backlogged(&relayed) {
            peer.send_to(&[7; 1000], to).unwrap();
        }
        // Nobody drains it: the read waits its bound, then goes on.
        let started = tokio::time::Instant::now();
        assert!(path.wait().await);
        assert!(started.elapsed() >= MAX_WAIT);

        // Drained while waiting: the read goes on at once after.
        let drainer = relayed.clone();
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut buf = [0; 2000];
            while drainer.recv(&mut buf).is_ok() {}
        });
        assert!(path.wait().await);
        drain.await.unwrap();
        assert!(queue(&relayed).unwrap().0 < buffer / FULL_FRACTION);
        assert!(!path.wait().await);

        // A released port is not held, and no longer waited for.
        let weak = Arc::downgrade(&relayed);
        drop(relayed);
        assert!(weak.upgrade().is_none());
        assert!(!path.wait().await);
    }
}
