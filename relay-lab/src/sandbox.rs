//! A relay host in a private network namespace for running the XDP program with
//! BPF_PROG_TEST_RUN: real routes and neighbours (so `bpf_fib_lookup` answers as on a real
//! host), nothing ever sent. The fast-path tests and the micro-benchmark use it.
//!
//! * forwarding is enabled on both interfaces, as the daemon does;
//! * `eth0` ([`RELAY_MAC`]) holds the relay's addresses; the default routes go through a
//!   gateway with a permanent neighbour entry ([`GATEWAY_MAC`]);
//! * `192.0.2.128/26` routes via a gateway without a neighbour entry, `192.0.2.192/26` is
//!   unreachable;
//! * `eth1` ([`SECOND_IF_MAC`]) has `192.0.2.0/26` with one permanent neighbour
//!   (`192.0.2.10`, [`DIRECT_NEIGHBOUR_MAC`]).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::programs::XdpMode;
use relay_common::maps::{Leg, RelayConfig, Session};

use crate::{Netns, netns::EnteredNetns};
use relay_userspace::dataplane::{
    Dataplane, LoadOptions,
    clock::JiffiesClock,
    loader::remove_pins,
    object::PROGRAM_PASS,
    settings::FastPathSettings,
    simulate::{RunOutcome, run_frame_timed},
};

/// The relay's IPv4 address on `eth0`.
pub const RELAY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The relay's IPv6 address on `eth0`.
pub const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The relay port.
pub const RELAY_PORT: u16 = 6081;
/// `eth0`'s MAC.
pub const RELAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The default gateway's MAC.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// `eth1`'s MAC.
pub const SECOND_IF_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
/// MAC of the neighbour `192.0.2.10` on `eth1`.
pub const DIRECT_NEIGHBOUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];

const SETUP: &[&str] = &[
    "link add eth0 type veth peer name peer0",
    "link add eth1 type veth peer name peer1",
    "link set eth0 address 02:00:00:00:00:01",
    "link set eth1 address 02:00:00:00:01:01",
    "addr add 203.0.113.1/24 dev eth0",
    "addr add 2001:db8:1::1/64 dev eth0 nodad",
    "addr add 192.0.2.1/26 dev eth1",
    "link set eth0 up",
    "link set peer0 up",
    "link set eth1 up",
    "link set peer1 up",
    "neigh add 203.0.113.254 lladdr 02:00:00:00:00:fe dev eth0 nud permanent",
    "-6 neigh add 2001:db8:1::fe lladdr 02:00:00:00:00:fe dev eth0 nud permanent",
    "neigh add 192.0.2.10 lladdr 02:00:00:00:01:0a dev eth1 nud permanent",
    "route add default via 203.0.113.254",
    "-6 route add default via 2001:db8:1::fe",
    "route add 192.0.2.128/26 via 203.0.113.253",
    "route add unreachable 192.0.2.192/26",
];

/// The loaded relay program in its namespace. The thread that created it stays inside the
/// namespace until it is dropped.
pub struct Sandbox {
    /// The loaded object.
    pub dataplane: Dataplane,
    /// Jiffies calibration.
    pub clock: JiffiesClock,
    /// `eth0`'s ifindex (the ingress interface of every run).
    pub eth0: u32,
    /// `eth1`'s ifindex.
    pub eth1: u32,
    /// The config map's current value.
    pub config: RelayConfig,
    pin_dir: PathBuf,
    // Field order matters: leave the namespace, then delete it.
    _entered: EnteredNetns,
    ns: Netns,
}

/// The relay's address in `family_of`'s family, at `port`.
pub fn relay_at(family_of: std::net::SocketAddr, port: u16) -> std::net::SocketAddr {
    match family_of {
        std::net::SocketAddr::V4(_) => std::net::SocketAddr::new(RELAY_V4.into(), port),
        std::net::SocketAddr::V6(_) => std::net::SocketAddr::new(RELAY_V6.into(), port),
    }
}

impl Sandbox {
    /// Builds the namespace, loads the program with maps pinned in a private directory, and
    /// writes the default config.
    pub fn create(prefix: &str) -> Result<Sandbox> {
        Self::with_capacity(prefix, 1024, 64)
    }

    /// [`Sandbox::create`] with room for `max_sessions` sessions and `max_allocations` TURN
    /// allocations.
    pub fn with_capacity(prefix: &str, max_sessions: u32, max_allocations: u32) -> Result<Sandbox> {
        let ns = Netns::create(prefix)?;
        for args in SETUP {
            ns.ip(&args.split(' ').collect::<Vec<_>>())?;
        }
        // bpf_fib_lookup requires forwarding on the ingress interface (the daemon enables it).
        for family in ["ipv4", "ipv6"] {
            for iface in ["eth0", "eth1"] {
                ns.sysctl(&format!("net.{family}.conf.{iface}.forwarding"), "1")?;
            }
        }
        let entered = ns.enter()?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
        let settings = FastPathSettings::new(Some(RELAY_V4), Some(RELAY_V6), RELAY_PORT);
        // The pins outlive a failed start unless removed here (Drop removes them after one that
        // succeeded): a load the verifier rejected left its directory behind in bpffs.
        let started = (|| -> Result<_> {
            let mut dataplane = Dataplane::load(&LoadOptions {
                pin_dir: pin_dir.clone(),
                max_sessions,
                max_allocations,
                nexthop_cache_entries: settings.cache_entries(),
                shared_from: None,
            })?;
            // test_run accepts an interface as ingress only when XDP is enabled on it.
            for iface in ["eth0", "eth1"] {
                dataplane.attach(PROGRAM_PASS, iface, XdpMode::Driver)?;
            }
            let clock = dataplane.clock()?;
            dataplane.pin_clock_probe()?;
            let eth0 = nix::net::if_::if_nametoindex("eth0").context("eth0")?;
            let eth1 = nix::net::if_::if_nametoindex("eth1").context("eth1")?;
            let config = settings.to_map_value(&clock);
            dataplane.maps.set_config(&config)?;
            Ok((dataplane, clock, eth0, eth1, config))
        })();
        let (dataplane, clock, eth0, eth1, config) = started.inspect_err(|_| {
            let _ = remove_pins(&pin_dir);
        })?;
        Ok(Sandbox {
            dataplane,
            clock,
            eth0,
            eth1,
            config,
            pin_dir,
            _entered: entered,
            ns,
        })
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    /// The namespace's name.
    pub fn netns_name(&self) -> &str {
        self.ns.name()
    }

    /// Runs `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        self.ns.ip(args)
    }

    /// Replaces the config map's value.
    pub fn set_config(&mut self, config: RelayConfig) -> Result<()> {
        self.config = config;
        Ok(self.dataplane.maps.set_config(&config)?)
    }

    /// Installs a session in the fast-path map.
    pub fn add_session(&mut self, vni: u32, slot: u32, a: Leg, b: Leg) -> Result<()> {
        let session = Session {
            legs: [a, b],
            slot,
            ..Default::default()
        };
        Ok(self.dataplane.maps.put_session_record(vni, &session)?)
    }

    /// Installs a session with rate limits.
    pub fn add_limited_session(
        &mut self,
        vni: u32,
        slot: u32,
        legs: [Leg; 2],
        limits: relay_common::maps::SessionLimits,
    ) -> Result<()> {
        let session = Session {
            legs,
            slot,
            limits,
            ..Default::default()
        };
        Ok(self.dataplane.maps.put_session_record(vni, &session)?)
    }

    /// Runs `frame` through program `program` as if it arrived on `eth0`.
    pub fn run(&mut self, program: &str, frame: &[u8]) -> Result<RunOutcome> {
        Ok(self.run_timed(program, frame)?.0)
    }

    /// [`Sandbox::run`], also returning how long the program ran as measured by the kernel.
    pub fn run_timed(&mut self, program: &str, frame: &[u8]) -> Result<(RunOutcome, Duration)> {
        let ingress = self.eth0;
        run_frame_timed(self.dataplane.program(program)?, frame, Some(ingress))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pin_dir);
    }
}
