//! Long-term credentials (RFC 8489 §9.2) for the TURN front, without I/O or clock: who may use
//! the relay, the keys a message's integrity is checked with, and stateless nonces.
//!
//! * **TURN REST credentials** (the convention every WebRTC stack's servers use): the username
//!   is `<expiry unix seconds>:<user>` and the password `base64(HMAC-SHA1(secret, username))`.
//!   An application server mints them with the shared secret; the relay recomputes the password
//!   from the username, so it holds no per-user state. Several secrets are accepted at once
//!   (rotation). Expired usernames are refused, and so are expiries further ahead than
//!   `turn.max_credential_ttl` (a leaked credential must not live for years).
//! * **Static users** from the configuration, for testing and small setups.
//! * **Nonces** are a MAC over their own expiry and the client's IP address under a key that is
//!   pinned with the allocations: they need no table, a flood of unauthenticated requests costs
//!   no memory, and a restarted daemon accepts the nonces its predecessor handed out. A nonce
//!   past its expiry is *stale* (438): the client retries with the fresh one it is sent.
//!   Nonces carry RFC 8489's security-feature cookie announcing PASSWORD-ALGORITHMS support, so
//!   RFC 8489 clients may use SHA-256 keys; RFC 5389 clients ignore it.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use stun_types::message::{IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials};
use subtle::ConstantTimeEq;

/// RFC 8489's nonce cookie: the 4 characters after it encode the server's security features.
pub const NONCE_COOKIE: &str = "obMatJos2";
/// Security features (24 bits, base64): bit 0 set = password algorithms supported. Username
/// anonymity (USERHASH) is not offered.
const SECURITY_FEATURES: &str = "gAAA";
/// How long a nonce stays fresh.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(3600);
/// Bytes of MAC in a nonce: forging one takes 2^96 guesses.
const NONCE_MAC_LEN: usize = 12;
/// Longest username accepted (it is stored with the allocation).
pub const MAX_USERNAME_LEN: usize = relay_common::turn::META_USERNAME_LEN;

/// A configured static user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticUser {
    /// Username.
    pub name: String,
    /// Password.
    pub password: String,
}

/// Who may authenticate.
#[derive(Clone, Debug)]
pub struct Credentials {
    realm: String,
    secrets: Vec<Vec<u8>>,
    users: HashMap<String, String>,
    max_ttl: Duration,
}

/// Why no key exists for a username.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a static user and not a REST username (or no secret is configured).
    #[error("unknown user")]
    UnknownUser,
    /// A REST username whose expiry has passed.
    #[error("expired credential")]
    Expired,
    /// A REST username expiring further ahead than `turn.max_credential_ttl`.
    #[error("credential lifetime over turn.max_credential_ttl")]
    TooLong,
    /// Longer than [`MAX_USERNAME_LEN`].
    #[error("username too long")]
    TooLongName,
}

impl Refusal {
    /// Stable name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown_user",
            Refusal::Expired => "expired_credential",
            Refusal::TooLong => "credential_too_long",
            Refusal::TooLongName => "username_too_long",
        }
    }
}

/// The part of a username quotas count against: the user of a REST username, else the name.
pub fn quota_user(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, user)) if expiry.bytes().all(|b| b.is_ascii_digit()) => user,
        _ => username,
    }
}

/// The TURN REST password of `username` under `secret`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A TURN REST username for `user` valid until `expiry_unix_s`.
pub fn rest_username(user: &str, expiry_unix_s: u64) -> String {
    format!("{expiry_unix_s}:{user}")
}

impl Credentials {
    /// Credentials for `realm` from the shared secrets and static users.
    pub fn new(
        realm: &str,
        secrets: &[String],
        users: &[StaticUser],
        max_ttl: Duration,
    ) -> Credentials {
        Credentials {
            realm: realm.to_string(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            users: users
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            max_ttl,
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The keys `username` may have signed with under `algorithm` (one per configured secret
    /// for a REST username), or why it has none.
    pub fn keys(
        &self,
        username: &str,
        algorithm: IntegrityAlgorithm,
        now_unix_s: u64,
    ) -> Result<Vec<IntegrityKey>, Refusal> {
        if username.len() > MAX_USERNAME_LEN {
            return Err(Refusal::TooLongName);
        }
        let key = |password: &str| {
            LongTermKeyCredentials::new(
                username.to_string(),
                password.to_string(),
                self.realm.clone(),
            )
            .make_key(algorithm)
        };
        if let Some(password) = self.users.get(username) {
            return Ok(vec![key(password)]);
        }
        let expiry: u64 = match username.split_once(':') {
            Some((expiry, _)) => expiry.parse().map_err(|_| Refusal::UnknownUser)?,
            None => username.parse().map_err(|_| Refusal::UnknownUser)?,
        };
        if self.secrets.is_empty() {
            return Err(Refusal::UnknownUser);
        }
        if expiry < now_unix_s {
            return Err(Refusal::Expired);
        }
        if expiry - now_unix_s > self.max_ttl.as_secs() {
            return Err(Refusal::TooLong);
        }
        Ok(self
            .secrets
            .iter()
            .map(|secret| key(&rest_password(secret, username)))
            .collect())
    }
}

/// Makes and checks nonces.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
}

/// What a presented nonce is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this client, not expired.
    Fresh,
    /// Ours, for this client, expired: answer 438 with a new one.
    Stale,
    /// Not ours (or another client's): treated as no nonce at all.
    Invalid,
}

impl Nonces {
    /// Nonces under `key` (keep it secret; keep it across restarts).
    pub fn new(key: [u8; 32]) -> Nonces {
        Nonces { key }
    }

    fn mac(&self, expiry: u32, client: IpAddr) -> [u8; NONCE_MAC_LEN] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"relay turn nonce");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }

    /// A fresh nonce for `client`; with `features`, prefixed by RFC 8489's cookie announcing
    /// PASSWORD-ALGORITHMS (which the challenge must then carry). Without, it is 13 bytes
    /// shorter, for a challenge that must fit a small request.
    pub fn issue(&self, client: IpAddr, now_unix_s: u64, features: bool) -> String {
        let expiry = (now_unix_s + NONCE_LIFETIME.as_secs()).min(u32::MAX as u64) as u32;
        let mut raw = [0u8; 4 + NONCE_MAC_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(expiry, client));
        let body = URL_SAFE_NO_PAD.encode(raw);
        if features {
            format!("{NONCE_COOKIE}{SECURITY_FEATURES}{body}")
        } else {
            body
        }
    }

    /// Checks a nonce presented by `client`.
    pub fn check(&self, nonce: &str, client: IpAddr, now_unix_s: u64) -> NonceCheck {
        let body = nonce
            .strip_prefix(NONCE_COOKIE)
            .and_then(|n| n.strip_prefix(SECURITY_FEATURES))
            .unwrap_or(nonce);
        let Ok(raw) = URL_SAFE_NO_PAD.decode(body) else {
            return NonceCheck::Invalid;
        };
        if raw.len() != 4 + NONCE_MAC_LEN {
            return NonceCheck::Invalid;
        }
        let expiry = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if !bool::from(self.mac(expiry, client).ct_eq(&raw[4..])) {
            return NonceCheck::Invalid;
        }
        if (expiry as u64) < now_unix_s {
            NonceCheck::Stale
        } else {
            NonceCheck::Fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use stun_types::{
        attribute::{Nonce, Realm, Username},
        message::{
            Message, MessageIntegrityCredentials, MessageWrite, MessageWriteExt, MessageWriteVec,
        },
    };

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn creds() -> Credentials {
        Credentials::new(
            "relay.example",
            &["old-secret".into(), "new-secret".into()],
            &[StaticUser {
                name: "alice".into(),
                password: "wonderland".into(),
            }],
            Duration::from_secs(86_400),
        )
    }

    /// Signs a request as a client holding `password` would.
    fn signed(username: &str, password: &str, algorithm: IntegrityAlgorithm) -> Vec<u8> {
        let mut m = Message::builder_request(stun_types::message::BINDING, MessageWriteVec::new());
        m.add_attribute(&Username::new(username).unwrap()).unwrap();
        m.add_attribute(&Realm::new("relay.example").unwrap())
            .unwrap();
        m.add_attribute(&Nonce::new("n").unwrap()).unwrap();
        let credentials: MessageIntegrityCredentials =
            LongTermKeyCredentials::new(username.into(), password.into(), "relay.example".into())
                .into();
        m.add_message_integrity(&credentials, algorithm).unwrap();
        m.finish()
    }

    fn verifies(creds: &Credentials, bytes: &[u8], username: &str, algo: IntegrityAlgorithm) {
        let msg = Message::from_bytes(bytes).unwrap();
        let keys = creds.keys(username, algo, NOW).unwrap();
        assert!(
            keys.iter()
                .any(|k| msg.validate_integrity_with_key(k).is_ok()),
            "{username} did not verify"
        );
    }

    #[test]
    fn rest_credentials_verify_under_any_configured_secret() {
        let c = creds();
        let username = rest_username("bob", NOW + 3600);
        for secret in ["old-secret", "new-secret"] {
            let password = rest_password(secret.as_bytes(), &username);
            for algo in [IntegrityAlgorithm::Sha1, IntegrityAlgorithm::Sha256] {
                verifies(&c, &signed(&username, &password, algo), &username, algo);
            }
        }
        // A password from another secret verifies under none.
        let forged = rest_password(b"guess", &username);
        let msg = signed(&username, &forged, IntegrityAlgorithm::Sha1);
        let msg = Message::from_bytes(&msg).unwrap();
        let keys = c.keys(&username, IntegrityAlgorithm::Sha1, NOW).unwrap();
        assert!(
            keys.iter()
                .all(|k| msg.validate_integrity_with_key(k).is_err())
        );
        assert_eq!(quota_user(&username), "bob");
    }

    #[test]
    fn the_rest_password_matches_coturns_convention() {
        // echo -n "1800003600:bob" | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1800003600:bob"),
            STANDARD.encode({
                let mut m = Hmac::<Sha1>::new_from_slice(b"secret").unwrap();
                m.update(b"1800003600:bob");
                m.finalize().into_bytes()
            })
        );
        assert_eq!(rest_password(b"secret", "1800003600:bob").len(), 28);
    }

    #[test]
    fn expired_far_future_unknown_and_long_usernames_are_refused() {
        let c = creds();
        let algo = IntegrityAlgorithm::Sha1;
        assert_eq!(
            c.keys(&rest_username("bob", NOW - 1), algo, NOW)
                .unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            c.keys(&rest_username("bob", NOW + 86_401), algo, NOW)
                .unwrap_err(),
            Refusal::TooLong
        );
        assert_eq!(
            c.keys("mallory", algo, NOW).unwrap_err(),
            Refusal::UnknownUser
        );
        assert_eq!(
            c.keys(&"9".repeat(200), algo, NOW).unwrap_err(),
            Refusal::TooLongName
        );
        let no_secrets = Credentials::new("r", &[], &[], Duration::from_secs(60));
        assert_eq!(
            no_secrets
                .keys(&rest_username("bob", NOW + 5), algo, NOW)
                .unwrap_err(),
            Refusal::UnknownUser
        );
    }

    #[test]
    fn static_users_verify_with_their_password_only() {
        let c = creds();
        verifies(
            &c,
            &signed("alice", "wonderland", IntegrityAlgorithm::Sha1),
            "alice",
            IntegrityAlgorithm::Sha1,
        );
        let msg = signed("alice", "looking-glass", IntegrityAlgorithm::Sha1);
        let msg = Message::from_bytes(&msg).unwrap();
        let key = &c.keys("alice", IntegrityAlgorithm::Sha1, NOW).unwrap()[0];
        assert!(msg.validate_integrity_with_key(key).is_err());
        assert_eq!(quota_user("alice"), "alice");
    }

    #[test]
    fn nonces_are_bound_to_client_and_time_and_survive_a_new_instance() {
        let n = Nonces::new([7; 32]);
        let client: IpAddr = "198.51.100.9".parse().unwrap();
        let nonce = n.issue(client, NOW, true);
        assert!(nonce.starts_with("obMatJos2gAAA"));
        assert!(nonce.len() < 40, "{nonce}");
        let short = n.issue(client, NOW, false);
        assert_eq!(short.len(), nonce.len() - 13);
        assert_eq!(n.check(&short, client, NOW), NonceCheck::Fresh);
        // Another daemon with the same (pinned) key accepts it.
        let restarted = Nonces::new([7; 32]);
        assert_eq!(restarted.check(&nonce, client, NOW + 10), NonceCheck::Fresh);
        assert_eq!(
            restarted.check(&nonce, client, NOW + NONCE_LIFETIME.as_secs() + 1),
            NonceCheck::Stale
        );
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(n.check(&nonce, other, NOW), NonceCheck::Invalid);
        assert_eq!(
            Nonces::new([8; 32]).check(&nonce, client, NOW),
            NonceCheck::Invalid
        );
        let mut tampered = nonce.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            n.check(std::str::from_utf8(&tampered).unwrap(), client, NOW),
            NonceCheck::Invalid
        );
        assert_eq!(n.check("garbage", client, NOW), NonceCheck::Invalid);
    }
}
