//! Tickets: everything one client needs to join one leg of a session, as one string it can be
//! handed (by the API, or by the peer that allocated the session).
//!
//! `relay1.` followed by unpadded base64url of: version (1), VNI (3, big-endian), leg (1),
//! key (32), endpoint count (1), then per endpoint family (4 or 6), address (4 or 16), port (2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use relay_common::geneve::control::KEY_LEN;

const PREFIX: &str = "relay1.";
const VERSION: u8 = 1;

/// Credentials for one leg.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Session id.
    pub vni: u32,
    /// Leg index (0 = a, 1 = b).
    pub leg: u8,
    /// The leg's bind key.
    pub key: [u8; KEY_LEN],
    /// Relay endpoints to try (one per family).
    pub relay: Vec<SocketAddr>,
}

/// Why a ticket string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// Not `relay1.` + base64url.
    #[error("not a relay ticket (expected `relay1.` followed by base64url)")]
    Format,
    /// Decodes, but the contents are inconsistent.
    #[error("corrupt relay ticket: {0}")]
    Corrupt(&'static str),
}

impl Ticket {
    /// The ticket as a string.
    pub fn encode(&self) -> String {
        let mut b = vec![VERSION];
        b.extend_from_slice(&self.vni.to_be_bytes()[1..]);
        b.push(self.leg);
        b.extend_from_slice(&self.key);
        b.push(self.relay.len() as u8);
        for ep in &self.relay {
            match ep.ip() {
                IpAddr::V4(ip) => {
                    b.push(4);
                    b.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    b.push(6);
                    b.extend_from_slice(&ip.octets());
                }
            }
            b.extend_from_slice(&ep.port().to_be_bytes());
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(b))
    }

    /// Parses a ticket string.
    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let body = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TicketError::Format)?;
        let b = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TicketError::Format)?;
        let mut r = Reader(&b);
        if r.take(1)?[0] != VERSION {
            return Err(TicketError::Corrupt("unknown version"));
        }
        let v = r.take(3)?;
        let vni = u32::from_be_bytes([0, v[0], v[1], v[2]]);
        if vni == 0 {
            return Err(TicketError::Corrupt("VNI 0"));
        }
        let leg = r.take(1)?[0];
        if leg > 1 {
            return Err(TicketError::Corrupt("leg must be 0 or 1"));
        }
        let key: [u8; KEY_LEN] = r.take(KEY_LEN)?.try_into().expect("length checked");
        let count = r.take(1)?[0];
        if count == 0 {
            return Err(TicketError::Corrupt("no relay endpoint"));
        }
        let mut relay = Vec::new();
        for _ in 0..count {
            let ip: IpAddr = match r.take(1)?[0] {
                4 => Ipv4Addr::from(<[u8; 4]>::try_from(r.take(4)?).expect("length")).into(),
                6 => Ipv6Addr::from(<[u8; 16]>::try_from(r.take(16)?).expect("length")).into(),
                _ => return Err(TicketError::Corrupt("bad address family")),
            };
            let p = r.take(2)?;
            relay.push(SocketAddr::new(ip, u16::from_be_bytes([p[0], p[1]])));
        }
        if !r.0.is_empty() {
            return Err(TicketError::Corrupt("trailing bytes"));
        }
        Ok(Ticket {
            vni,
            leg,
            key,
            relay,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        Ticket {
            vni: 0xab_cdef,
            leg: 1,
            key: [0x5a; KEY_LEN],
            relay: vec![
                "198.51.100.7:6081".parse().unwrap(),
                "[2001:db8::7]:6081".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        let s = t.encode();
        assert!(s.starts_with("relay1."));
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
        assert_eq!(Ticket::decode(&s), Ok(t));
        assert_eq!(Ticket::decode(&format!("  {s}\n")).unwrap().vni, 0xab_cdef);
    }

    #[test]
    fn rejects_garbage_and_corruption() {
        assert_eq!(Ticket::decode("hello"), Err(TicketError::Format));
        assert_eq!(Ticket::decode("relay1.!!!"), Err(TicketError::Format));
        let s = sample().encode();
        let body = URL_SAFE_NO_PAD.decode(&s[7..]).unwrap();
        for cut in 0..body.len() {
            let t = format!("relay1.{}", URL_SAFE_NO_PAD.encode(&body[..cut]));
            assert!(
                Ticket::decode(&t).is_err(),
                "truncated to {cut} bytes accepted"
            );
        }
        let mut long = body.clone();
        long.push(0);
        let t = format!("relay1.{}", URL_SAFE_NO_PAD.encode(&long));
        assert_eq!(
            Ticket::decode(&t),
            Err(TicketError::Corrupt("trailing bytes"))
        );
    }
}
