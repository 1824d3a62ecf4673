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
    geneve::{GENEVE_PROTOCOL_DATA, GeneveHdr},
    wireguard::{
        DATA_HLEN, DATA_MIN_LEN, INITIATION_LEN, RESPONSE_LEN, TYPE_DATA, TYPE_INITIATION,
        TYPE_RESPONSE,
    },
};

use relay_userspace::{
    client::handshake::{Handshake, Step},
    fronts::{geneve::ticket::Ticket, wireguard::mac::Mac1Key},
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

/// One stream of the workload: data packets from `from` to the relay's port `to_port`, their
/// UDP payload starting with `head` (the rest is filler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The sending leg.
    pub from: SocketAddrV4,
    /// The relay port it sends to.
    pub to_port: u16,
    /// The payload's first bytes: what makes it a packet of its session or pair.
    pub head: Vec<u8>,
}

/// The flows of sessions `vnis` (session `i` has VNI `vnis[i]`): a→b and b→a for each in
/// turn, to the relay's session port, each payload a Geneve data header.
pub fn session_flows(path: &Path, vnis: &[u32]) -> Vec<Flow> {
    vnis.iter()
        .enumerate()
        .flat_map(|(i, &vni)| {
            [0, 1].map(|leg| Flow {
                from: leg_addr(i, leg),
                to_port: path.relay.port(),
                head: GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA)
                    .to_bytes()
                    .to_vec(),
            })
        })
        .collect()
}

/// A WireGuard pair bound from the router: its legs, the relay port each side sends to, and
/// the receiver index each side's transport data carries (the other side's sender index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundPair {
    /// Peer a's and peer b's addresses.
    pub legs: [SocketAddrV4; 2],
    /// Relay port of side a and of side b.
    pub ports: [u16; 2],
    /// Receiver index of a's data and of b's data.
    pub receivers: [u32; 2],
}

/// The flows of `pairs`: transport data a→b and b→a of each in turn, each to its side's port.
pub fn pair_flows(pairs: &[BoundPair]) -> Vec<Flow> {
    pairs
        .iter()
        .flat_map(|p| {
            [0, 1].map(|side| {
                let mut head = vec![0u8; DATA_HLEN];
                head[0] = TYPE_DATA;
                head[4..8].copy_from_slice(&p.receivers[side].to_le_bytes());
                Flow {
                    from: p.legs[side],
                    to_port: p.ports[side],
                    head,
                }
            })
        })
        .collect()
}

/// One data packet of `flow` with `payload` bytes of UDP payload, checksums complete.
pub fn frame(path: &Path, flow: &Flow, payload: usize) -> Result<Vec<u8>> {
    if payload < flow.head.len() {
        bail!(
            "a packet of this flow carries at least its {}-byte header",
            flow.head.len()
        );
    }
    let mut data = flow.head.clone();
    data.resize(payload, 0x5a);
    let builder = PacketBuilder::ethernet2(path.gen_mac, path.relay_mac)
        .ipv4(flow.from.ip().octets(), path.relay.ip().octets(), 64)
        .udp(flow.from.port(), flow.to_port);
    let mut out = Vec::with_capacity(builder.size(data.len()));
    builder.write(&mut out, &data).context("building a frame")?;
    Ok(out)
}

/// The generator's input for `flows` at `payload` bytes: one full frame to hand the kernel,
/// and one template per flow, in order. All frames have the same length and payload, so each
/// differs from the input only in the bytes a template restores.
pub fn workload(path: &Path, flows: &[Flow], payload: usize) -> Result<(Vec<u8>, Vec<Template>)> {
    let mut templates = Vec::with_capacity(flows.len());
    let mut first = None;
    for flow in flows {
        let f = frame(path, flow, payload)?;
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

/// Peer `side` (0 = a, 1 = b) of WireGuard pair number `i`: on the same addresses as the
/// sessions' legs, from ports of their own.
pub fn pair_leg_addr(i: usize, side: usize) -> SocketAddrV4 {
    SocketAddrV4::new(*leg_addr(i, side).ip(), 30_000 + i as u16)
}

/// Binds a WireGuard pair from `legs` (addresses of the calling thread's namespace) the way two
/// stock peers do (`fronts::wireguard::legs`, rules 1–4): a's initiation to its port, b's
/// response, a's first data on the new session, b's first data. Each relayed message is waited
/// for at the other peer, the message before it resent until it arrives (the relay reads the
/// two ports on two sockets, so b's response can overtake a's initiation). `keys` are the
/// peers' public keys (`mac1`), `sender` their sender indices.
pub fn bind_pair(
    relay: Ipv4Addr,
    legs: [SocketAddrV4; 2],
    ports: [u16; 2],
    keys: [[u8; 32]; 2],
    sender: [u32; 2],
) -> Result<BoundPair> {
    let sockets = legs.map(UdpSocket::bind);
    let [Ok(a), Ok(b)] = sockets else {
        bail!("binding {legs:?}");
    };
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
    }
    let to = ports.map(|p| SocketAddrV4::new(relay, p));
    let mut initiation = vec![0u8; INITIATION_LEN];
    initiation[0] = TYPE_INITIATION;
    initiation[4..8].copy_from_slice(&sender[0].to_le_bytes());
    Mac1Key::for_receiver(&keys[1]).seal(&mut initiation);
    let mut response = vec![0u8; RESPONSE_LEN];
    response[0] = TYPE_RESPONSE;
    response[4..8].copy_from_slice(&sender[1].to_le_bytes());
    response[8..12].copy_from_slice(&sender[0].to_le_bytes());
    Mac1Key::for_receiver(&keys[0]).seal(&mut response);
    // Each side's transport data names the other's sender index.
    let receivers = [sender[1], sender[0]];
    let data = receivers.map(|r| {
        let mut d = vec![0u8; DATA_MIN_LEN];
        d[0] = TYPE_DATA;
        d[4..8].copy_from_slice(&r.to_le_bytes());
        d
    });
    a.send_to(&initiation, to[0])?;
    let steps: [(&UdpSocket, &[u8], SocketAddrV4, &UdpSocket); 3] = [
        (&b, &response, to[1], &a),
        (&a, &data[0], to[0], &b),
        (&b, &data[1], to[1], &a),
    ];
    let mut buf = [0u8; 256];
    // Resending is harmless: a response is relayed only to the live candidate it answers, data
    // of a pending response only between its two addresses (and initiations, which are
    // rate-limited, are not resent).
    for (n, (from, message, dest, at)) in steps.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let arrived = loop {
            if Instant::now() > deadline {
                break false;
            }
            from.send_to(message, dest)?;
            match at.recv(&mut buf) {
                Ok(len) if buf[..len] == *message => break true,
                _ => {}
            }
        };
        if !arrived {
            bail!("WireGuard pair on {ports:?}: step {n} was not relayed from {legs:?}");
        }
    }
    Ok(BoundPair {
        legs,
        ports,
        receivers,
    })
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

    /// Checks every template of `flows` rebuilds a valid frame of its flow; returns the UDP
    /// payloads.
    fn rebuilt(flows: &[Flow]) -> Vec<Vec<u8>> {
        let (base, templates) = workload(&path(), flows, 64).unwrap();
        assert_eq!(base.len(), 14 + 20 + 8 + 64);
        assert_eq!(templates.len(), flows.len());
        let mut payloads = Vec::new();
        for (t, flow) in templates.iter().zip(flows) {
            let mut f = base.clone();
            f[..TEMPLATE_LEN].copy_from_slice(&t.bytes);
            assert_eq!(f, frame(&path(), flow, 64).unwrap());
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not IPv4")
            };
            assert_eq!(ip.header().source_addr(), *flow.from.ip());
            let Some(TransportSlice::Udp(udp)) = p.transport else {
                panic!("not UDP")
            };
            assert_eq!(udp.source_port(), flow.from.port());
            assert_eq!(udp.destination_port(), flow.to_port);
            // The checksum covers this flow's headers and the shared payload.
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected);
            payloads.push(udp.payload().to_vec());
        }
        payloads
    }

    #[test]
    fn every_template_rebuilds_a_valid_frame_of_its_session() {
        let vnis = [7, 9, 11];
        let flows = session_flows(&path(), &vnis);
        assert_eq!(flows.len(), 6);
        for (n, payload) in rebuilt(&flows).iter().enumerate() {
            let (i, leg) = (n / 2, n % 2);
            assert_eq!(flows[n].from, leg_addr(i, leg));
            assert_eq!(flows[n].to_port, 6081);
            assert_eq!(GeneveHdr::from_bytes(payload).unwrap().vni(), vnis[i]);
        }
    }

    #[test]
    fn every_template_rebuilds_transport_data_of_its_pair() {
        let pairs: Vec<BoundPair> = (0..3)
            .map(|i| BoundPair {
                legs: [pair_leg_addr(i, 0), pair_leg_addr(i, 1)],
                ports: [45_000 + 2 * i as u16, 45_001 + 2 * i as u16],
                receivers: [0x200 + i as u32, 0x100 + i as u32],
            })
            .collect();
        let flows = pair_flows(&pairs);
        for (n, payload) in rebuilt(&flows).iter().enumerate() {
            let (p, side) = (&pairs[n / 2], n % 2);
            assert_eq!(flows[n].to_port, p.ports[side]);
            assert_eq!(
                relay_common::wireguard::classify(payload),
                relay_common::wireguard::Message::Data {
                    receiver: p.receivers[side]
                }
            );
        }
    }

    #[test]
    fn sizes_too_small_for_the_generator_are_refused() {
        let one = session_flows(&path(), &[1]);
        assert!(workload(&path(), &one, 4).is_err());
        assert!(workload(&path(), &one, 16).is_err());
        assert!(workload(&path(), &one, 30).is_ok());
        assert!(workload(&path(), &[], 64).is_err());
    }

    #[test]
    fn legs_are_distinct_per_session() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            for leg in [0, 1] {
                assert!(seen.insert(leg_addr(i, leg)));
                assert!(seen.insert(pair_leg_addr(i, leg)));
            }
        }
        assert_eq!(leg_addresses().len(), 128);
    }
}
