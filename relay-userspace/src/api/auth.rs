//! Bearer-token authentication. Tokens are kept only as SHA-256 digests and compared in constant
//! time against every configured token, so neither timing nor the order of tokens in the file
//! tells an attacker how close a guess was.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::TokenConfig;

/// The configured tokens.
#[derive(Clone, Debug)]
pub struct TokenStore {
    tokens: Vec<([u8; 32], String)>,
    admins: Vec<String>,
}

impl TokenStore {
    /// From the configuration (validated: each token has exactly one of `token`/`token_sha256`).
    pub fn new(tokens: &[TokenConfig]) -> TokenStore {
        TokenStore {
            tokens: tokens
                .iter()
                .map(|t| {
                    let digest = match (&t.token, &t.token_sha256) {
                        (Some(plain), _) => Sha256::digest(plain.as_bytes()).into(),
                        (None, Some(hex_digest)) => {
                            let mut d = [0u8; 32];
                            hex::decode_to_slice(hex_digest, &mut d).unwrap_or_default();
                            d
                        }
                        (None, None) => [0u8; 32],
                    };
                    (digest, t.name.clone())
                })
                .collect(),
            admins: tokens
                .iter()
                .filter(|t| t.admin)
                .map(|t| t.name.clone())
                .collect(),
        }
    }

    /// The name of the token in an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<&str, ApiError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header (use: Bearer <token>)")
        })?;
        let presented = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?
            .trim();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&str> = None;
        for (candidate, name) in &self.tokens {
            // Every token is compared, whichever matches.
            if bool::from(candidate.ct_eq(&digest)) {
                found = Some(name);
            }
        }
        found.ok_or_else(|| ApiError::unauthorized("unknown token"))
    }

    /// Whether the token named `name` may drain and undrain the relay (`admin: true`).
    pub fn is_admin(&self, name: &str) -> bool {
        self.admins.iter().any(|a| a == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Vec<TokenConfig> {
        vec![
            TokenConfig {
                name: "alice".into(),
                token: Some("alice-secret-token-1".into()),
                token_sha256: None,
                max_sessions: 1,
                admin: false,
            },
            TokenConfig {
                name: "hashed".into(),
                token: None,
                // sha256("test")
                token_sha256: Some(
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                ),
                max_sessions: 1,
                admin: false,
            },
        ]
    }

    #[test]
    fn plaintext_and_hashed_tokens() {
        let store = TokenStore::new(&config());
        assert_eq!(
            store.authenticate(Some("Bearer alice-secret-token-1")),
            Ok("alice")
        );
        assert_eq!(store.authenticate(Some("Bearer test")), Ok("hashed"));
        assert_eq!(store.authenticate(Some("bearer test ")), Ok("hashed"));
    }

    #[test]
    fn refusals_explain_themselves() {
        let store = TokenStore::new(&config());
        assert!(
            store
                .authenticate(None)
                .unwrap_err()
                .reason
                .contains("missing")
        );
        assert!(
            store
                .authenticate(Some("Basic abc"))
                .unwrap_err()
                .reason
                .contains("Bearer")
        );
        assert_eq!(
            store.authenticate(Some("Bearer nope")).unwrap_err().reason,
            "unknown token"
        );
        assert_eq!(
            store
                .authenticate(Some("Bearer alice-secret-token-"))
                .unwrap_err()
                .code,
            "unauthorized"
        );
    }
}
