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
