//! The UDP sockets of fronts' ports: bound one per family, shared between the task that reads
//! them and whatever sends from them — on one descriptor each (a relay holding its configured
//! maxima holds tens of thousands of these, and every descriptor counts against
//! `RLIMIT_NOFILE`).

use std::{
    cell::RefCell,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::Arc,
};

use tokio::io::{Interest, unix::AsyncFd};

/// Largest UDP payload: what a receive buffer must hold so nothing is truncated.
const MAX_DATAGRAM: usize = 65_536;
/// Datagrams read per wake-up before the task yields to the others on its thread.
const READ_BATCH: usize = 64;

thread_local! {
    /// One receive buffer per runtime thread, not per socket: tens of thousands of mostly idle
    /// ports would otherwise hold 64 kB each.
    static RECEIVE: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// A non-blocking UDP socket bound to `ip`:`port` for a front's relay port (IPv6 ones v6-only,
/// so each family has its own socket on the port), asking for `recv_buffer` bytes of receive
/// buffer (the kernel may cap it; that is not an error).
pub(crate) fn bind_udp(ip: IpAddr, port: u16, recv_buffer: usize) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, port);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let _ = socket.set_recv_buffer_size(recv_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Index of `ip`'s family in a front's per-family socket arrays: 0 IPv4 (or IPv4-mapped), 1 IPv6.
pub(crate) fn family_index(ip: IpAddr) -> usize {
    usize::from(crate::control::address_policy::normalise(ip).is_ipv6())
}

/// Sends without blocking (the caller is a task or a connection's reader): a full socket buffer
/// drops the datagram, which the caller counts.
pub(crate) fn send_nonblocking(socket: &UdpSocket, data: &[u8], to: SocketAddr) -> bool {
    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendto};
    sendto(
        socket.as_raw_fd(),
        data,
        &SockaddrStorage::from(to),
        MsgFlags::MSG_DONTWAIT,
    )
    .is_ok()
}

/// Reads `socket` for as long as the task runs, handing each datagram and its source to
/// `on_datagram` (called on the runtime thread, with a per-thread buffer: it must not await),
/// and `state` to `after_batch` after each batch of datagrams read at one wake-up — where the
/// caller publishes its counters once, not once per datagram (shared counters are contended
/// cache lines between the runtime's threads). The socket is registered with the runtime as it
/// is — no duplicate descriptor — so the caller keeps sending from its own `Arc`. Returns only
/// when the runtime refuses the socket.
pub(crate) async fn read_datagrams<S>(
    socket: Arc<UdpSocket>,
    mut state: S,
    mut on_datagram: impl FnMut(&mut S, &[u8], SocketAddr),
    mut after_batch: impl FnMut(&mut S),
) -> io::Result<()> {
    // SAFETY: the AsyncFd owns an `Arc` of the socket, so its descriptor stays open and the
    // same for as long as it is registered.
    let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE)? };
    loop {
        let mut ready = fd.readable().await?;
        let drained = RECEIVE.with_borrow_mut(|buf| {
            for _ in 0..READ_BATCH {
                match fd.get_ref().recv_from(buf) {
                    Ok((n, from)) => on_datagram(&mut state, &buf[..n], from),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    // A pending socket error (an ICMP error for an earlier send): the next read
                    // goes on.
                    Err(_) => {}
                }
            }
            false
        });
        after_batch(&mut state);
        if drained {
            ready.clear_ready();
        } else {
            // More may be queued: let the thread's other tasks run first.
            drop(ready);
            tokio::task::yield_now().await;
        }
    }
}

/// Why a relay port (a TURN relayed port, a WireGuard pair's port) could not be bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindFailure {
    /// Another socket holds the port (another process, or one of ours closing): try another.
    Taken,
    /// The process is out of file descriptors (EMFILE, ENFILE): no port will bind until
    /// some close, so the search stops; the client gets 508 like any capacity refusal, and
    /// the operator a log line naming the limit.
    NoDescriptors,
    /// Anything else (no such address, …): try another port.
    Other,
}

impl BindFailure {
    /// What an error from `bind()` or `socket()` means for the port search.
    pub fn of(error: &io::Error) -> BindFailure {
        if is_out_of_descriptors(error) {
            BindFailure::NoDescriptors
        } else if error.kind() == io::ErrorKind::AddrInUse {
            BindFailure::Taken
        } else {
            BindFailure::Other
        }
    }
}

/// Whether `error` is EMFILE or ENFILE: the process's or the system's descriptor table is
/// full.
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(e) if e == nix::errno::Errno::EMFILE as i32 || e == nix::errno::Errno::ENFILE as i32
    )
}
