//! The userspace forwarder: carries every datagram that reaches userspace on a front's ports (XDP
//! off, generic fallback, no neighbour entry yet, checksum cases the kernel passes up, control
//! messages) under the same rules and with the same verdict reasons as the XDP program. The
//! front decides each datagram ([`DatagramHandler`]); this module does the I/O: several threads,
//! each with its own SO_REUSEPORT socket per family, batch it with recvmmsg/sendmmsg, and count
//! what was decided.

pub mod batch_io;
pub mod counters;
pub mod table;
mod worker;

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use self::{
    counters::{LocalVerdicts, UserCounters},
    worker::Worker,
};

/// What to do with one received datagram.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send it, unchanged, to `to` (from the relay socket of `to`'s family).
    Forward {
        /// Destination.
        to: SocketAddr,
    },
    /// Send these bytes back to the datagram's source, from the socket it arrived on.
    Reply(Vec<u8>),
    /// Send `datagram[range]` to `to` from another socket (a TURN allocation's relayed port).
    Relay {
        /// The socket to send from.
        from: Arc<UdpSocket>,
        /// Destination.
        to: SocketAddr,
        /// The part of the received datagram to send.
        range: std::ops::Range<usize>,
    },
    /// Nothing to send (the reason was counted).
    Drop,
}

/// A front's decision for each datagram its relay sockets receive: the userspace counterpart of
/// its part of the XDP program.
pub trait DatagramHandler: Send + Sync {
    /// Decides `payload` from `src`, counting it under a verdict reason in `verdicts`.
    fn handle(
        &self,
        payload: &[u8],
        src: SocketAddr,
        now: Instant,
        verdicts: &mut LocalVerdicts,
    ) -> Action;
}

/// How often workers look at the stop flag while idle.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// Datagrams per batch.
pub const BATCH: usize = 64;

/// Running forwarder threads.
pub struct Forwarder {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    local: Vec<SocketAddr>,
    senders: [Option<Arc<UdpSocket>>; 2],
}

impl Forwarder {
    /// Opens `workers` sockets on each of `listen` (one address per family) and starts a
    /// thread per socket; `handler` decides every datagram, `counters` receive the verdicts.
    pub fn start(
        listen: &[SocketAddr],
        workers: usize,
        handler: Arc<dyn DatagramHandler>,
        counters: Arc<UserCounters>,
    ) -> io::Result<Forwarder> {
        let workers = workers.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        // sockets[w] = [v4, v6]
        let mut sockets: Vec<[Option<Arc<UdpSocket>>; 2]> = vec![[None, None]; workers];
        let mut local = Vec::new();
        for addr in listen {
            let mut bound = *addr;
            for slot in sockets.iter_mut() {
                let s = batch_io::relay_socket(bound, STOP_CHECK)?;
                // With port 0 (tests), the first socket picks the port the others share.
                bound = s.local_addr()?;
                slot[addr.is_ipv6() as usize] = Some(Arc::new(s));
            }
            local.push(bound);
        }
        let mut threads = Vec::new();
        for (w, pair) in sockets.iter().enumerate() {
            for socket in pair.iter().flatten() {
                let worker = Worker {
                    socket: socket.clone(),
                    senders: pair.clone(),
                    handler: handler.clone(),
                    counters: counters.clone(),
                    stop: stop.clone(),
                    batch: BATCH,
                };
                let family = if socket.local_addr()?.is_ipv6() { 6 } else { 4 };
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("fwd-v{family}-{w}"))
                        .spawn(move || worker.run())?,
                );
            }
        }
        Ok(Forwarder {
            threads,
            stop,
            local,
            senders: sockets.first().cloned().unwrap_or_default(),
        })
    }

    /// The addresses the sockets are bound to (one per family).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// A socket per family ([IPv4, IPv6]) to send from the forwarder's address outside its
    /// threads (a TURN front's peer data towards UDP clients).
    pub fn senders(&self) -> [Option<Arc<UdpSocket>>; 2] {
        self.senders.clone()
    }

    /// Stops every thread and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
