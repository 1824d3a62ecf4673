//! Batched datagram I/O: `recvmmsg` fills up to a batch of buffers in one system call and
//! `sendmmsg` sends a batch (each datagram to its own destination) in one more — the userspace
//! forwarder's main cost is system calls, so it makes as few as it can (Tailscale's relay
//! batches 128 the same way).

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use socket2::{Domain, Protocol, Socket, Type};

/// Largest datagram accepted (jumbo frames); longer ones are dropped as truncated.
pub const MAX_DATAGRAM: usize = 9216;
/// Socket buffer size requested for relay sockets (bursts of a 10 GbE link).
const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket on the relay port, one of several sharing it with SO_REUSEPORT (the kernel
/// spreads flows over them, one per worker thread).
pub fn relay_socket(addr: SocketAddr, read_timeout: Duration) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max (deploy/ raises it).
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_read_timeout(Some(read_timeout))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// One received datagram: its length in the batch buffer and its source.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub src: SocketAddr,
    /// Longer than the buffer (cut off).
    pub truncated: bool,
}

/// Receive buffers and headers for one socket, reused batch after batch.
pub struct RecvBatch {
    buffers: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl RecvBatch {
    /// Room for `size` datagrams.
    pub fn new(size: usize) -> RecvBatch {
        RecvBatch {
            buffers: (0..size).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            headers: MultiHeaders::preallocate(size, None),
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout) and takes as many as
    /// are queued, up to the batch size. An empty result means the timeout passed.
    pub fn recv(&mut self, socket: &UdpSocket, out: &mut Vec<Received>) -> io::Result<()> {
        out.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let results = match recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(r) => r,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for msg in results {
            let Some(src) = msg.address.and_then(|a| to_socket_addr(&a)) else {
                continue;
            };
            out.push(Received {
                len: msg.bytes,
                src,
                truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
            });
        }
        Ok(())
    }

    /// The payload of datagram `i` of the last batch.
    pub fn payload(&self, i: usize, r: &Received) -> &[u8] {
        &self.buffers[i][..r.len.min(MAX_DATAGRAM)]
    }
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Headers for sending batches, reused.
pub struct SendBatch {
    headers: MultiHeaders<SockaddrStorage>,
    size: usize,
}

impl SendBatch {
    /// Room for `size` datagrams per system call.
    pub fn new(size: usize) -> SendBatch {
        SendBatch {
            headers: MultiHeaders::preallocate(size, None),
            size,
        }
    }

    /// Sends every `(destination, payload)` on `socket`. Returns how many could not be sent
    /// (a datagram the kernel refuses is skipped, the rest still go).
    pub fn send(&mut self, socket: &UdpSocket, datagrams: &[(SocketAddr, &[u8])]) -> usize {
        let mut failed = 0;
        let mut rest = datagrams;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(self.size)];
            let addrs: Vec<Option<SockaddrStorage>> = chunk
                .iter()
                .map(|(to, _)| Some(SockaddrStorage::from(*to)))
                .collect();
            let slices: Vec<[IoSlice<'_>; 1]> =
                chunk.iter().map(|(_, p)| [IoSlice::new(p)]).collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                slices.iter(),
                &addrs,
                no_cmsgs,
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let sent = results.count().max(1).min(chunk.len());
                    rest = &rest[sent..];
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    // The first datagram of the chunk was refused (no route, bad address):
                    // count it and carry on with the others.
                    failed += 1;
                    rest = &rest[1..];
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_over_loopback() {
        let a = relay_socket("127.0.0.1:0".parse().unwrap(), Duration::from_millis(200)).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = a.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        let datagrams: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (to, &p[..])).collect();
        assert_eq!(SendBatch::new(4).send(&b, &datagrams), 0);
        let mut batch = RecvBatch::new(16);
        let mut got = Vec::new();
        let mut all = Vec::new();
        while all.len() < 10 {
            batch.recv(&a, &mut got).unwrap();
            assert!(!got.is_empty(), "timed out with {} of 10", all.len());
            for (i, r) in got.iter().enumerate() {
                assert_eq!(r.src, b.local_addr().unwrap());
                assert!(!r.truncated);
                all.push(batch.payload(i, r).to_vec());
            }
        }
        assert_eq!(all, payloads);
        // Nothing more: the call returns empty after the timeout.
        batch.recv(&a, &mut got).unwrap();
        assert!(got.is_empty());
    }
}
