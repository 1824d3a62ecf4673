//! The benchmark's workload: sessions whose legs are addresses of the lab's internet router
//! (bound with the real handshake), and the frames the generator sends for them — data
//! packets in both directions, every session in turn, at one UDP payload size.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use etherparse::PacketBuilder;
use relay_common::{
    bench::{TEMPLATE_LEN, Template},
    geneve::{GENEVE_HLEN, GENEVE_PROTOCOL_DATA, GeneveHdr},
};

use relay_userspace::{
    client::handshake::{Handshake, Step},
    fronts::geneve::ticket::Ticket,
};

/// Distinct leg addresses per side (sessions beyond this share addresses, not ports).
pub const LEG_ADDRESSES: u8 = 64;

/// Leg `leg` (0 = a, 1 = b) of session number `i`: a's on 198.51.100.100.., b's on
/// 203.0.113.100.. (documentation ranges, added to the internet router), one port per session.
pub fn leg_addr(i: usize, leg: usize) -> SocketAddrV4 {
    let host = 100 + (i % LEG_ADDRESSES as usize) as u8;
    let ip = if leg == 0 {
        Ipv4Addr::new(198, 51, 100, host)
    } else {
        Ipv4Addr::new(203, 0, 113, host)
    };
    SocketAddrV4::new(ip, 20_000 + i as u16)
}

/// The addresses [`leg_addr`] uses, with prefix length, for `ip addr add`.
pub fn leg_addresses() -> Vec<String> {
    (0..LEG_ADDRESSES as usize)
        .flat_map(|i| [0, 1].map(|leg| format!("{}/32", leg_addr(i, leg).ip())))
        .collect()
}

/// Where frames go: MAC addresses of the generator's interface and the relay's, the relay's
/// endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    /// The generator's (internet router's) interface MAC.
    pub gen_mac: [u8; 6],
    /// The relay interface's MAC.
    pub relay_mac: [u8; 6],
    /// The relay's endpoint.
    pub relay: SocketAddrV4,
}

/// One data packet from `from` through the relay for session `vni`, with `payload` bytes of
/// UDP payload (the Geneve header included), checksums complete.
pub fn frame(path: &Path, from: SocketAddrV4, vni: u32, payload: usize) -> Result<Vec<u8>> {
    if payload < GENEVE_HLEN {
        bail!("a relay data packet carries at least the {GENEVE_HLEN}-byte Geneve header");
    }
    let mut data = GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA)
        .to_bytes()
        .to_vec();
    data.resize(payload, 0x5a);
    let builder = PacketBuilder::ethernet2(path.gen_mac, path.relay_mac)
        .ipv4(from.ip().octets(), path.relay.ip().octets(), 64)
        .udp(from.port(), path.relay.port());
    let mut out = Vec::with_capacity(builder.size(data.len()));
    builder.write(&mut out, &data).context("building a frame")?;
    Ok(out)
}

/// The generator's input for `vnis` (session `i` has VNI `vnis[i]`) at `payload` bytes: one
/// full frame to hand the kernel, and the templates, a→b and b→a for each session in turn.
/// All frames have the same length and payload, so each differs from the input only in the
/// bytes a template restores.
pub fn workload(path: &Path, vnis: &[u32], payload: usize) -> Result<(Vec<u8>, Vec<Template>)> {
    let mut templates = Vec::with_capacity(vnis.len() * 2);
    let mut first = None;
    for (i, vni) in vnis.iter().enumerate() {
        for leg in [0, 1] {
            let f = frame(path, leg_addr(i, leg), *vni, payload)?;
            if f.len() < TEMPLATE_LEN {
                bail!(
                    "{payload}-byte payloads make {}-byte frames; the generator needs {TEMPLATE_LEN}",
                    f.len()
                );
            }
            let mut bytes = [0u8; TEMPLATE_LEN];
            bytes.copy_from_slice(&f[..TEMPLATE_LEN]);
            templates.push(Template { bytes });
            first.get_or_insert(f);
        }
    }
    Ok((first.context("no sessions")?, templates))
}

/// Binds one leg from `from` (an address of the calling thread's namespace) with the real
/// handshake, retrying as a client would.
pub fn bind_leg(from: SocketAddrV4, ticket: &Ticket, relay: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(from).with_context(|| format!("binding {from}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut hs = Handshake::new(ticket.vni, ticket.leg, ticket.key);
    let unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_millis() as u64;
    socket.send_to(&hs.start(Instant::now(), unix_ms), relay)?;
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let step = match socket.recv(&mut buf) {
            Ok(n) => hs.on_datagram(&buf[..n], Instant::now()),
            Err(_) => hs.poll(Instant::now()),
        };
        match step {
            Step::Send(message) => {
                socket.send_to(&message, relay)?;
            }
            Step::Bound { .. } => return Ok(()),
            Step::GaveUp => break,
            Step::Nothing => {}
        }
    }
    bail!(
        "leg {} of session {} did not bind from {from}",
        ticket.leg,
        ticket.vni
    )
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    fn path() -> Path {
        Path {
            gen_mac: [2, 0, 0, 0, 0, 1],
            relay_mac: [2, 0, 0, 0, 0, 2],
            relay: "192.0.2.10:6081".parse().unwrap(),
        }
    }

    #[test]
    fn every_template_rebuilds_a_valid_frame_of_its_session() {
        let vnis = [7, 9, 11];
        let (base, templates) = workload(&path(), &vnis, 64).unwrap();
        assert_eq!(base.len(), 14 + 20 + 8 + 64);
        assert_eq!(templates.len(), 6);
        for (n, t) in templates.iter().enumerate() {
            let (i, leg) = (n / 2, n % 2);
            let mut f = base.clone();
            f[..TEMPLATE_LEN].copy_from_slice(&t.bytes);
            assert_eq!(f, frame(&path(), leg_addr(i, leg), vnis[i], 64).unwrap());
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            assert_eq!(ip.header().source_addr(), *leg_addr(i, leg).ip());
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            // The checksum covers this session's headers and the shared payload.
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected);
            let geneve = GeneveHdr::from_bytes(udp.payload()).unwrap();
            assert_eq!(geneve.vni(), vnis[i]);
        }
    }

    #[test]
    fn sizes_too_small_for_the_generator_are_refused() {
        assert!(workload(&path(), &[1], 4).is_err());
        assert!(workload(&path(), &[1], 16).is_err());
        assert!(workload(&path(), &[1], 30).is_ok());
        assert!(workload(&path(), &[], 64).is_err());
    }

    #[test]
    fn legs_are_distinct_per_session() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            for leg in [0, 1] {
                assert!(seen.insert(leg_addr(i, leg)));
            }
        }
        assert_eq!(leg_addresses().len(), 128);
    }
}
