//! One forwarder thread: receive a batch on its socket, have the front decide every datagram,
//! send the batch out grouped by destination family, publish the counters.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use relay_common::verdict::Reason;
use tracing::warn;

use super::{
    Action, DatagramHandler,
    batch_io::{Received, RecvBatch, SendBatch},
    counters::{LocalVerdicts, UserCounters},
};

/// What a worker needs.
pub struct Worker {
    /// The socket it receives on.
    pub socket: Arc<UdpSocket>,
    /// Sockets it sends from, per family: [IPv4, IPv6].
    pub senders: [Option<Arc<UdpSocket>>; 2],
    /// The front's decision.
    pub handler: Arc<dyn DatagramHandler>,
    /// Where verdicts are published.
    pub counters: Arc<UserCounters>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Datagrams per batch.
    pub batch: usize,
}

impl Worker {
    /// Runs until `stop` is set (checked at least every socket read timeout).
    pub fn run(self) {
        let mut recv = RecvBatch::new(self.batch);
        let mut send = SendBatch::new(self.batch);
        let mut received: Vec<Received> = Vec::with_capacity(self.batch);
        let mut verdicts = LocalVerdicts::default();
        let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut relays: Vec<(Arc<UdpSocket>, SocketAddr, usize, std::ops::Range<usize>)> =
            Vec::new();
        // Indexes into the receive batch to forward, per destination family.
        let mut out: [Vec<(SocketAddr, usize)>; 2] = [Vec::new(), Vec::new()];
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = recv.recv(&self.socket, &mut received) {
                warn!(error = %e, "relay socket receive failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            if received.is_empty() {
                continue;
            }
            let now = Instant::now();
            for (i, r) in received.iter().enumerate() {
                let payload = recv.payload(i, r);
                if r.truncated {
                    verdicts.add(Reason::DroppedMalformed, r.len);
                    continue;
                }
                match self.handler.handle(payload, r.src, now, &mut verdicts) {
                    Action::Forward { to } => out[to.is_ipv6() as usize].push((to, i)),
                    Action::Reply(reply) => replies.push((r.src, reply)),
                    Action::Relay { from, to, range } => relays.push((from, to, i, range)),
                    Action::Drop => {}
                }
            }
            for (family, list) in out.iter_mut().enumerate() {
                if list.is_empty() {
                    continue;
                }
                let datagrams: Vec<(SocketAddr, &[u8])> = list
                    .iter()
                    .map(|(to, i)| (*to, recv.payload(*i, &received[*i])))
                    .collect();
                let failed = match &self.senders[family] {
                    Some(socket) => send.send(socket, &datagrams),
                    None => datagrams.len(),
                };
                for _ in 0..failed {
                    verdicts.add(Reason::DroppedSendError, 0);
                }
                list.clear();
            }
            // Grouped by sending socket, each group in one sendmmsg.
            relays.sort_by_key(|(from, ..)| Arc::as_ptr(from) as usize);
            for group in relays.chunk_by(|a, b| Arc::ptr_eq(&a.0, &b.0)) {
                let datagrams: Vec<(SocketAddr, &[u8])> = group
                    .iter()
                    .map(|(_, to, i, range)| {
                        let payload = recv.payload(*i, &received[*i]);
                        (*to, payload.get(range.clone()).unwrap_or_default())
                    })
                    .collect();
                let failed = send.send(&group[0].0, &datagrams);
                for _ in 0..failed {
                    verdicts.add(Reason::DroppedSendError, 0);
                }
            }
            relays.clear();
            if !replies.is_empty() {
                let datagrams: Vec<(SocketAddr, &[u8])> =
                    replies.iter().map(|(to, r)| (*to, &r[..])).collect();
                send.send(&self.socket, &datagrams);
                replies.clear();
            }
            self.counters.publish(&mut verdicts);
        }
    }
}
