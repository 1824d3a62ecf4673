//! The userspace forwarder: carries every data packet that reaches userspace (XDP off, generic
//! fallback, no neighbour entry yet, checksum cases the kernel passes up) under the same rules
//! and with the same verdict reasons as the XDP program, and hands bind-handshake messages to
//! the control plane. Several threads, each with its own SO_REUSEPORT socket per family, batch
//! their I/O with recvmmsg/sendmmsg.

pub mod batch_io;
pub mod counters;
pub mod decide;
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
    time::Duration,
};

use relay_common::geneve::control::CONTROL_LEN;

use self::{counters::UserCounters, table::ForwardTable, worker::Worker};

/// Handles bind-handshake datagrams (the daemon's control plane).
pub trait ControlHandler: Send + Sync {
    /// Handles `datagram` from `src`; returns the reply to send back, if any.
    fn handle(&self, datagram: &[u8], src: SocketAddr) -> Option<[u8; CONTROL_LEN]>;
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
}

impl Forwarder {
    /// Opens `workers` sockets on each of `listen` (one address per family) and starts a
    /// thread per socket.
    pub fn start(
        listen: &[SocketAddr],
        workers: usize,
        table: Arc<ForwardTable>,
        counters: Arc<UserCounters>,
        control: Arc<dyn ControlHandler>,
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
                    table: table.clone(),
                    counters: counters.clone(),
                    control: control.clone(),
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
        })
    }

    /// The addresses the sockets are bound to (one per family).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Stops every thread and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
