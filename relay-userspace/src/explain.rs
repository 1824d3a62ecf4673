//! `relay explain`: what the relay's XDP program does with a frame, and why — without sending
//! anything. The frame runs through a private copy of the program (BPF_PROG_TEST_RUN) that
//! reads the live relay's sessions, TURN allocations, configuration and redirect map but counts
//! into its own counters, so explaining changes no live number and no session's last-seen time. Like Katran's
//! simulator: the answer to "why was this packet dropped?".

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use relay_common::{
    geneve::{Datagram, GeneveHdr},
    turn::{CHANNEL_DATA_HLEN, FRONT_TURN, FRONT_TURN_SERVER, STUN_HLEN, TurnDatagram},
    verdict::Reason,
    wireguard::{self, FRONT_WIREGUARD},
};
use serde::Serialize;

use crate::dataplane::{
    Dataplane, LoadOptions, RelayMaps, attachment::pinned_interfaces, loader::remove_pins,
    object::PROGRAM_RELAY, simulate::run_frame,
};

/// What happened to one frame.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The XDP action.
    pub action: String,
    /// The verdict reason the program counted.
    pub reason: Option<&'static str>,
    /// The input frame, decoded.
    pub input: String,
    /// The frame as the program left it, decoded (when it changed).
    pub output: Option<String>,
    /// The output frame in hex (when it changed).
    pub output_hex: Option<String>,
}

/// A private copy of the relay program over a live relay's state.
pub struct Explainer {
    copy: Option<Dataplane>,
    pins: PathBuf,
    ingress: Option<u32>,
    /// The interface frames are taken to arrive on.
    pub interface: Option<String>,
}

impl Explainer {
    /// Loads the copy over the relay pinned in `live`. Frames arrive on `interface`, by default
    /// the first interface the relay is attached to (in the caller's network namespace).
    pub fn open(live: &Path, interface: Option<&str>) -> Result<Explainer> {
        let live_maps = RelayMaps::open_pinned(live)?;
        let capacity = live_maps.session_capacity();
        let allocations = live_maps.turn.capacity();
        drop(live_maps);
        let parent = live.parent().context("pin directory has no parent")?;
        // Unique per copy, not only per process: two copies open at once in one process (tests
        // on parallel threads) would otherwise race to pin their private maps in one place.
        static COPIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let copy = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pins = parent.join(format!("relay-explain-{}-{copy}", std::process::id()));
        let copy = Dataplane::load(&LoadOptions {
            pin_dir: pins.clone(),
            max_sessions: capacity.max(1),
            max_allocations: allocations.max(1),
            nexthop_cache_entries: 64,
            shared_from: Some(live.to_path_buf()),
        })
        .inspect_err(|_| {
            let _ = remove_pins(&pins);
        })?;
        let interface = interface
            .map(str::to_string)
            .or_else(|| pinned_interfaces(live).into_iter().next());
        let ingress = match &interface {
            Some(i) => Some(
                nix::net::if_::if_nametoindex(i.as_str())
                    .with_context(|| format!("interface {i} (run in the relay's namespace?)"))?,
            ),
            None => None,
        };
        Ok(Explainer {
            copy: Some(copy),
            pins,
            ingress,
            interface,
        })
    }

    /// Runs `frame` through the copy.
    pub fn explain(&mut self, frame: &[u8]) -> Result<Explanation> {
        let copy = self.copy.as_mut().expect("open until dropped");
        let ports = Ports::of(&copy.maps)?;
        let before = copy.maps.kernel_verdicts()?;
        let outcome = run_frame(copy.program(PROGRAM_RELAY)?, frame, self.ingress)?;
        let after = copy.maps.kernel_verdicts()?;
        let reason = Reason::ALL
            .iter()
            .find(|r| after[**r as usize].packets > before[**r as usize].packets)
            .map(|r| r.name());
        let changed = outcome.frame != frame;
        Ok(Explanation {
            action: outcome.action.to_string(),
            reason,
            input: describe_with(frame, &ports),
            output: changed.then(|| describe_with(&outcome.frame, &ports)),
            output_hex: changed.then(|| hex::encode(&outcome.frame)),
        })
    }
}

impl Drop for Explainer {
    fn drop(&mut self) {
        self.copy = None;
        let _ = remove_pins(&self.pins);
    }
}

/// Which front each of the relay's ports belongs to, so a payload is decoded as what it is.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    /// The session protocol's port.
    pub geneve: Option<u16>,
    /// The TURN server's ports.
    pub turn: Vec<u16>,
    /// TURN allocations' relayed ports and their slots.
    pub relayed: Vec<(u16, u32)>,
    /// WireGuard pairs' ports: port, side (0: peer A's), pair slot.
    pub wireguard: Vec<(u16, u8, u32)>,
}

impl Ports {
    /// The ports of the relay whose maps these are.
    pub fn of(maps: &RelayMaps) -> Result<Ports> {
        let mut ports = Ports {
            geneve: maps.config().ok().map(|c| u16::from_be(c.port)),
            ..Default::default()
        };
        for (raw, owner) in maps
            .turn
            .port_owners
            .all()
            .context("reading the port owner map")?
        {
            let port = u16::from_be(raw);
            match owner.front {
                FRONT_TURN_SERVER => ports.turn.push(port),
                FRONT_TURN => ports.relayed.push((port, owner.slot)),
                FRONT_WIREGUARD => ports.wireguard.push((port, owner.side, owner.slot)),
                _ => {}
            }
        }
        Ok(ports)
    }
}

fn checksum_word(ok: bool) -> &'static str {
    if ok { "ok" } else { "BAD" }
}

/// A frame in one line per layer, checksums verified by full recomputation; a UDP payload is
/// read as Geneve.
pub fn describe(frame: &[u8]) -> String {
    describe_with(frame, &Ports::default())
}

/// [`describe`], reading a UDP payload as the front that owns its port says (Geneve when no
/// front claims it).
pub fn describe_with(frame: &[u8], ports: &Ports) -> String {
    let mut out = String::new();
    let packet = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        Err(e) => return format!("{} bytes, undecodable: {e}", frame.len()),
    };
    if let Some(LinkSlice::Ethernet2(eth)) = &packet.link {
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let _ = writeln!(
            out,
            "ethernet {} → {} type {:#06x}",
            mac(eth.source()),
            mac(eth.destination()),
            u16::from(eth.ether_type())
        );
    }
    let mut pseudo = None;
    match &packet.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header().to_header();
            let _ = writeln!(
                out,
                "ipv4 {} → {} ttl {} tos {:#04x} len {}{} header checksum {}",
                v4.header().source_addr(),
                v4.header().destination_addr(),
                h.time_to_live,
                (h.dscp.value() << 2) | h.ecn.value(),
                h.total_len,
                if h.is_fragmenting_payload() {
                    " fragment"
                } else {
                    ""
                },
                checksum_word(h.calc_header_checksum() == h.header_checksum)
            );
            pseudo = Some(etherparse::IpHeaders::Ipv4(h, Default::default()));
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header().to_header();
            let _ = writeln!(
                out,
                "ipv6 {} → {} hop limit {} payload {}",
                v6.header().source_addr(),
                v6.header().destination_addr(),
                h.hop_limit,
                h.payload_length
            );
            pseudo = Some(etherparse::IpHeaders::Ipv6(h, Default::default()));
        }
        _ => {}
    }
    if let Some(TransportSlice::Udp(udp)) = &packet.transport {
        let h = udp.to_header();
        let payload = udp.payload();
        let check = match (&pseudo, h.checksum) {
            (_, 0) => "none",
            (Some(etherparse::IpHeaders::Ipv4(ip, _)), c) => {
                checksum_word(h.calc_checksum_ipv4(ip, payload).ok() == Some(c))
            }
            (Some(etherparse::IpHeaders::Ipv6(ip, _)), c) => {
                checksum_word(h.calc_checksum_ipv6(ip, payload).ok() == Some(c))
            }
            _ => "?",
        };
        let _ = writeln!(
            out,
            "udp {} → {} len {} checksum {check}",
            h.source_port, h.destination_port, h.length
        );
        let either = |p: u16| h.source_port == p || h.destination_port == p;
        if ports.turn.iter().any(|p| either(*p)) {
            let _ = writeln!(out, "{}", describe_turn(payload));
            return out.trim_end().to_string();
        }
        if let Some((port, side, slot)) = ports.wireguard.iter().find(|(p, _, _)| either(*p)) {
            let _ = writeln!(
                out,
                "{}, WireGuard pair slot {slot}, peer {}'s port {port}",
                describe_wireguard(payload),
                if *side == 0 { 'A' } else { 'B' }
            );
            return out.trim_end().to_string();
        }
        if ports.geneve.is_none_or(|g| !either(g))
            && let Some((port, slot)) = ports.relayed.iter().find(|(p, _)| either(*p))
        {
            let _ = writeln!(
                out,
                "{} bytes of data, TURN relayed port {port} (allocation slot {slot})",
                payload.len()
            );
            return out.trim_end().to_string();
        }
        match (Datagram::classify(payload), GeneveHdr::from_bytes(payload)) {
            (Datagram::Data { vni }, Some(g)) => {
                let _ = writeln!(
                    out,
                    "geneve data vni {vni} protocol {:#06x}, {} bytes after the header",
                    u16::from_be(g.protocol),
                    payload.len() - 8
                );
            }
            (Datagram::Control { vni }, _) => {
                let _ = writeln!(out, "geneve control (bind handshake) vni {vni}");
            }
            (Datagram::Malformed, _) => {
                let _ = writeln!(
                    out,
                    "not a supported Geneve packet ({} bytes)",
                    payload.len()
                );
            }
            _ => {}
        }
    } else if packet.transport.is_some() {
        let _ = writeln!(out, "not UDP");
    }
    out.trim_end().to_string()
}

/// A WireGuard message by what the relay can read of it: its type and indices.
fn describe_wireguard(payload: &[u8]) -> String {
    match wireguard::classify(payload) {
        wireguard::Message::Initiation { sender } => {
            format!("wireguard handshake initiation, sender {sender:#010x}")
        }
        wireguard::Message::Response { sender, receiver } => {
            format!("wireguard handshake response, sender {sender:#010x} receiver {receiver:#010x}")
        }
        wireguard::Message::CookieReply { receiver } => {
            format!("wireguard cookie reply, receiver {receiver:#010x}")
        }
        wireguard::Message::Data { receiver } => format!(
            "wireguard transport data, receiver {receiver:#010x}, {} bytes",
            payload.len()
        ),
        wireguard::Message::Invalid => {
            format!("not a WireGuard message ({} bytes)", payload.len())
        }
    }
}

/// A payload on the TURN port: ChannelData or a STUN message.
fn describe_turn(payload: &[u8]) -> String {
    match TurnDatagram::classify(payload) {
        TurnDatagram::ChannelData { channel, len } => {
            let extra = payload.len() - CHANNEL_DATA_HLEN - len;
            format!(
                "turn channel data channel {channel:#06x}, {len} bytes of data{}",
                if extra > 0 {
                    format!(" and {extra} after them (padding)")
                } else {
                    String::new()
                }
            )
        }
        TurnDatagram::Stun => {
            let kind = u16::from_be_bytes([payload[0], payload[1]]);
            // RFC 8489 §5: the class bits sit at 0x0110, the method in the rest.
            let class = match kind & 0x0110 {
                0x0000 => "request",
                0x0010 => "indication",
                0x0100 => "success response",
                _ => "error response",
            };
            let method = (kind & 0x000f) | ((kind & 0x00e0) >> 1) | ((kind & 0x3e00) >> 2);
            let name = match method {
                0x001 => "binding",
                0x003 => "allocate",
                0x004 => "refresh",
                0x006 => "send",
                0x007 => "data",
                0x008 => "create permission",
                0x009 => "channel bind",
                _ => "unknown method",
            };
            format!(
                "stun {name} {class} ({method:#05x}), {} bytes",
                payload.len().max(STUN_HLEN)
            )
        }
        TurnDatagram::Malformed => format!(
            "neither STUN nor ChannelData that fits ({} bytes)",
            payload.len()
        ),
    }
}

/// Frames from a capture file (pcap or pcapng).
pub fn frames_from_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut frames = Vec::new();
    if let Ok(mut reader) = pcap_file::pcap::PcapReader::new(&bytes[..]) {
        while let Some(packet) = reader.next_packet() {
            frames.push(packet.context("reading a pcap record")?.data.into_owned());
        }
        return Ok(frames);
    }
    let mut reader = pcap_file::pcapng::PcapNgReader::new(&bytes[..])
        .with_context(|| format!("{} is neither pcap nor pcapng", path.display()))?;
    while let Some(block) = reader.next_block() {
        if let pcap_file::pcapng::Block::EnhancedPacket(p) =
            block.context("reading a pcapng block")?
        {
            frames.push(p.data.into_owned());
        }
    }
    Ok(frames)
}

/// A frame written in hex (spaces, colons and newlines allowed).
pub fn frame_from_hex(text: &str) -> Result<Vec<u8>> {
    let clean: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if clean.len()
        != text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .count()
    {
        anyhow::bail!("not hex: {text:?}");
    }
    hex::decode(&clean).context("odd number of hex digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_input_tolerates_separators() {
        assert_eq!(frame_from_hex("01 02:0a\nFF").unwrap(), vec![1, 2, 10, 255]);
        assert!(frame_from_hex("01 0").is_err());
        assert!(frame_from_hex("zz").is_err());
    }

    #[test]
    fn describes_layers_and_verifies_checksums() {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64)
            .udp(4000, 6081);
        let mut payload = GeneveHdr::new(77, false, 0x7a12).to_bytes().to_vec();
        payload.extend_from_slice(b"hi");
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        let text = describe(&frame);
        assert!(
            text.contains("ipv4 198.51.100.1 → 192.0.2.10 ttl 64"),
            "{text}"
        );
        assert!(text.contains("header checksum ok"), "{text}");
        assert!(
            text.contains("udp 4000 → 6081 len 18 checksum ok"),
            "{text}"
        );
        assert!(
            text.contains("geneve data vni 77 protocol 0x7a12, 2 bytes"),
            "{text}"
        );
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert!(describe(&frame).contains("checksum BAD"));
    }

    #[test]
    fn describes_wireguard_by_port() {
        let ports = Ports {
            geneve: Some(6081),
            wireguard: vec![(51_820, 0, 4), (51_821, 1, 4)],
            ..Default::default()
        };
        let frame = |dport: u16, payload: &[u8]| {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64)
                .udp(40_000, dport)
                .write(&mut f, payload)
                .unwrap();
            f
        };
        let mut data = vec![0u8; 48];
        data[0] = 4;
        data[4..8].copy_from_slice(&0x1234u32.to_le_bytes());
        let text = describe_with(&frame(51_821, &data), &ports);
        assert!(
            text.contains("wireguard transport data, receiver 0x00001234, 48 bytes, WireGuard pair slot 4, peer B's port 51821"),
            "{text}"
        );
        let mut init = vec![0u8; 148];
        init[0] = 1;
        let text = describe_with(&frame(51_820, &init), &ports);
        assert!(text.contains("handshake initiation"), "{text}");
        assert!(text.contains("peer A's port 51820"), "{text}");
        let text = describe_with(&frame(51_820, &[9; 20]), &ports);
        assert!(
            text.contains("not a WireGuard message (20 bytes)"),
            "{text}"
        );
    }

    #[test]
    fn describes_turn_by_port() {
        let ports = Ports {
            geneve: Some(6081),
            turn: vec![3478],
            relayed: vec![(50_002, 7)],
            wireguard: Vec::new(),
        };
        let frame = |sport: u16, dport: u16, payload: &[u8]| {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([198, 51, 100, 1], [192, 0, 2, 10], 64)
                .udp(sport, dport)
                .write(&mut f, payload)
                .unwrap();
            f
        };
        let mut cd = relay_common::turn::ChannelDataHdr::new(0x4001, 3)
            .to_bytes()
            .to_vec();
        cd.extend_from_slice(b"abc\0");
        let text = describe_with(&frame(4000, 3478, &cd), &ports);
        assert!(
            text.contains("turn channel data channel 0x4001, 3 bytes of data and 1 after"),
            "{text}"
        );
        let mut allocate = vec![0u8; 20];
        allocate[1] = 0x03;
        allocate[4..8].copy_from_slice(&relay_common::turn::STUN_MAGIC_COOKIE.to_be_bytes());
        let text = describe_with(&frame(4000, 3478, &allocate), &ports);
        assert!(text.contains("stun allocate request (0x003)"), "{text}");
        // 0x0103: Allocate success response.
        let mut ok = allocate.clone();
        ok[0] = 0x01;
        let text = describe_with(&frame(3478, 4000, &ok), &ports);
        assert!(text.contains("stun allocate success response"), "{text}");
        let text = describe_with(&frame(9, 50_002, b"xyz"), &ports);
        assert!(
            text.contains("3 bytes of data, TURN relayed port 50002 (allocation slot 7)"),
            "{text}"
        );
        let text = describe_with(&frame(9, 3478, &[0xc0, 1]), &ports);
        assert!(text.contains("neither STUN nor ChannelData"), "{text}");
    }
}
