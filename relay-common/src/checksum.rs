//! Internet checksum math (RFC 1071) and incremental updates (RFC 1624).
//!
//! The relay never touches a payload, so it never needs to sum one: rewriting addresses, ports
//! and TTL only changes a few 16-bit words, and RFC 1624 eq. 3, `HC' = ~(~HC + ~m + m')`, updates
//! the checksum from those words alone. That keeps the XDP program free of variable-length loops.
//!
//! All words are raw network-order bytes loaded as native `u16`s. The one's complement sum is
//! byte-order independent (RFC 1071 §2(B)), so a sum of byte-swapped words is the byte-swapped
//! sum and nothing needs converting.

/// Folds a 32-bit one's complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds `N` words to a 32-bit accumulator (no fold). Safe for any `N` the headers need.
#[inline(always)]
pub const fn sum_words<const N: usize>(mut acc: u32, words: &[u16; N]) -> u32 {
    let mut i = 0;
    while i < N {
        acc += words[i] as u32;
        i += 1;
    }
    acc
}

/// The checksum of an IPv4 header given as its ten words with the checksum word set to zero.
#[inline(always)]
pub const fn ipv4_header_checksum(words: &[u16; 10]) -> u16 {
    !fold(sum_words(0, words))
}

/// Whether an IPv4 header, given as its ten words checksum included, carries the right
/// checksum (its words sum to all ones).
#[inline(always)]
pub const fn ipv4_header_valid(words: &[u16; 10]) -> bool {
    fold(sum_words(0, words)) == 0xffff
}

/// An incremental checksum update in progress (RFC 1624 eq. 3).
///
/// Start from the checksum in the packet, record every replaced word, then [`finish`] (IPv4
/// header) or [`finish_udp`] (UDP, where 0 means "no checksum").
///
/// [`finish`]: Incremental::finish
/// [`finish_udp`]: Incremental::finish_udp
#[derive(Clone, Copy, Debug)]
pub struct Incremental {
    acc: u32,
}

impl Incremental {
    /// Begins updating checksum `check` (raw, as loaded from the packet).
    #[inline(always)]
    pub const fn new(check: u16) -> Self {
        Incremental { acc: !check as u32 }
    }

    /// Removes a word that left the covered data.
    #[inline(always)]
    pub const fn remove(mut self, old: u16) -> Self {
        self.acc += !old as u32;
        self
    }

    /// Adds a word that entered the covered data.
    #[inline(always)]
    pub const fn add(mut self, new: u16) -> Self {
        self.acc += new as u32;
        self
    }

    /// Replaces one word.
    #[inline(always)]
    pub const fn replace(self, old: u16, new: u16) -> Self {
        self.remove(old).add(new)
    }

    /// Removes `N` words (an address leaving the pseudo-header).
    #[inline(always)]
    pub const fn remove_words<const N: usize>(mut self, old: &[u16; N]) -> Self {
        let mut i = 0;
        while i < N {
            self = self.remove(old[i]);
            i += 1;
        }
        self
    }

    /// Adds `N` words (an address entering the pseudo-header).
    #[inline(always)]
    pub const fn add_words<const N: usize>(mut self, new: &[u16; N]) -> Self {
        let mut i = 0;
        while i < N {
            self = self.add(new[i]);
            i += 1;
        }
        self
    }

    /// Replaces `N` words with `N` others.
    #[inline(always)]
    pub const fn replace_words<const N: usize>(self, old: &[u16; N], new: &[u16; N]) -> Self {
        self.remove_words(old).add_words(new)
    }

    /// The updated checksum.
    #[inline(always)]
    pub const fn finish(self) -> u16 {
        !fold(self.acc)
    }

    /// The updated UDP checksum: a computed zero is sent as all ones, because a zero UDP
    /// checksum means "not computed" (RFC 768).
    #[inline(always)]
    pub const fn finish_udp(self) -> u16 {
        match self.finish() {
            0 => 0xffff,
            c => c,
        }
    }
}

/// What a UDP checksum covers besides the payload: the pseudo-header's addresses (`N` words:
/// 2 for IPv4, 8 for IPv6), the ports and the UDP length, all raw network order. The protocol
/// number weighs the same in both pseudo-headers and is left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpCovered<const N: usize> {
    /// Source address words.
    pub src: [u16; N],
    /// Destination address words.
    pub dst: [u16; N],
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// UDP length (header included).
    pub len: u16,
}

/// The UDP checksum of a datagram relayed with new addresses, ports and length (possibly in
/// another family), computed from the incoming checksum `check` (RFC 1624) rather than from
/// the payload: the payload only lost the words summing to `removed` and gained the words
/// summing to `added` (one's complement sums, raw), and what stayed kept its 16-bit alignment.
/// The length counts twice: once in the pseudo-header, once in the UDP header.
#[inline(always)]
pub const fn udp_checksum_relayed<const N: usize, const M: usize>(
    check: u16,
    old: &UdpCovered<N>,
    new: &UdpCovered<M>,
    removed: u16,
    added: u16,
) -> u16 {
    Incremental::new(check)
        .remove_words(&old.src)
        .remove_words(&old.dst)
        .add_words(&new.src)
        .add_words(&new.dst)
        .replace(old.sport, new.sport)
        .replace(old.dport, new.dport)
        .replace(old.len, new.len)
        .replace(old.len, new.len)
        .remove(removed)
        .add(added)
        .finish_udp()
}

/// What forwarding one way across a same-family session changes in the checksums, summed once
/// when the legs are written instead of for every packet (issue 26: the per-packet sums were
/// a tenth of the session path).
///
/// A packet from leg `from` arrives as `from → relay:port` and leaves as `relay:port → to`: the
/// relay's address and port leave one place in the covered words and enter another, so they
/// cancel, and what changes is `from`'s address and port against `to`'s. Each field is that
/// difference as a one's complement sum in the range 1..=0xffff (zero written as 0xffff, the
/// same value), so that adding it to a checksum gives bit for bit what replacing the words one
/// by one gives ([`Incremental`]); a zero field is never a delta, and marks a record that has
/// none (an earlier build's, or a cross-family session).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ForwardDelta {
    /// UDP checksum: addresses and ports.
    pub udp: u16,
    /// IPv4 header checksum: addresses (the TTL, which arrives in any value, is per packet).
    pub ipv4: u16,
}

impl ForwardDelta {
    /// The delta of forwarding from address words `from` and port `from_port` to `to` and
    /// `to_port` (raw network order) in one family.
    #[inline(always)]
    pub const fn between<const N: usize>(
        from: &[u16; N],
        from_port: u16,
        to: &[u16; N],
        to_port: u16,
    ) -> ForwardDelta {
        let addresses = Incremental { acc: 0 }.remove_words(from).add_words(to);
        ForwardDelta {
            udp: nonzero(fold(addresses.replace(from_port, to_port).acc)),
            ipv4: nonzero(fold(addresses.acc)),
        }
    }

    /// Whether this is a delta (a record written without one holds zeros).
    #[inline(always)]
    pub const fn is_some(&self) -> bool {
        self.udp != 0
    }

    /// The UDP checksum `check` (raw, not 0) of a packet forwarded with this delta.
    #[inline(always)]
    pub const fn udp_checksum(&self, check: u16) -> u16 {
        Incremental::new(check).add(self.udp).finish_udp()
    }

    /// The IPv4 header checksum `check` of a packet forwarded with this delta whose TTL word
    /// changes from `old_ttl_word` to `new_ttl_word`.
    #[inline(always)]
    pub const fn ipv4_checksum(&self, check: u16, old_ttl_word: u16, new_ttl_word: u16) -> u16 {
        Incremental::new(check)
            .add(self.ipv4)
            .replace(old_ttl_word, new_ttl_word)
            .finish()
    }
}

/// A folded one's complement sum with zero written as all ones (the same value), so that a
/// sum including it is never the other zero, and 0 can mean "none".
#[inline(always)]
const fn nonzero(sum: u16) -> u16 {
    if sum == 0 { 0xffff } else { sum }
}

/// Converts a 16-bit TTL/protocol word for checksum purposes: IPv4 keeps TTL and protocol in one
/// 16-bit word (TTL first), so changing TTL replaces that word.
#[inline(always)]
pub const fn ttl_protocol_word(ttl: u8, protocol: u8) -> u16 {
    u16::from_ne_bytes([ttl, protocol])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Independent byte-wise RFC 1071 checksum (no shared code with the module under test).
    fn reference_checksum(bytes: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for chunk in bytes.chunks(2) {
            let hi = chunk[0] as u64;
            let lo = *chunk.get(1).unwrap_or(&0) as u64;
            sum += (hi << 8) | lo;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn words(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn ipv4_header_checksum_matches_rfc1071_example() {
        // A well-known header: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let w: [u16; 10] = words(&hdr).try_into().unwrap();
        assert_eq!(ipv4_header_checksum(&w).to_ne_bytes(), [0xb8, 0x61]);
        assert_eq!(reference_checksum(&hdr), 0xb861);
        let mut with = hdr;
        with[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert!(ipv4_header_valid(&words(&with).try_into().unwrap()));
        // The reserved flag bit, set after the checksum was computed.
        with[6] |= 0x80;
        assert!(!ipv4_header_valid(&words(&with).try_into().unwrap()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Rewriting any words of a checksummed block and updating incrementally gives the
        /// checksum a full recomputation gives.
        #[test]
        fn incremental_equals_full_recomputation(
            mut data in proptest::collection::vec(any::<u8>(), 4..80usize)
                .prop_filter("even length", |d| d.len() % 2 == 0),
            rewrites in proptest::collection::vec((any::<usize>(), any::<u16>()), 1..6),
        ) {
            // Bytes 0..2 hold the checksum of the rest, as in a real header.
            data[0] = 0;
            data[1] = 0;
            let c = reference_checksum(&data);
            data[0..2].copy_from_slice(&c.to_be_bytes());
            let mut update = Incremental::new(u16::from_ne_bytes([data[0], data[1]]));
            for (index, new) in rewrites {
                let i = 2 + 2 * (index % (data.len() / 2 - 1));
                let old = u16::from_ne_bytes([data[i], data[i + 1]]);
                data[i..i + 2].copy_from_slice(&new.to_ne_bytes());
                update = update.replace(old, new);
            }
            data[0..2].copy_from_slice(&update.finish().to_ne_bytes());
            // A correct checksum makes the whole block verify to zero.
            prop_assert_eq!(reference_checksum(&data), 0);
        }

        /// Moving a UDP checksum from an IPv4 to an IPv6 pseudo-header by removing the IPv4
        /// address words and adding the IPv6 ones equals a full recomputation.
        #[test]
        fn pseudo_header_family_swap(
            payload in proptest::collection::vec(any::<u8>(), 8..120usize)
                .prop_filter("even length", |d| d.len() % 2 == 0),
            v4s in any::<[u8; 4]>(), v4d in any::<[u8; 4]>(),
            v6s in any::<[u8; 16]>(), v6d in any::<[u8; 16]>(),
        ) {
            let len = (payload.len() as u16).to_be_bytes();
            let v4: Vec<u8> = [&v4s[..], &v4d, &[0, 17], &len, &payload].concat();
            let v6: Vec<u8> = [&v6s[..], &v6d, &[0, 0], &len, &[0, 0, 0, 17], &payload].concat();
            let c4 = reference_checksum(&v4);
            let w = |b: &[u8]| -> [u16; 2] { words(b).try_into().unwrap() };
            let w8 = |b: &[u8]| -> [u16; 8] { words(b).try_into().unwrap() };
            let updated = Incremental::new(c4.to_be())
                .remove_words(&w(&v4s))
                .remove_words(&w(&v4d))
                .add_words(&w8(&v6s))
                .add_words(&w8(&v6d))
                .finish_udp();
            let expected = match reference_checksum(&v6) {
                0 => 0xffff,
                c => c,
            };
            prop_assert_eq!(u16::from_be(updated), expected);
        }
    }

    /// A UDP datagram's bytes for checksumming: pseudo-header, header with zero checksum,
    /// payload.
    fn udp_sum_input(src: &[u8], dst: &[u8], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut v = Vec::new();
        v.extend_from_slice(src);
        v.extend_from_slice(dst);
        if src.len() == 4 {
            v.extend_from_slice(&[0, 17]);
            v.extend_from_slice(&len.to_be_bytes());
        } else {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, 17]);
        }
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&dport.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(payload);
        v
    }

    fn udp_checksum(src: &[u8], dst: &[u8], sport: u16, dport: u16, payload: &[u8]) -> u16 {
        match reference_checksum(&udp_sum_input(src, dst, sport, dport, payload)) {
            0 => 0xffff,
            c => c,
        }
    }

    fn covered<const N: usize>(
        src: &[u8],
        dst: &[u8],
        sport: u16,
        dport: u16,
        len: usize,
    ) -> UdpCovered<N> {
        UdpCovered {
            src: words(src).try_into().unwrap(),
            dst: words(dst).try_into().unwrap(),
            sport: sport.to_be(),
            dport: dport.to_be(),
            len: (len as u16).to_be(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Stripping a 4-byte header and trailing bytes from a payload (and re-addressing the
        /// datagram into either family) updates the checksum exactly as a full recomputation.
        #[test]
        fn relayed_with_a_header_removed_or_added(
            body in proptest::collection::vec(any::<u8>(), 0..90usize),
            header in any::<[u8; 4]>(),
            trailer in proptest::collection::vec(any::<u8>(), 0..4usize),
            a4 in any::<[u8; 4]>(), b4 in any::<[u8; 4]>(),
            a6 in any::<[u8; 16]>(), b6 in any::<[u8; 16]>(),
            ports in any::<[u16; 4]>(),
            families in any::<(bool, bool)>(),
        ) {
            let with: Vec<u8> = [&header[..], &body, &trailer].concat();
            let (src_in, dst_in): (&[u8], &[u8]) = if families.0 { (&a6, &b6) } else { (&a4, &b4) };
            let (src_out, dst_out): (&[u8], &[u8]) = if families.1 { (&b6, &a6) } else { (&b4, &a4) };
            let w = |b: &[u8]| u16::from_ne_bytes([b[0], b[1]]);
            let header_sum = fold(w(&header[0..2]) as u32 + w(&header[2..4]) as u32);
            // The trailer's bytes at their offsets in the payload (a lone byte pairs with zero).
            let mut t = 0u32;
            for (i, b) in trailer.iter().enumerate() {
                let offset = 4 + body.len() + i;
                t += if offset % 2 == 0 { u16::from_ne_bytes([*b, 0]) } else { u16::from_ne_bytes([0, *b]) } as u32;
            }
            let removed = fold(header_sum as u32 + t);
            // Datagram with header and trailer → datagram with the body only.
            let check_in = udp_checksum(src_in, dst_in, ports[0], ports[1], &with);
            let expected = udp_checksum(src_out, dst_out, ports[2], ports[3], &body);
            let got = match (families.0, families.1) {
                (false, false) => udp_checksum_relayed(check_in.to_be(),
                    &covered::<2>(src_in, dst_in, ports[0], ports[1], 8 + with.len()),
                    &covered::<2>(src_out, dst_out, ports[2], ports[3], 8 + body.len()), removed, 0),
                (false, true) => udp_checksum_relayed(check_in.to_be(),
                    &covered::<2>(src_in, dst_in, ports[0], ports[1], 8 + with.len()),
                    &covered::<8>(src_out, dst_out, ports[2], ports[3], 8 + body.len()), removed, 0),
                (true, false) => udp_checksum_relayed(check_in.to_be(),
                    &covered::<8>(src_in, dst_in, ports[0], ports[1], 8 + with.len()),
                    &covered::<2>(src_out, dst_out, ports[2], ports[3], 8 + body.len()), removed, 0),
                (true, true) => udp_checksum_relayed(check_in.to_be(),
                    &covered::<8>(src_in, dst_in, ports[0], ports[1], 8 + with.len()),
                    &covered::<8>(src_out, dst_out, ports[2], ports[3], 8 + body.len()), removed, 0),
            };
            prop_assert_eq!(u16::from_be(got), expected);
            // And the other way: the body gains the header (no trailer).
            let framed: Vec<u8> = [&header[..], &body].concat();
            let check_body = udp_checksum(src_out, dst_out, ports[2], ports[3], &body);
            let expected = udp_checksum(src_in, dst_in, ports[0], ports[1], &framed);
            let got = match (families.1, families.0) {
                (false, false) => udp_checksum_relayed(check_body.to_be(),
                    &covered::<2>(src_out, dst_out, ports[2], ports[3], 8 + body.len()),
                    &covered::<2>(src_in, dst_in, ports[0], ports[1], 8 + framed.len()), 0, header_sum),
                (false, true) => udp_checksum_relayed(check_body.to_be(),
                    &covered::<2>(src_out, dst_out, ports[2], ports[3], 8 + body.len()),
                    &covered::<8>(src_in, dst_in, ports[0], ports[1], 8 + framed.len()), 0, header_sum),
                (true, false) => udp_checksum_relayed(check_body.to_be(),
                    &covered::<8>(src_out, dst_out, ports[2], ports[3], 8 + body.len()),
                    &covered::<2>(src_in, dst_in, ports[0], ports[1], 8 + framed.len()), 0, header_sum),
                (true, true) => udp_checksum_relayed(check_body.to_be(),
                    &covered::<8>(src_out, dst_out, ports[2], ports[3], 8 + body.len()),
                    &covered::<8>(src_in, dst_in, ports[0], ports[1], 8 + framed.len()), 0, header_sum),
            };
            prop_assert_eq!(u16::from_be(got), expected);
        }
    }

    /// The word-by-word rewrite the program does without a delta (relay address and port
    /// `relay`, `port`): the reference a delta must match bit for bit.
    fn word_by_word<const N: usize>(
        check: (u16, u16),
        from: (&[u16; N], u16),
        to: (&[u16; N], u16),
        relay: (&[u16; N], u16),
        ttl: (u16, u16),
    ) -> (u16, u16) {
        let ip = Incremental::new(check.0)
            .replace_words(from.0, relay.0)
            .replace_words(relay.0, to.0)
            .replace(ttl.0, ttl.1)
            .finish();
        let udp = Incremental::new(check.1)
            .replace_words(from.0, relay.0)
            .replace_words(relay.0, to.0)
            .replace(from.1, relay.1)
            .replace(relay.1, to.1)
            .finish_udp();
        (ip, udp)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// A session's precomputed delta gives exactly the checksums the word-by-word update
        /// gives, for any checksum in the packet (the extremes included), in both families
        /// and both directions; and it is never zero, which marks "no delta".
        #[test]
        fn a_forward_delta_rewrites_exactly_as_word_by_word(
            v4 in any::<[[u16; 2]; 3]>(),
            v6 in any::<[[u16; 8]; 3]>(),
            ports in any::<[u16; 3]>(),
            check in prop_oneof![any::<(u16, u16)>(), Just((0, 1)), Just((0xffff, 0xffff)), Just((1, 0xfffe))],
            ttl in any::<(u16, u16)>(),
            same in any::<bool>(),
        ) {
            let [a, b, relay] = v4;
            let b = if same { a } else { b };
            for (from, to) in [(&a, &b), (&b, &a)] {
                let delta = ForwardDelta::between(from, ports[0], to, ports[1]);
                prop_assert!(delta.udp != 0 && delta.ipv4 != 0);
                let want = word_by_word(check, (from, ports[0]), (to, ports[1]), (&relay, ports[2]), ttl);
                prop_assert_eq!(delta.ipv4_checksum(check.0, ttl.0, ttl.1), want.0);
                if check.1 != 0 {
                    prop_assert_eq!(delta.udp_checksum(check.1), want.1);
                }
            }
            let [a, b, relay] = v6;
            let delta = ForwardDelta::between(&a, ports[0], &b, ports[1]);
            prop_assert!(delta.udp != 0);
            let want = word_by_word(check, (&a, ports[0]), (&b, ports[1]), (&relay, ports[2]), ttl);
            if check.1 != 0 {
                prop_assert_eq!(delta.udp_checksum(check.1), want.1);
            }
        }
    }

    #[test]
    fn udp_zero_result_becomes_all_ones() {
        // ~HC + ~m + m' folds to 0xffff exactly when the new checksum is zero.
        let update = Incremental::new(0xffff).replace(0x1234, 0x1234);
        assert_eq!(update.finish(), 0);
        assert_eq!(update.finish_udp(), 0xffff);
    }

    #[test]
    fn ttl_word_is_ttl_then_protocol() {
        assert_eq!(ttl_protocol_word(64, 17).to_ne_bytes(), [64, 17]);
    }
}
