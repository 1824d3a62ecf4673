//! A packet tap in a lab host: an `AF_PACKET` socket that queues a copy of every frame the
//! host's interfaces see, read afterwards. Tests use it to get the real messages third-party
//! programs sent (wireguard-go's handshakes) and replay them as an attacker that captured them
//! would. No tool needed: tcpdump is only for debugging by hand.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
};

use anyhow::{Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, setsockopt, socket,
        sockopt,
    },
};

use crate::nat_lab::{Host, NatLab};

/// Room for what a test's few seconds of traffic queue before it reads them.
const TAP_BUFFER: usize = 8 << 20;

/// An open tap; frames queue from [`Tap::open`] until read.
pub struct Tap {
    fd: OwnedFd,
}

/// A UDP datagram the tap saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captured {
    /// Its source.
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// Its UDP payload.
    pub payload: Vec<u8>,
}

impl Tap {
    /// Starts capturing every frame of `host`'s interfaces (both directions).
    pub fn open(lab: &NatLab, host: Host) -> Result<Tap> {
        let fd = lab.in_host(host, || -> Result<OwnedFd> {
            let fd = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
            .context("opening an AF_PACKET socket")?;
            setsockopt(&fd, sockopt::RcvBuf, &TAP_BUFFER).context("the tap's buffer")?;
            Ok(fd)
        })??;
        Ok(Tap { fd })
    }

    /// Reads what queued so far and returns the UDP datagrams (IPv4 or IPv6) among it whose
    /// destination `wanted` accepts. Frames the buffer had no room for are lost, as in any
    /// capture.
    pub fn udp(&self, wanted: impl Fn(SocketAddr) -> bool) -> Result<Vec<Captured>> {
        let mut buf = vec![0u8; 65_536];
        let mut out = Vec::new();
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => return Ok(out),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e).context("reading the tap"),
            };
            if let Some(datagram) = parse(&buf[..n])
                && wanted(datagram.to)
            {
                out.push(datagram);
            }
        }
    }
}

/// The UDP datagram in Ethernet frame `frame`, if it holds one.
fn parse(frame: &[u8]) -> Option<Captured> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match packet.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return None,
    };
    let Some(TransportSlice::Udp(udp)) = packet.transport else {
        return None;
    };
    Some(Captured {
        from: SocketAddr::new(src, udp.source_port()),
        to: SocketAddr::new(dst, udp.destination_port()),
        payload: udp.payload().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    #[test]
    fn udp_in_ethernet_is_found_and_everything_else_is_not() {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)
            .udp(40_000, 45_000);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"\x01hello").unwrap();
        assert_eq!(
            parse(&frame),
            Some(Captured {
                from: "198.51.100.2:40000".parse().unwrap(),
                to: "192.0.2.10:45000".parse().unwrap(),
                payload: b"\x01hello".to_vec(),
            })
        );
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6([0x20; 16], [0x21; 16], 64)
            .udp(1, 2);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"x").unwrap();
        assert_eq!(parse(&frame).unwrap().to.port(), 2);
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)
            .tcp(1, 2, 0, 1000);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"x").unwrap();
        assert_eq!(parse(&frame), None);
        assert_eq!(parse(&[0u8; 10]), None);
    }
}
