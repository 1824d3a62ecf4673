//! Support for the privileged XDP tests: frames built with etherparse, expected outputs rebuilt
//! independently (full checksum recomputation, no shared code with the program), and a fixture
//! that loads the program in a network namespace with real routes and neighbours.
#![allow(dead_code, unused_imports)]

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header,
    UdpHeader,
};
use relay_common::{
    geneve::{GENEVE_PROTOCOL_BIND, GENEVE_PROTOCOL_DATA, GeneveHdr},
    maps::{DEFAULT_TTL, FAMILY_NONE, Leg, RelayConfig, SessionStats},
    verdict::{Reason, VerdictCounter},
};
use relay_lab::sandbox::Sandbox;
use relay_userspace::dataplane::{
    clock::JiffiesClock,
    object::PROGRAM_RELAY,
    simulate::{RunOutcome, XdpAction},
};

pub mod bench;
pub mod process;
pub mod turn;
pub use process::{relay_path, run_ok};

/// Returns early from a privileged test, loudly, when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !nix::unistd::Uid::effective().is_root() {
            println!("skipped: needs root");
            return;
        }
    };
}

pub use relay_lab::sandbox::{
    DIRECT_NEIGHBOUR_MAC, GATEWAY_MAC, RELAY_MAC, RELAY_PORT, RELAY_V4, RELAY_V6, SECOND_IF_MAC,
    relay_at,
};
/// Some client's MAC as seen on the wire towards the relay.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

/// Legs reached through the default gateway on the ingress interface (XDP_TX).
pub const LEG_A4: &str = "198.51.100.10:40000";
pub const LEG_B4: &str = "198.51.100.20:40001";
pub const LEG_A6: &str = "[2001:db8:2::10]:40002";
pub const LEG_B6: &str = "[2001:db8:2::20]:40003";
/// Routed via a gateway with no neighbour entry.
pub const LEG_NO_NEIGH: &str = "192.0.2.130:40004";
/// Covered by an `unreachable` route.
pub const LEG_UNREACHABLE: &str = "192.0.2.200:40005";
/// Directly connected on the second interface (XDP_REDIRECT).
pub const LEG_OTHER_IF: &str = "192.0.2.10:40006";

/// Pins the calling thread to the CPU it runs on. The program keeps some state per CPU (rate
/// buckets, the log gate) and BPF_PROG_TEST_RUN runs it on the caller's CPU, so a test that
/// checks such state must not migrate mid-way (which a loaded machine makes likely).
pub fn pin_to_current_cpu() {
    use nix::sched::{CpuSet, sched_getcpu, sched_setaffinity};
    let mut set = CpuSet::new();
    set.set(sched_getcpu().expect("sched_getcpu"))
        .expect("a CPU number within the set");
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A bound leg at `addr`.
pub fn leg(addr: SocketAddr) -> Leg {
    match addr.ip() {
        IpAddr::V4(ip) => Leg::bound_v4(ip.octets(), addr.port()),
        IpAddr::V6(ip) => Leg::bound_v6(ip.octets(), addr.port()),
    }
}

/// A leg that has not bound yet.
pub fn unbound_leg() -> Leg {
    Leg {
        family: FAMILY_NONE,
        ..Default::default()
    }
}

/// A Geneve data packet for `vni` carrying `payload`.
pub fn geneve_data(vni: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA)
        .to_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// A Geneve control packet for `vni`.
pub fn geneve_control(vni: u32) -> Vec<u8> {
    let mut v = GeneveHdr::new(vni, true, GENEVE_PROTOCOL_BIND)
        .to_bytes()
        .to_vec();
    v.extend_from_slice(&[0u8; 64]);
    v
}

/// A recognisable payload of `n` bytes.
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// Options for building a UDP frame.
#[derive(Clone, Copy)]
pub struct FrameOpts {
    pub ttl: u8,
    pub tos: u8,
    pub zero_checksum: bool,
    pub identification: u16,
}

impl Default for FrameOpts {
    fn default() -> Self {
        FrameOpts {
            ttl: 57,
            tos: 0xb8, // DSCP EF + ECN 0: must survive the relay
            zero_checksum: false,
            identification: 0x4242,
        }
    }
}

/// An Ethernet frame carrying UDP `src` → `dst` with `data` as payload, checksums computed by
/// etherparse.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, data: &[u8], opts: FrameOpts) -> Vec<u8> {
    let mut out = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4Header::new(
                (8 + data.len()) as u16,
                opts.ttl,
                IpNumber::UDP,
                s.octets(),
                d.octets(),
            )
            .unwrap();
            ip.identification = opts.identification;
            ip.dscp = IpDscp::try_new(opts.tos >> 2).unwrap();
            ip.ecn = IpEcn::try_new(opts.tos & 3).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            let mut udp =
                UdpHeader::without_ipv4_checksum(src.port(), dst.port(), data.len()).unwrap();
            if !opts.zero_checksum {
                udp.checksum = udp.calc_checksum_ipv4(&ip, data).unwrap();
            }
            out.extend_from_slice(&eth(EtherType::IPV4, CLIENT_MAC, RELAY_MAC));
            out.extend_from_slice(&ip.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = Ipv6Header {
                traffic_class: opts.tos,
                flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
                payload_length: (8 + data.len()) as u16,
                next_header: IpNumber::UDP,
                hop_limit: opts.ttl,
                source: s.octets(),
                destination: d.octets(),
            };
            let mut udp = UdpHeader::with_ipv6_checksum(src.port(), dst.port(), &ip, data).unwrap();
            if opts.zero_checksum {
                udp.checksum = 0;
            }
            out.extend_from_slice(&eth(EtherType::IPV6, CLIENT_MAC, RELAY_MAC));
            out.extend_from_slice(&ip.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
        }
        _ => panic!("mixed families in one frame"),
    }
    out.extend_from_slice(data);
    out
}

pub fn eth(ether_type: EtherType, src: [u8; 6], dst: [u8; 6]) -> [u8; 14] {
    Ethernet2Header {
        source: src,
        destination: dst,
        ether_type,
    }
    .to_bytes()
}

/// The incoming frame's IP metadata that a forwarded frame keeps.
struct Incoming {
    tos: u8,
    identification: u16,
    udp_checksum_zero: bool,
    dont_fragment: bool,
    data: Vec<u8>,
}

fn parse_incoming(frame: &[u8]) -> Incoming {
    let (e, rest) = Ethernet2Header::from_slice(frame).unwrap();
    if e.ether_type == EtherType::IPV4 {
        let (ip, rest) = Ipv4Header::from_slice(rest).unwrap();
        let (udp, rest) = UdpHeader::from_slice(rest).unwrap();
        Incoming {
            tos: (ip.dscp.value() << 2) | ip.ecn.value(),
            identification: ip.identification,
            udp_checksum_zero: udp.checksum == 0,
            dont_fragment: ip.dont_fragment,
            data: rest[..udp.length as usize - 8].to_vec(),
        }
    } else {
        let (ip, rest) = Ipv6Header::from_slice(rest).unwrap();
        let (udp, rest) = UdpHeader::from_slice(rest).unwrap();
        Incoming {
            tos: ip.traffic_class,
            identification: 0,
            udp_checksum_zero: udp.checksum == 0,
            dont_fragment: true,
            data: rest[..udp.length as usize - 8].to_vec(),
        }
    }
}

/// What the relay must emit for `input` going to leg `to` via a next hop with `dst_mac`, built
/// from scratch: new headers, checksums computed in full by etherparse.
pub fn expected_forward(
    input: &[u8],
    to: SocketAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let data = parse_incoming(input).data;
    expected_relayed(input, RELAY_PORT, to, &data, src_mac, dst_mac)
}

/// What the relay must emit when it relays `input` as `data` from its own address (of `to`'s
/// family) and port `sport` to `to`, built from scratch: new headers keeping the incoming
/// DSCP/ECN (and IPv4 identification and flags, or the IPv6 flow label, within a family),
/// checksums computed in full by etherparse (an IPv4 datagram without one stays without).
pub fn expected_relayed(
    input: &[u8],
    sport: u16,
    to: SocketAddr,
    data: &[u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let inc = parse_incoming(input);
    let from_v4 = Ethernet2Header::from_slice(input).unwrap().0.ether_type == EtherType::IPV4;
    let mut out = Vec::new();
    match to.ip() {
        IpAddr::V4(d) => {
            let mut ip = Ipv4Header::new(
                (8 + data.len()) as u16,
                DEFAULT_TTL,
                IpNumber::UDP,
                RELAY_V4.octets(),
                d.octets(),
            )
            .unwrap();
            // v4 → v4 keeps identification and flags; v6 → v4 creates id 0 with DF.
            ip.identification = if from_v4 { inc.identification } else { 0 };
            ip.dont_fragment = inc.dont_fragment;
            ip.dscp = IpDscp::try_new(inc.tos >> 2).unwrap();
            ip.ecn = IpEcn::try_new(inc.tos & 3).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            let mut udp = UdpHeader::without_ipv4_checksum(sport, to.port(), data.len()).unwrap();
            if !inc.udp_checksum_zero {
                udp.checksum = udp.calc_checksum_ipv4(&ip, data).unwrap();
            }
            out.extend_from_slice(&eth(EtherType::IPV4, src_mac, dst_mac));
            out.extend_from_slice(&ip.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
        }
        IpAddr::V6(d) => {
            let ip = Ipv6Header {
                traffic_class: inc.tos,
                // v6 → v6 keeps the flow label; v4 → v6 has none.
                flow_label: if from_v4 {
                    Ipv6FlowLabel::ZERO
                } else {
                    Ipv6FlowLabel::try_new(0x12345).unwrap()
                },
                payload_length: (8 + data.len()) as u16,
                next_header: IpNumber::UDP,
                hop_limit: DEFAULT_TTL,
                source: RELAY_V6.octets(),
                destination: d.octets(),
            };
            let udp = UdpHeader::with_ipv6_checksum(sport, to.port(), &ip, data).unwrap();
            out.extend_from_slice(&eth(EtherType::IPV6, src_mac, dst_mac));
            out.extend_from_slice(&ip.to_bytes());
            out.extend_from_slice(&udp.to_bytes());
        }
    }
    out.extend_from_slice(data);
    out
}

/// Counter changes caused by one frame.
#[derive(Debug)]
pub struct Deltas {
    /// Per reason: packets and bytes added.
    pub verdicts: Vec<VerdictCounter>,
    /// Per session slot of interest: packets and bytes after minus before; last-seen stamps
    /// as they are after.
    pub session: SessionStats,
    /// Which legs' last-seen stamps changed.
    pub stamped: [bool; 2],
}

impl Deltas {
    /// Names of the reasons that counted anything.
    pub fn counted(&self) -> Vec<&'static str> {
        Reason::ALL
            .iter()
            .filter(|r| self.verdicts[**r as usize].packets > 0)
            .map(|r| r.name())
            .collect()
    }

    /// Asserts exactly one packet of `len` bytes was counted, under `reason`.
    pub fn assert_only(&self, reason: Reason, len: usize) {
        for r in Reason::ALL {
            let d = self.verdicts[*r as usize];
            if *r == reason {
                assert_eq!(
                    d,
                    VerdictCounter {
                        packets: 1,
                        bytes: len as u64
                    },
                    "counter {}",
                    r.name()
                );
            } else {
                assert_eq!(d, VerdictCounter::default(), "counter {} changed", r.name());
            }
        }
    }
}

/// The sandboxed relay program (see `relay_lab::sandbox`) with counter bookkeeping.
pub struct Fixture {
    pub sandbox: Sandbox,
    pub clock: JiffiesClock,
    pub eth0: u32,
    pub eth1: u32,
    pub config: RelayConfig,
}

impl Fixture {
    pub fn new() -> Fixture {
        let sandbox = Sandbox::create("rt-fastpath").unwrap();
        Fixture {
            clock: sandbox.clock,
            eth0: sandbox.eth0,
            eth1: sandbox.eth1,
            config: sandbox.config,
            sandbox,
        }
    }

    /// Runs `ip args…` in the sandbox's namespace.
    pub fn ip(&self, args: &[&str]) {
        self.sandbox.ip(args).unwrap();
    }

    pub fn set_config(&mut self, config: RelayConfig) {
        self.config = config;
        self.sandbox.set_config(config).unwrap();
    }

    pub fn add_session(&mut self, vni: u32, slot: u32, a: Leg, b: Leg) {
        self.sandbox.add_session(vni, slot, a, b).unwrap();
    }

    pub fn maps(&mut self) -> &mut relay_userspace::dataplane::RelayMaps {
        &mut self.sandbox.dataplane.maps
    }

    /// Runs `frame` arriving on eth0 and returns the outcome and counter deltas for `slot`.
    /// The kernel's jiffies now (the clock the program stamps and expires by).
    pub fn jiffies(&mut self) -> u64 {
        let probe = self
            .sandbox
            .dataplane
            .program(relay_userspace::dataplane::object::PROGRAM_CLOCK_PROBE)
            .unwrap();
        relay_userspace::dataplane::clock::JiffiesClock::read(probe).unwrap()
    }

    /// Waits (at most 10 s) until the kernel's jiffies pass `jiffies`.
    pub fn wait_for_jiffies_past(&mut self, jiffies: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.jiffies() <= jiffies {
            assert!(
                std::time::Instant::now() < deadline,
                "jiffies did not reach {jiffies}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn run(&mut self, frame: &[u8], slot: u32) -> (RunOutcome, Deltas) {
        let before = self.maps().kernel_verdicts().unwrap();
        let session_before = self.maps().kernel_session_stats(slot).unwrap();
        let outcome = self.sandbox.run(PROGRAM_RELAY, frame).expect("test_run");
        let after = self.maps().kernel_verdicts().unwrap();
        let session_after = self.maps().kernel_session_stats(slot).unwrap();
        let verdicts = before
            .iter()
            .zip(&after)
            .map(|(b, a)| VerdictCounter {
                packets: a.packets - b.packets,
                bytes: a.bytes - b.bytes,
            })
            .collect();
        let session = SessionStats {
            packets: [
                session_after.packets[0] - session_before.packets[0],
                session_after.packets[1] - session_before.packets[1],
            ],
            bytes: [
                session_after.bytes[0] - session_before.bytes[0],
                session_after.bytes[1] - session_before.bytes[1],
            ],
            last_seen: session_after.last_seen,
            ..Default::default()
        };
        let stamped = [0, 1].map(|l| session_after.last_seen[l] != session_before.last_seen[l]);
        (
            outcome,
            Deltas {
                verdicts,
                session,
                stamped,
            },
        )
    }
}

/// Runs `frame` arriving on eth0: the action, the frame after the program, the verdict deltas
/// and the change in one record's kernel counters (a TURN allocation's, a WireGuard pair's),
/// which `stats` reads.
pub fn run_counted(
    fx: &mut Fixture,
    frame: &[u8],
    stats: impl Fn() -> SessionStats,
) -> (XdpAction, Vec<u8>, Deltas, SessionStats) {
    let before = stats();
    let (out, deltas) = fx.run(frame, 0);
    let after = stats();
    let delta = SessionStats {
        packets: [0, 1].map(|i| after.packets[i] - before.packets[i]),
        bytes: [0, 1].map(|i| after.bytes[i] - before.bytes[i]),
        last_seen: after.last_seen,
        ..Default::default()
    };
    (out.action, out.frame, deltas, delta)
}

/// Asserts `frame` gets `action`, unmodified, counted under `reason` only, and nothing counted
/// for the record `stats` reads.
pub fn assert_untouched(
    fx: &mut Fixture,
    frame: &[u8],
    action: XdpAction,
    reason: Reason,
    stats: impl Fn() -> SessionStats,
) {
    let (got, out, deltas, record) = run_counted(fx, frame, stats);
    assert_eq!(
        got,
        action,
        "action for {}; counted {:?}",
        reason.name(),
        deltas.counted()
    );
    assert_eq!(out, frame, "a frame not relayed is not modified");
    deltas.assert_only(reason, frame.len());
    assert_eq!(record.packets, [0, 0], "nothing counted for the record");
}
