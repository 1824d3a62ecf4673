//! What the XDP program needs to know about the relay, in human units, and its map encoding.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use relay_common::maps::{
    CONFIG_ENABLED, CONFIG_HAS_V4, CONFIG_HAS_V6, DEFAULT_NEXTHOP_CACHE_ENTRIES,
    DEFAULT_NEXTHOP_TTL_MS, DEFAULT_TTL, Leg, RelayConfig,
};

use super::clock::JiffiesClock;

/// The relay's own addresses and port as the fast path sees them, and its tunables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastPathSettings {
    /// Local IPv4 address packets arrive at (not the advertised one behind 1:1 NAT).
    pub v4: Option<Ipv4Addr>,
    /// Local IPv6 address packets arrive at.
    pub v6: Option<Ipv6Addr>,
    /// Relay UDP port.
    pub port: u16,
    /// TTL / hop limit of forwarded packets.
    pub ttl: u8,
    /// How long a cached route lookup is trusted; zero disables the cache.
    pub nexthop_ttl: Duration,
    /// Entries of the next-hop cache (rounded up to a power of two at load time).
    pub nexthop_cache_entries: u32,
}

impl FastPathSettings {
    /// Settings with the defaults for everything but the addresses and port.
    pub fn new(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>, port: u16) -> FastPathSettings {
        FastPathSettings {
            v4,
            v6,
            port,
            ttl: DEFAULT_TTL,
            nexthop_ttl: Duration::from_millis(DEFAULT_NEXTHOP_TTL_MS as u64),
            nexthop_cache_entries: DEFAULT_NEXTHOP_CACHE_ENTRIES,
        }
    }

    /// The next-hop cache size the map is created with: a power of two.
    pub fn cache_entries(&self) -> u32 {
        self.nexthop_cache_entries.max(1).next_power_of_two()
    }

    /// The config map value; lifetimes become jiffies through `clock`.
    pub fn to_map_value(&self, clock: &JiffiesClock) -> RelayConfig {
        let mut flags = CONFIG_ENABLED;
        let mut config = RelayConfig {
            port: self.port.to_be(),
            ttl: self.ttl,
            hop_limit: self.ttl,
            nexthop_ttl_jiffies: clock.to_ticks(self.nexthop_ttl).min(u32::MAX as u64) as u32,
            nexthop_cache_mask: self.cache_entries() - 1,
            jiffies_per_sec: clock.hz,
            ..Default::default()
        };
        if let Some(v4) = self.v4 {
            config.addr_v4 = Leg::bound_v4(v4.octets(), 0).v4_words();
            flags |= CONFIG_HAS_V4;
        }
        if let Some(v6) = self.v6 {
            config.addr_v6 = Leg::bound_v6(v6.octets(), 0).addr;
            flags |= CONFIG_HAS_V6;
        }
        config.flags = flags;
        config
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn encodes_addresses_flags_and_lifetimes() {
        let clock = JiffiesClock {
            hz: 250,
            jiffies: 1,
            at: Instant::now(),
        };
        let mut s = FastPathSettings::new(Some(Ipv4Addr::new(203, 0, 113, 1)), None, 6081);
        s.nexthop_cache_entries = 3000;
        let c = s.to_map_value(&clock);
        assert_eq!(c.flags, CONFIG_ENABLED | CONFIG_HAS_V4);
        assert_eq!(
            Leg {
                addr: [c.addr_v4[0], c.addr_v4[1], 0, 0, 0, 0, 0, 0],
                ..Default::default()
            }
            .octets()[..4],
            [203, 0, 113, 1]
        );
        assert_eq!(u16::from_be(c.port), 6081);
        assert_eq!(c.nexthop_ttl_jiffies, 250);
        assert_eq!(c.nexthop_cache_mask, 4095);
        assert_eq!(c.ttl, 64);
    }
}
