//! `relay explain`: what the relay's XDP program does with a frame, and why — without sending
//! anything. The frame runs through a private copy of the program (BPF_PROG_TEST_RUN) that
//! reads the live relay's sessions, configuration and redirect map but counts into its own
//! counters, so explaining changes no live number and no session's last-seen time. Like Katran's
//! simulator: the answer to "why was this packet dropped?".

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use relay_common::{
    geneve::{Datagram, GeneveHdr},
    verdict::Reason,
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
        let capacity = RelayMaps::open_pinned(live)?.session_capacity();
        let parent = live.parent().context("pin directory has no parent")?;
        let pins = parent.join(format!("relay-explain-{}", std::process::id()));
        let copy = Dataplane::load(&LoadOptions {
            pin_dir: pins.clone(),
            max_sessions: capacity.max(1),
            max_allocations: 1,
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
            input: describe(frame),
            output: changed.then(|| describe(&outcome.frame)),
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

fn checksum_word(ok: bool) -> &'static str {
    if ok { "ok" } else { "BAD" }
}

/// A frame in one line per layer, checksums verified by full recomputation.
pub fn describe(frame: &[u8]) -> String {
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
}
