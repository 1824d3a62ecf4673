//! The two MACs of the bind handshake: message MACs under a leg's key (both directions), and
//! the relay's stateless challenge cookies under a rotating secret. Keyed BLAKE2s-128 with a
//! distinct personalisation for each, so one can never be confused with the other.

use blake2::{
    Blake2sMac,
    digest::{Mac, consts::U16},
};
use relay_common::geneve::control::{CONTROL_LEN, COOKIE_LEN, KEY_LEN, MAC_COVERED_LEN, MAC_LEN};

type Blake2sMac128 = Blake2sMac<U16>;

const MESSAGE_PERSONA: &[u8; 8] = b"relaymsg";
const COOKIE_PERSONA: &[u8; 8] = b"relaycki";

fn mac_with(key: &[u8; KEY_LEN], persona: &[u8; 8]) -> Blake2sMac128 {
    Blake2sMac128::new_with_salt_and_personal(key, &[], persona)
        .expect("a 32-byte key and an 8-byte personalisation are valid for BLAKE2s")
}

/// The MAC of an encoded control message under a leg key.
pub fn message_mac(key: &[u8; KEY_LEN], message: &[u8; CONTROL_LEN]) -> [u8; MAC_LEN] {
    let mut mac = mac_with(key, MESSAGE_PERSONA);
    mac.update(&message[..MAC_COVERED_LEN]);
    mac.finalize().into_bytes().into()
}

/// Whether `message` carries a valid MAC under `key` (constant-time comparison).
pub fn verify_message(key: &[u8; KEY_LEN], message: &[u8; CONTROL_LEN]) -> bool {
    let mut mac = mac_with(key, MESSAGE_PERSONA);
    mac.update(&message[..MAC_COVERED_LEN]);
    mac.verify_slice(&message[MAC_COVERED_LEN..]).is_ok()
}

/// What a cookie vouches for: the bind attempt and where it was observed to come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieInput {
    /// Session.
    pub vni: u32,
    /// Leg index.
    pub leg: u8,
    /// Bind generation.
    pub generation: u64,
    /// Observed source address (IPv4 as its IPv4-mapped IPv6 form, so each address has one
    /// encoding).
    pub addr: [u8; 16],
    /// Observed source port.
    pub port: u16,
}

/// The cookie MAC under `secret`, fed with everything the cookie vouches for.
fn cookie_mac(secret: &[u8; KEY_LEN], input: &CookieInput) -> Blake2sMac128 {
    let mut mac = mac_with(secret, COOKIE_PERSONA);
    mac.update(&input.vni.to_be_bytes());
    mac.update(&[input.leg]);
    mac.update(&input.generation.to_be_bytes());
    mac.update(&input.addr);
    mac.update(&input.port.to_be_bytes());
    mac
}

/// A cookie under `secret`.
pub fn cookie(secret: &[u8; KEY_LEN], input: &CookieInput) -> [u8; COOKIE_LEN] {
    cookie_mac(secret, input).finalize().into_bytes().into()
}

/// Whether `candidate` is the cookie for `input` under `secret` (constant-time comparison).
pub fn verify_cookie(secret: &[u8; KEY_LEN], input: &CookieInput, candidate: &[u8]) -> bool {
    cookie_mac(secret, input).verify_slice(candidate).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_mac_covers_everything_but_itself() {
        let key = [7u8; KEY_LEN];
        let mut msg = [0u8; CONTROL_LEN];
        msg[10] = 1;
        let tag = message_mac(&key, &msg);
        msg[MAC_COVERED_LEN..].copy_from_slice(&tag);
        assert!(verify_message(&key, &msg));
        for i in 0..CONTROL_LEN {
            let mut bad = msg;
            bad[i] ^= 1;
            assert!(
                !verify_message(&key, &bad),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(!verify_message(&[8u8; KEY_LEN], &msg));
    }

    #[test]
    fn cookies_bind_every_input() {
        let secret = [1u8; KEY_LEN];
        let input = CookieInput {
            vni: 5,
            leg: 1,
            generation: 9,
            addr: [3; 16],
            port: 4000,
        };
        let c = cookie(&secret, &input);
        assert!(verify_cookie(&secret, &input, &c));
        for changed in [
            CookieInput { vni: 6, ..input },
            CookieInput { leg: 0, ..input },
            CookieInput {
                generation: 10,
                ..input
            },
            CookieInput {
                addr: [4; 16],
                ..input
            },
            CookieInput {
                port: 4001,
                ..input
            },
        ] {
            assert!(!verify_cookie(&secret, &changed, &c));
        }
        assert!(!verify_cookie(&[2u8; KEY_LEN], &input, &c));
        // Message MACs and cookies never coincide for the same key and bytes.
        assert_ne!(c, message_mac(&secret, &[0; CONTROL_LEN]));
    }
}
