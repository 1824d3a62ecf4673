//! WireGuard's `mac1`, the one MAC the relay can check: it is keyed by a hash of the
//! *receiver's* public key (whitepaper §5.4.4), so with the two public keys an allocation names
//! the relay knows which peer a handshake message is addressed to — without any private key.
//! `mac1 = MAC(HASH("mac1----" ‖ receiver's public key), message up to mac1)`, where `HASH` is
//! BLAKE2s-256 and `MAC` is keyed BLAKE2s with a 16-byte digest.

use blake2::{
    Blake2s256, Blake2sMac, Digest,
    digest::{Mac, consts::U16},
};
use relay_common::wireguard::mac1_parts;

/// A WireGuard public key (Curve25519, 32 bytes).
pub type PublicKey = [u8; 32];

const LABEL_MAC1: &[u8; 8] = b"mac1----";

/// The key of `mac1` for messages addressed to the holder of `receiver`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac1Key([u8; 32]);

impl Mac1Key {
    /// Derives the key from the receiver's public key (done once per allocation).
    pub fn for_receiver(receiver: &PublicKey) -> Mac1Key {
        let mut hash = Blake2s256::new();
        hash.update(LABEL_MAC1);
        hash.update(receiver);
        Mac1Key(hash.finalize().into())
    }

    /// `mac1` of the bytes it covers.
    pub fn mac(&self, covered: &[u8]) -> [u8; 16] {
        let mut mac =
            Blake2sMac::<U16>::new_from_slice(&self.0).expect("a 32-byte key is valid for BLAKE2s");
        mac.update(covered);
        mac.finalize().into_bytes().into()
    }

    /// Whether `payload` is a handshake initiation or response whose `mac1` verifies under
    /// this key (constant-time comparison); false for any other message.
    pub fn verifies(&self, payload: &[u8]) -> bool {
        let Some((covered, mac1)) = mac1_parts(payload) else {
            return false;
        };
        let mut mac =
            Blake2sMac::<U16>::new_from_slice(&self.0).expect("a 32-byte key is valid for BLAKE2s");
        mac.update(covered);
        mac.verify_slice(mac1).is_ok()
    }

    /// Writes a valid `mac1` into a handshake message (the lab's forged and simulated peers;
    /// anyone who knows the receiver's public key can, which is why `mac1` alone proves nothing
    /// about the sender).
    pub fn seal(&self, payload: &mut [u8]) {
        let Some((covered, _)) = mac1_parts(payload) else {
            return;
        };
        let at = covered.len();
        let mac = self.mac(covered);
        payload[at..at + 16].copy_from_slice(&mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay_common::wireguard::{INITIATION_LEN, RESPONSE_LEN};

    /// Expected values from an independent implementation: Python's `hashlib.blake2s`
    /// (`blake2s(b"mac1----" + key).digest()`, then `blake2s(data, key=k, digest_size=16)`).
    #[test]
    fn mac1_matches_an_independent_blake2s() {
        let receiver: PublicKey = core::array::from_fn(|i| i as u8);
        let key = Mac1Key::for_receiver(&receiver);
        let covered: Vec<u8> = (0..116u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(hex::encode(key.0), KEY_HEX);
        assert_eq!(hex::encode(key.mac(&covered)), MAC_HEX);
    }

    const KEY_HEX: &str = "4fb2527ac956001553dc1ad9b55171b7d9daa3de1cdbcd71451830170c7e6cac";
    const MAC_HEX: &str = "03a55c329de13c8e850faad2618d1d34";

    #[test]
    fn only_the_receivers_key_verifies_and_any_change_breaks_it() {
        let a = Mac1Key::for_receiver(&[1; 32]);
        let b = Mac1Key::for_receiver(&[2; 32]);
        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        init[4] = 9;
        a.seal(&mut init);
        assert!(a.verifies(&init));
        assert!(!b.verifies(&init));
        init[5] ^= 1;
        assert!(!a.verifies(&init));
        let mut response = [0u8; RESPONSE_LEN];
        response[0] = 2;
        b.seal(&mut response);
        assert!(b.verifies(&response));
        assert!(!b.verifies(&response[..RESPONSE_LEN - 1]));
        let mut data = [0u8; 32];
        data[0] = 4;
        assert!(!a.verifies(&data));
    }
}
