//! The data plane's wire format and checksum math (`relay_common::wire`, `relay_common::geneve`,
//! `relay_common::checksum`) and the host's one full-frame parser (`relay explain`'s
//! `describe`), on arbitrary bytes.
//!
//! Invariants:
//! * Geneve: `from_bytes` reads exactly the first 8 bytes (`to_bytes` gives them back), the VNI
//!   is 24 bits, and `Datagram::classify` follows from those 8 bytes alone, deterministically,
//!   as the RFC 8926 layout says (checked against a decoding written out here independently).
//! * Checksums: the IPv4 header checksum equals a byte-wise RFC 1071 reference; rewriting any
//!   header words with RFC 1624 incremental updates (what the XDP program does to TTL and
//!   addresses) gives exactly what a full recomputation gives; moving a UDP checksum from an
//!   IPv4 to an IPv6 pseudo-header gives the full recomputation (zero sent as all ones).
//! * `describe` never panics and always says something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_common::{
    checksum::{Incremental, ipv4_header_checksum},
    geneve::{Datagram, GENEVE_FLAG_CONTROL, GENEVE_HLEN, GeneveHdr, VNI_MAX},
    wire::IPV4_HLEN,
};

fuzz_target!(|data: &[u8]| {
    geneve(data);
    ipv4_header(data);
    pseudo_header_family_swap(data);
    assert!(!relay_userspace::explain::describe(data).is_empty());
});

fn geneve(data: &[u8]) {
    let class = Datagram::classify(data);
    assert_eq!(
        class,
        Datagram::classify(data),
        "classification is deterministic"
    );
    let Some(header) = GeneveHdr::from_bytes(data) else {
        assert!(data.len() < GENEVE_HLEN);
        assert_eq!(class, Datagram::Malformed);
        return;
    };
    let first = &data[..GENEVE_HLEN];
    assert_eq!(&header.to_bytes()[..], first);
    assert_eq!(
        Datagram::classify(first),
        class,
        "only the header classifies"
    );
    let vni = u32::from_be_bytes([0, data[4], data[5], data[6]]);
    assert_eq!(header.vni(), vni);
    assert!(vni <= VNI_MAX);
    // Version 0 and no option words is the whole first byte; O is the top bit of the second.
    let expected = match (data[0], data[1] & GENEVE_FLAG_CONTROL != 0) {
        (0, true) => Datagram::Control { vni },
        (0, false) => Datagram::Data { vni },
        _ => Datagram::Malformed,
    };
    assert_eq!(class, expected);
    // What the relay itself sends (no other flag, reserved zero) rebuilds from its fields.
    if data[1] & !GENEVE_FLAG_CONTROL == 0 && data[7] == 0 && data[0] == 0 {
        let rebuilt = GeneveHdr::new(vni, header.is_control(), u16::from_be(header.protocol));
        assert_eq!(rebuilt, header);
    }
}

/// Independent byte-wise RFC 1071 checksum (shares no code with `relay_common::checksum`).
fn reference_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for chunk in bytes.chunks(2) {
        sum += u64::from(chunk[0]) << 8 | u64::from(*chunk.get(1).unwrap_or(&0));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Raw network-order words, as the XDP program loads them.
fn words<const N: usize>(bytes: &[u8]) -> [u16; N] {
    core::array::from_fn(|i| u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]))
}

/// Index of the checksum word in an IPv4 header.
const IPV4_CHECK_WORD: usize = 5;

/// The first 20 bytes as an IPv4 header; the rest of the input picks words to rewrite and their
/// new values (3 bytes each: index, value).
fn ipv4_header(data: &[u8]) {
    let Some((head, rewrites)) = data.split_first_chunk::<IPV4_HLEN>() else {
        return;
    };
    let mut header = *head;
    // A real header's first word (version 4, IHL) is never zero and never rewritten. That keeps
    // the sum away from the one case where one's complement has two zeros and an incremental
    // update may legitimately give 0x0000 where a recomputation gives 0xffff (RFC 1624 §3).
    header[0] = 0x45;
    header[10..12].fill(0);
    let full = ipv4_header_checksum(&words(&header));
    assert_eq!(
        u16::from_be_bytes(full.to_ne_bytes()),
        reference_checksum(&header)
    );
    header[10..12].copy_from_slice(&full.to_ne_bytes());
    assert_eq!(
        reference_checksum(&header),
        0,
        "a checksummed header verifies"
    );

    let mut update = Incremental::new(full);
    for rewrite in rewrites.chunks_exact(3) {
        let i = 1 + usize::from(rewrite[0]) % (IPV4_HLEN / 2 - 1);
        if i == IPV4_CHECK_WORD {
            continue;
        }
        let old = u16::from_ne_bytes([header[2 * i], header[2 * i + 1]]);
        let new = u16::from_ne_bytes([rewrite[1], rewrite[2]]);
        header[2 * i..2 * i + 2].copy_from_slice(&new.to_ne_bytes());
        update = update.replace(old, new);
    }
    let incremental = update.finish();
    header[10..12].fill(0);
    assert_eq!(incremental, ipv4_header_checksum(&words(&header)));
    header[10..12].copy_from_slice(&incremental.to_ne_bytes());
    assert_eq!(
        reference_checksum(&header),
        0,
        "the rewritten header verifies"
    );
}

/// Layout of the input: IPv4 source and destination (8 bytes), IPv6 source and destination
/// (32 bytes), then the UDP header and payload (trimmed to an even length).
fn pseudo_header_family_swap(data: &[u8]) {
    let Some((addrs, rest)) = data.split_first_chunk::<40>() else {
        return;
    };
    let (v4s, v4d, v6s, v6d) = (&addrs[0..4], &addrs[4..8], &addrs[8..24], &addrs[24..40]);
    let udp = &rest[..rest.len() & !1];
    let Ok(len) = u16::try_from(udp.len()) else {
        return;
    };
    let len = len.to_be_bytes();
    let v4: Vec<u8> = [v4s, v4d, &[0, 17], &len, udp].concat();
    let v6: Vec<u8> = [v6s, v6d, &[0, 0], &len, &[0, 0, 0, 17], udp].concat();
    let updated = Incremental::new(reference_checksum(&v4).to_be())
        .remove_words(&words::<2>(v4s))
        .remove_words(&words::<2>(v4d))
        .add_words(&words::<8>(v6s))
        .add_words(&words::<8>(v6d))
        .finish_udp();
    let expected = match reference_checksum(&v6) {
        0 => 0xffff,
        c => c,
    };
    assert_eq!(u16::from_be(updated), expected);
}
