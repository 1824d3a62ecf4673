//! Which addresses may ever be a session leg.
//!
//! A relay on the internet must not become a way into the networks it sits in, or a way to
//! reach the host itself. Every address is first normalised — IPv4-mapped (`::ffff:a.b.c.d`),
//! IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) forms become the
//! IPv4 address they carry — because coturn's CVE-2020-26262 and CVE-2026-27624 came from
//! checking the IPv6 spelling of a loopback address. Then:
//!
//! * always refused: unspecified, loopback, link-local (including the cloud metadata address
//!   169.254.169.254 and fe80::/10), multicast, broadcast, "this network" (0.0.0.0/8), and the
//!   relay's own addresses;
//! * refused unless `allow` covers them (with `refuse_private`, the default): private and
//!   shared ranges (10/8, 172.16/12, 192.168/16, 100.64/10) and unique-local fc00::/7;
//! * `deny` refuses anything it covers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The rules, built from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Refuse private and unique-local ranges (unless in `allow`).
    pub refuse_private: bool,
    /// Ranges admitted although private.
    pub allow: Vec<IpNet>,
    /// Ranges always refused.
    pub deny: Vec<IpNet>,
    /// The relay's own addresses (local and advertised).
    pub own: Vec<IpAddr>,
}

/// The IPv4 address carried by an IPv4-mapped, IPv4-compatible or NAT64 IPv6 address, else the
/// address itself.
pub fn normalise(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    // IPv4-compatible (deprecated, RFC 4291 §2.5.5.1), but not :: and ::1 themselves.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return IpAddr::V4(tail);
    }
    // NAT64 well-known prefix (RFC 6052) and local-use prefix (RFC 8215).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return IpAddr::V4(tail);
    }
    ip
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 shared (CGNAT)
}

fn is_always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

impl AddressPolicy {
    /// The default policy for a relay with addresses `own`.
    pub fn strict(own: Vec<IpAddr>) -> AddressPolicy {
        AddressPolicy {
            refuse_private: true,
            own,
            ..Default::default()
        }
    }

    /// Whether `ip` may be (or bind) a session leg.
    pub fn allows_leg(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Why `ip` may not be a leg, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let ip = normalise(ip);
        if is_always_refused(ip) {
            return Some("special-purpose address (loopback, link-local, multicast, …)");
        }
        if self.own.iter().any(|o| normalise(*o) == ip) {
            return Some("the relay's own address");
        }
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Some("denied by sessions.leg_addresses.deny");
        }
        if self.refuse_private && is_private(ip) && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Some("private address (see sessions.leg_addresses)");
        }
        None
    }
}

/// IPv6 form of an IPv4 address in the NAT64 well-known prefix (tests, docs).
pub fn nat64(v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(
        0x64,
        0xff9b,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_spelling_of_a_special_address_is_refused() {
        let p = AddressPolicy::strict(vec![ip("203.0.113.1")]);
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b:1::7f00:1",
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "febf::1",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "fc00::1",
            "203.0.113.1",
            "::ffff:203.0.113.1",
        ] {
            assert!(!p.allows_leg(ip(refused)), "{refused} allowed");
        }
        for allowed in [
            "198.51.100.7",
            "::ffff:198.51.100.7",
            "2001:db8::1",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
        ] {
            assert!(p.allows_leg(ip(allowed)), "{allowed} refused");
        }
    }

    #[test]
    fn allow_and_deny_lists() {
        let mut p = AddressPolicy::strict(vec![]);
        p.allow = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ];
        p.deny = vec![
            "198.51.100.0/24".parse().unwrap(),
            "::ffff:0:0/96".parse().unwrap(),
        ];
        assert!(p.allows_leg(ip("10.9.9.9")));
        assert!(
            p.allows_leg(ip("::ffff:10.9.9.9")),
            "normalised before the allow list"
        );
        assert!(
            !p.allows_leg(ip("127.0.0.1")),
            "allow never admits loopback"
        );
        assert!(!p.allows_leg(ip("198.51.100.7")));
        assert!(
            !p.allows_leg(ip("::ffff:198.51.100.7")),
            "normalised before the deny list"
        );
        assert!(p.allows_leg(ip("203.0.113.9")));
        p.refuse_private = false;
        assert!(p.allows_leg(ip("192.168.0.1")));
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(normalise(ip("::1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(
            normalise(IpAddr::V6(nat64(Ipv4Addr::new(1, 2, 3, 4)))),
            ip("1.2.3.4")
        );
        assert_eq!(normalise(ip("::1")), ip("::1"));
        assert_eq!(normalise(ip("::")), ip("::"));
        assert_eq!(normalise(ip("2001:db8::1")), ip("2001:db8::1"));
    }
}
