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
//! from and, while that is more than half full, waits for the port's reader to drain it —
//! at most [`MAX_WAIT_FOR_PORT`] per read, so a peer sending faster than the relay can forward
//! slows the client's uploads but cannot stop them. The bound is 1 s: with 25 ms, a relayed
//! port's reader starved longer than that (a debug build, ten Python clients on the same two
//! cores) and 57 of 30 000 overflowed; with 100 ms, one CI run in three still overflowed 436.
//! It is the relay's own reader that is behind here, so a long bound costs a client only when
//! the relay is overloaded (or a peer floods faster than a port can be read).
//!
//! The same holds one step further on: while more than a quarter of what may wait for the
//! client ([`Outbox`]) is waiting, its uploads wait too. A client that sends a burst without
//! reading (coturn's `turnutils_uclient -z 0` reads only between its sends) would otherwise have its
//! echoes dropped as `dropped_turn_client_slow` (measured: 1 727–4 288 of 30 000 for ten such
//! clients once the peer echoed promptly); slowed, it reads them. A client that never reads
//! still loses what does not fit, at the bound, counted. That bound stays short,
//! [`MAX_WAIT_FOR_CLIENT`]: a client on a slow downlink must not have its uploads held for long
//! by its own downloads.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::{Arc, Weak},
    time::Duration,
};

use super::outbox::Outbox;

/// The longest one read from the connection waits for the relayed port to drain.
pub const MAX_WAIT_FOR_PORT: Duration = Duration::from_secs(1);
/// The longest one read from the connection waits for what waits for the client to drain.
pub const MAX_WAIT_FOR_CLIENT: Duration = Duration::from_millis(100);
/// How often the queue is looked at while waiting.
const POLL: Duration = Duration::from_millis(1);

/// A queue fuller than `1 / FULL_FRACTION` of its buffer is a backlog. Half, not less: what a
/// UDP socket reports as queued (`sk_rmem_alloc`) includes up to a quarter of its buffer that
/// the kernel has not given back yet while a queue remains (`udp_rmem_release`'s forward
/// deficit) — with a quarter, uploads waited for an empty queue and the relay idled at a third
/// of its core.
const FULL_FRACTION: u32 = 2;

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

    /// Waits while the relayed socket has a backlog (at most [`MAX_WAIT_FOR_PORT`]) or more
    /// than a quarter of what `outbox` may hold waits for the client (at most
    /// [`MAX_WAIT_FOR_CLIENT`]); whether it waited.
    pub async fn wait(&self, outbox: &Outbox) -> bool {
        let socket = self.socket.as_ref().and_then(Weak::upgrade);
        let mut waited = Duration::ZERO;
        loop {
            let bound = if socket.as_deref().is_some_and(backlogged) {
                MAX_WAIT_FOR_PORT
            } else if outbox.backlogged() {
                MAX_WAIT_FOR_CLIENT
            } else {
                break;
            };
            if waited >= bound {
                break;
            }
            tokio::time::sleep(POLL).await;
            waited += POLL;
        }
        !waited.is_zero()
    }
}

/// Whether `socket`'s receive queue holds more than half of its buffer.
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
    use crate::fronts::turn::outbox::{Budget, Push};

    #[tokio::test]
    async fn a_full_relayed_queue_holds_the_next_read_until_drained_or_its_bound() {
        let relayed = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        relayed.set_nonblocking(true).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let outbox = Outbox::new(1000, Budget::new(1 << 20));
        let mut path = ReturnPath::default();
        assert!(
            !path.wait(&outbox).await,
            "no socket yet: nothing to wait for"
        );
        path.sent_from(&relayed);
        assert!(!path.wait(&outbox).await, "an empty queue is no backlog");

        let (queued, buffer) = queue(&relayed).unwrap();
        assert_eq!(queued, 0);
        let to = relayed.local_addr().unwrap();
        while !backlogged(&relayed) {
            peer.send_to(&[7; 1000], to).unwrap();
        }
        // Nobody drains it: the read waits its bound, then goes on.
        let started = tokio::time::Instant::now();
        assert!(path.wait(&outbox).await);
        assert!(started.elapsed() >= MAX_WAIT_FOR_PORT);

        // Drained while waiting: the read goes on at once after.
        let drainer = relayed.clone();
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let mut buf = [0; 2000];
            while drainer.recv(&mut buf).is_ok() {}
        });
        assert!(path.wait(&outbox).await);
        drain.await.unwrap();
        assert!(queue(&relayed).unwrap().0 < buffer / FULL_FRACTION);
        assert!(!path.wait(&outbox).await);

        // A quarter of what may wait for the client is waiting: the read waits too, for the
        // shorter bound.
        assert_eq!(outbox.push(&[0; 251]), Push::Queued);
        let started = tokio::time::Instant::now();
        assert!(path.wait(&outbox).await);
        let took = started.elapsed();
        assert!(
            took >= MAX_WAIT_FOR_CLIENT && took < MAX_WAIT_FOR_PORT,
            "{took:?}"
        );
        let mut out = Vec::new();
        assert!(outbox.take(&mut out).await);
        outbox.written(out.len());
        assert!(!path.wait(&outbox).await);

        // A released port is not held, and no longer waited for.
        let weak = Arc::downgrade(&relayed);
        drop(relayed);
        assert!(weak.upgrade().is_none());
        assert!(!path.wait(&outbox).await);
    }
}
