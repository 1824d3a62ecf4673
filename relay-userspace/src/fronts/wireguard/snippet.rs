//! What a user pastes into stock WireGuard: the peers' public keys as `wg` prints them, and the
//! `[Peer]` section each side adds for the other, pointing its `Endpoint` at its own relay port.
//! Nothing else in either configuration changes.

use std::net::SocketAddr;

use base64::{Engine, engine::general_purpose::STANDARD};

use super::mac::PublicKey;

/// Why a public key is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64 of 32 bytes (what `wg pubkey` prints: 44 characters ending in `=`).
    #[error("not a WireGuard public key (base64 of 32 bytes, as `wg pubkey` prints it)")]
    Malformed,
    /// All zeros: no peer has it.
    #[error("the all-zero key is not a peer's key")]
    Zero,
    /// Both peers named the same key.
    #[error("the two peers have the same public key")]
    Same,
}

/// Parses a public key as `wg` prints it.
pub fn parse_key(text: &str) -> Result<PublicKey, KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Malformed)?;
    let key: PublicKey = bytes.try_into().map_err(|_| KeyError::Malformed)?;
    if key == [0; 32] {
        return Err(KeyError::Zero);
    }
    Ok(key)
}

/// Parses both peers' keys, which must differ.
pub fn parse_pair(a: &str, b: &str) -> Result<[PublicKey; 2], (usize, KeyError)> {
    let a = parse_key(a).map_err(|e| (0, e))?;
    let b = parse_key(b).map_err(|e| (1, e))?;
    if a == b {
        return Err((1, KeyError::Same));
    }
    Ok([a, b])
}

/// A key as `wg` prints it.
pub fn format_key(key: &PublicKey) -> String {
    STANDARD.encode(key)
}

/// The `[Peer]` section a peer adds for `other` (whose public key it is): `endpoint` is the
/// relay port this peer sends to; `keepalive` keeps the NAT mappings (and the relay's legs)
/// alive, and makes both peers shake hands as soon as the tunnel is up, which is how the relay
/// learns where each of them is.
pub fn peer_section(
    other: &PublicKey,
    endpoint: SocketAddr,
    keepalive: u32,
    label: Option<&str>,
) -> String {
    let mut out = String::new();
    if let Some(label) = label {
        // Labels come from the API request: one line, no control characters.
        let clean: String = label.chars().filter(|c| !c.is_control()).collect();
        out.push_str(&format!("# {clean} (through the relay)\n"));
    }
    out.push_str(&format!(
        "[Peer]\nPublicKey = {}\nEndpoint = {endpoint}\nPersistentKeepalive = {keepalive}\n",
        format_key(other)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key `wg genkey | wg pubkey` printed.
    const WG_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn keys_parse_as_wg_prints_them_and_nothing_else() {
        let key = parse_key(WG_KEY).unwrap();
        assert_eq!(format_key(&key), WG_KEY);
        assert_eq!(parse_key(&format!(" {WG_KEY}\n")), Ok(key));
        for bad in [
            "",
            "xTIBA5rb",
            "not base64!",
            &WG_KEY[..40],
            &format!("{WG_KEY}AA"),
        ] {
            assert_eq!(parse_key(bad), Err(KeyError::Malformed), "{bad:?}");
        }
        assert_eq!(parse_key(&STANDARD.encode([0u8; 32])), Err(KeyError::Zero));
        assert_eq!(parse_pair(WG_KEY, WG_KEY), Err((1, KeyError::Same)));
        assert_eq!(parse_pair("x", WG_KEY), Err((0, KeyError::Malformed)));
    }

    #[test]
    fn the_peer_section_points_at_the_relay_port() {
        let key = parse_key(WG_KEY).unwrap();
        let text = peer_section(
            &key,
            "192.0.2.10:51820".parse().unwrap(),
            25,
            Some("office\nnas"),
        );
        assert_eq!(
            text,
            format!(
                "# officenas (through the relay)\n[Peer]\nPublicKey = {WG_KEY}\nEndpoint = 192.0.2.10:51820\nPersistentKeepalive = 25\n"
            )
        );
        let v6 = peer_section(&key, "[2001:db8::10]:51821".parse().unwrap(), 25, None);
        assert!(v6.contains("Endpoint = [2001:db8::10]:51821\n"), "{v6}");
        assert!(v6.starts_with("[Peer]\n"));
    }
}
