//! `relay turn …`: TURN helpers for operators and application servers.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::Serialize;

use crate::{config::Config, fronts::turn::auth};

/// `relay turn` subcommands.
#[derive(Subcommand, Debug)]
pub enum TurnCommand {
    /// Mint a TURN REST credential (username `<expiry>:<user>`, password
    /// base64(HMAC-SHA1(secret, username))) for a WebRTC application or a TURN client.
    Credentials {
        /// The user it is for (quotas count per user).
        #[arg(long)]
        user: String,
        /// How long it stays valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The shared secret (better in RELAY_TURN_SECRET than on the command line).
        #[arg(long, env = "RELAY_TURN_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Take the secret from this configuration file instead (its first `turn.secrets`).
        #[arg(long, short, conflicts_with = "secret")]
        config: Option<PathBuf>,
        /// Print JSON (`username`, `credential`, `ttl`, `expires`), as a WebRTC iceServers
        /// entry takes them.
        #[arg(long)]
        json: bool,
    },
}

/// A minted credential.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Credential {
    /// TURN username.
    pub username: String,
    /// TURN password (`credential` in a WebRTC iceServers entry).
    pub credential: String,
    /// Seconds it stays valid.
    pub ttl: u64,
    /// When it expires (RFC 3339).
    pub expires: String,
}

/// Mints a credential for `user` valid for `ttl` from `now_unix_s`.
pub fn mint(secret: &str, user: &str, ttl: Duration, now_unix_s: u64) -> Credential {
    let expiry = now_unix_s + ttl.as_secs();
    let username = auth::rest_username(user, expiry);
    Credential {
        credential: auth::rest_password(secret.as_bytes(), &username),
        username,
        ttl: ttl.as_secs(),
        expires: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(expiry))
            .to_string(),
    }
}

/// Runs a `relay turn` subcommand.
pub fn run(command: TurnCommand) -> Result<()> {
    let TurnCommand::Credentials {
        user,
        ttl,
        secret,
        config,
        json,
    } = command;
    if user.is_empty() || user.contains(':') {
        bail!(
            "--user must be non-empty and contain no ':' (it follows the expiry in the username)"
        );
    }
    let secret = match (secret, config) {
        (Some(s), _) => s,
        (None, Some(path)) => {
            let config = Config::load(&path)?;
            config
                .turn
                .and_then(|t| t.secrets.into_iter().next())
                .with_context(|| format!("{} has no turn.secrets", path.display()))?
        }
        (None, None) => {
            bail!("give --secret (or RELAY_TURN_SECRET), or --config with turn.secrets")
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let c = mint(&secret, &user, ttl, now);
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("username: {}", c.username);
        println!("password: {}", c.credential);
        println!("expires:  {} ({} s)", c.expires, c.ttl);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_credential_is_one_the_server_accepts() {
        let c = mint(
            "0123456789abcdef-secret",
            "alice",
            Duration::from_secs(3600),
            1_800_000_000,
        );
        assert_eq!(c.username, "1800003600:alice");
        assert_eq!(c.expires, "2027-01-15T09:00:00Z");
        let creds = auth::Credentials::new(
            "r",
            &["0123456789abcdef-secret".into()],
            &[],
            Duration::from_secs(86_400),
        );
        assert!(
            creds
                .keys(
                    &c.username,
                    stun_types::message::IntegrityAlgorithm::Sha1,
                    1_800_000_000
                )
                .is_ok()
        );
        assert_eq!(
            c.credential,
            auth::rest_password(b"0123456789abcdef-secret", &c.username)
        );
    }
}
