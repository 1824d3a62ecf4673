//! Per-packet cost of the XDP fast path next to a trivial MAC-swap XDP_TX program, measured in
//! the same run with BPF_PROG_TEST_RUN.
//!
//! Method: every call runs one fresh frame (repeat = 1). A larger repeat would rerun the
//! program on the frame it just rewrote, which is addressed to a leg and no longer forwardable
//! (no input can survive its own rewrite without being a hairpin), and live-frame mode recycles
//! rewritten pages after the first batch; both would time the wrong path. The kernel reports each
//! run's duration, which excludes the system call; it includes the test harness's own timer
//! overhead, the same for every program, which `xdp_pass` shows. Programs and cases are
//! interleaved round by round and the median round is reported, so drift on a shared machine
//! hits all of them alike.

use std::net::{IpAddr, SocketAddr};

use rand::{Rng, SeedableRng, rngs::StdRng};

use anyhow::{Result, ensure};
use etherparse::PacketBuilder;
use relay_common::{
    geneve::{GENEVE_PROTOCOL_DATA, GeneveHdr},
    maps::{Leg, SessionLimits},
    turn::ChannelDataHdr,
    wireguard::WireGuardPair,
};
use serde::Serialize;

use crate::{
    lab_xdp::LabXdp,
    sandbox::{GATEWAY_MAC, RELAY_MAC, RELAY_PORT, Sandbox, relay_at},
    turn_records::{self, TURN_PORT},
};
use relay_userspace::{
    dataplane::{
        object::{PROGRAM_PASS, PROGRAM_RELAY},
        simulate::{XdpAction, run_frame_timed},
        turn_maps::{TurnMaps, TurnRecord},
        wireguard_maps::WireGuardMaps,
    },
    fronts::turn::{persist, server::Transport},
};

/// Which front's forwarding path a case takes.
#[derive(Clone, Copy)]
enum Front {
    /// A session of the session protocol: a Geneve data packet from one leg to the other.
    Session,
    /// A stock WireGuard pair: a transport data message from side A's leg to its port.
    WireGuard,
    /// TURN, client → peer: ChannelData to the TURN port leaves the relayed port as a datagram.
    TurnToPeer,
    /// TURN, peer → client: a datagram to the relayed port leaves the TURN port as ChannelData.
    TurnToClient,
}

/// One forwarding case: two endpoints (legs; for TURN the client and the peer), a packet from
/// the first (from the peer for [`Front::TurnToClient`]).
struct Case {
    name: &'static str,
    front: Front,
    from: &'static str,
    to: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "v4 → v4",
        front: Front::Session,
        from: "198.51.100.10:40000",
        to: "198.51.100.20:40001",
    },
    Case {
        name: "v6 → v6",
        front: Front::Session,
        from: "[2001:db8:2::10]:40002",
        to: "[2001:db8:2::20]:40003",
    },
    Case {
        name: "v4 → v6",
        front: Front::Session,
        from: "198.51.100.11:40004",
        to: "[2001:db8:2::21]:40005",
    },
    Case {
        name: "v6 → v4",
        front: Front::Session,
        from: "[2001:db8:2::22]:40006",
        to: "198.51.100.12:40007",
    },
    Case {
        name: "WireGuard v4 → v4",
        front: Front::WireGuard,
        from: "198.51.100.13:40008",
        to: "198.51.100.14:40009",
    },
    Case {
        name: "TURN client → peer, v4",
        front: Front::TurnToPeer,
        from: "198.51.100.15:40010",
        to: "198.51.100.16:40011",
    },
    Case {
        name: "TURN peer → client, v4",
        front: Front::TurnToClient,
        from: "198.51.100.17:40012",
        to: "198.51.100.18:40013",
    },
];

/// The WireGuard pair's relay ports (side A's, side B's) and slot.
const WIREGUARD_PORTS: [u16; 2] = [51_820, 51_821];
const WIREGUARD_SLOT: u32 = 100;
/// The TURN cases' allocations: relayed port and slot of case `i`'s (each case has its own:
/// one allocation written over another would leave the first case's packets matching no
/// allocation, timing a path that forwards nothing), and the channel.
const fn turn_relayed(i: u32) -> u16 {
    50_000 + i as u16
}
const fn turn_slot(i: u32) -> u32 {
    10 + i
}
const TURN_CHANNEL: u16 = 0x4001;

/// UDP payload bytes of the benchmark packets (Geneve header included): a WireGuard keepalive-
/// to-small-data size. Header-only rewriting makes the cost independent of it.
const PAYLOAD: usize = 128;

/// How much to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BenchOptions {
    /// Interleaved rounds (the median is reported).
    pub rounds: usize,
    /// Test runs per program, case and round.
    pub calls: usize,
}

/// Nanoseconds per run of each program for one case.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// Case name.
    pub case: String,
    /// Median over rounds of the relay's mean ns per packet.
    pub relay_ns: f64,
    /// Same for the MAC-swap reflector.
    pub reflector_ns: f64,
    /// Same for the pass-everything program: the harness's own floor.
    pub pass_ns: f64,
    /// `relay_ns / reflector_ns`.
    pub ratio: f64,
}

fn frame(from: SocketAddr, to_relay: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x77], RELAY_MAC);
    let builder = match (from.ip(), to_relay.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => builder.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => builder.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("one family per packet"),
    }
    .udp(from.port(), to_relay.port());
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("writing to a Vec");
    out
}

fn leg(addr: SocketAddr) -> Leg {
    match addr.ip() {
        IpAddr::V4(ip) => Leg::bound_v4(ip.octets(), addr.port()),
        IpAddr::V6(ip) => Leg::bound_v6(ip.octets(), addr.port()),
    }
}

/// The programs compared.
#[derive(Clone, Copy)]
enum Subject {
    Relay,
    Reflector,
    Pass,
}

fn mean_ns(
    sandbox: &mut Sandbox,
    lab: &mut LabXdp,
    subject: Subject,
    frame: &[u8],
    calls: usize,
) -> Result<f64> {
    mean_ns_over(
        sandbox,
        lab,
        subject,
        std::slice::from_ref(&frame.to_vec()),
        calls,
    )
}

/// Mean ns per run of `subject` over `calls` runs, cycling through `frames`.
fn mean_ns_over(
    sandbox: &mut Sandbox,
    lab: &mut LabXdp,
    subject: Subject,
    frames: &[Vec<u8>],
    calls: usize,
) -> Result<f64> {
    let ingress = Some(sandbox.eth0);
    let program = match subject {
        Subject::Relay => sandbox.dataplane.program(PROGRAM_RELAY)?,
        Subject::Pass => sandbox.dataplane.program(PROGRAM_PASS)?,
        Subject::Reflector => lab.program(relay_common::bench::PROGRAM_REFLECTOR)?,
    };
    let mut total = 0u128;
    for call in 0..calls {
        total += run_frame_timed(program, &frames[call % frames.len()], ingress)?
            .1
            .as_nanos();
    }
    Ok(total as f64 / calls as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Installs what `case` forwards through (as the daemon's map code writes it) and returns the
/// frame to time. `i` keeps sessions apart.
fn install(sandbox: &mut Sandbox, i: u32, case: &Case) -> Result<Vec<u8>> {
    let (from, to): (SocketAddr, SocketAddr) = (case.from.parse()?, case.to.parse()?);
    Ok(match case.front {
        Front::Session => {
            // Slot i, and a VNI that names it (as every VNI this build allocates does).
            let vni = 0x10_0000 + i;
            sandbox.add_session(vni, i, leg(from), leg(to))?;
            frame(from, relay_at(from, RELAY_PORT), &geneve_data(vni))
        }
        Front::WireGuard => {
            let mut maps = WireGuardMaps::open_pinned(sandbox.pin_dir())?;
            maps.put(&WireGuardPair {
                legs: [leg(from), leg(to)],
                ports: WIREGUARD_PORTS.map(u16::to_be),
                slot: WIREGUARD_SLOT,
                id: 0x10_0000 + i,
                ..Default::default()
            })?;
            // A transport data message: type 4, then the receiver's index.
            let mut data = vec![0xab; PAYLOAD];
            data[..4].copy_from_slice(&[4, 0, 0, 0]);
            frame(from, relay_at(from, WIREGUARD_PORTS[0]), &data)
        }
        Front::TurnToPeer | Front::TurnToClient => {
            let mut maps = TurnMaps::open_pinned(sandbox.pin_dir())?;
            maps.serve_port(TURN_PORT)?;
            maps.put(&turn_record(turn_slot(i), turn_relayed(i), from, to))?;
            if let Front::TurnToPeer = case.front {
                frame(from, relay_at(from, TURN_PORT), &channel_data())
            } else {
                frame(to, relay_at(to, turn_relayed(i)), &[0xab; PAYLOAD])
            }
        }
    })
}

/// A Geneve data packet's UDP payload for session `vni`.
fn geneve_data(vni: u32) -> Vec<u8> {
    let mut data = vec![0xab; PAYLOAD];
    data[..8].copy_from_slice(&GeneveHdr::new(vni, false, GENEVE_PROTOCOL_DATA).to_bytes());
    data
}

/// ChannelData on [`TURN_CHANNEL`], the whole payload.
fn channel_data() -> Vec<u8> {
    let mut data = vec![0xab; PAYLOAD];
    data[..4].copy_from_slice(&ChannelDataHdr::new(TURN_CHANNEL, (PAYLOAD - 4) as u16).to_bytes());
    data
}

/// The fast-path records of a UDP allocation in `slot` of `client`, relaying on `relayed`,
/// with a channel bound to `peer`, as the TURN server writes them.
fn turn_record(slot: u32, relayed: u16, client: SocketAddr, peer: SocketAddr) -> TurnRecord {
    let allocation = turn_records::allocation(
        slot,
        client,
        Transport::Udp,
        relayed,
        &[(TURN_CHANNEL, peer)],
        &[],
    );
    persist::to_record(
        &allocation,
        SessionLimits::default(),
        &turn_records::clock(),
    )
}

/// Runs the benchmark in a fresh sandbox (needs root).
pub fn run(options: BenchOptions) -> Result<Vec<CaseResult>> {
    let mut sandbox = Sandbox::create("rb-xdp")?;
    let mut frames = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        frames.push(install(&mut sandbox, i as u32, case)?);
    }
    // Only the forwarding path is timed: check it is the one taken, with every case installed
    // (a later case's records must not have changed an earlier one's).
    for (case, f) in CASES.iter().zip(&frames) {
        let out = sandbox.run(PROGRAM_RELAY, f)?;
        ensure!(
            out.action == XdpAction::Tx && out.frame[..6] == GATEWAY_MAC,
            "{}: not forwarded ({})",
            case.name,
            out.action
        );
    }
    let mut lab = LabXdp::load()?;
    let programs = [Subject::Relay, Subject::Reflector, Subject::Pass];
    // samples[case][program] = per-round means
    let mut samples = vec![vec![Vec::new(); programs.len()]; CASES.len()];
    for _ in 0..options.rounds {
        for (c, f) in frames.iter().enumerate() {
            for (p, subject) in programs.iter().enumerate() {
                samples[c][p].push(mean_ns(&mut sandbox, &mut lab, *subject, f, options.calls)?);
            }
        }
    }
    Ok(CASES
        .iter()
        .zip(samples)
        .map(|(case, mut s)| {
            let pass_ns = median(s.pop().unwrap());
            let reflector_ns = median(s.pop().unwrap());
            let relay_ns = median(s.pop().unwrap());
            CaseResult {
                case: case.name.to_string(),
                relay_ns,
                reflector_ns,
                pass_ns,
                ratio: relay_ns / reflector_ns,
            }
        })
        .collect())
}

/// A front's forwarding cost with `records` live sessions or allocations in its table.
#[derive(Clone, Debug, Serialize)]
pub struct TableSizeResult {
    /// Which path: "session" (v4 → v4) or "turn" (ChannelData client → peer, v4).
    pub front: &'static str,
    /// Live sessions or allocations.
    pub records: u32,
    /// Median over rounds of the relay's mean ns per packet, each run a packet of another
    /// record drawn at random.
    pub relay_ns: f64,
    /// The reflector on the same frames.
    pub reflector_ns: f64,
    /// `xdp_pass` on the same frames: the harness floor.
    pub pass_ns: f64,
    /// Distinct frames cycled through (each of a random record of the table).
    pub frames: usize,
}

/// Distinct frames each round cycles through (each of a random record of the table).
const TABLE_FRAMES: usize = 4096;

/// Leg A and leg B of session `i` of the table benchmark (for TURN: allocation `i`'s client
/// and its channel's peer): distinct addresses and ports in the sandbox's routed
/// documentation range.
fn table_legs(i: u32) -> (SocketAddr, SocketAddr) {
    let host = |n: u32| IpAddr::from([198, 51, 100, 1 + (n % 250) as u8]);
    let port = |n: u32| 1024 + (n % 60_000) as u16;
    (
        SocketAddr::new(host(i), port(i / 250)),
        SocketAddr::new(host(i + 125), port(i / 250 + 30_000)),
    )
}

/// Times `frames` (each checked to be forwarded first) on the relay, the reflector and `xdp_pass`.
fn time_table(
    sandbox: &mut Sandbox,
    lab: &mut LabXdp,
    options: BenchOptions,
    front: &'static str,
    records: u32,
    frames: Vec<Vec<u8>>,
) -> Result<TableSizeResult> {
    for f in &frames {
        let check = sandbox.run(PROGRAM_RELAY, f)?;
        ensure!(
            check.action == XdpAction::Tx,
            "{front}, {records} records: not forwarded ({})",
            check.action
        );
    }
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..options.rounds {
        for (p, subject) in [Subject::Relay, Subject::Reflector, Subject::Pass]
            .into_iter()
            .enumerate()
        {
            samples[p].push(mean_ns_over(sandbox, lab, subject, &frames, options.calls)?);
        }
    }
    let [relay, reflector, pass] = samples;
    Ok(TableSizeResult {
        front,
        records,
        relay_ns: median(relay),
        reflector_ns: median(reflector),
        pass_ns: median(pass),
        frames: frames.len(),
    })
}

/// `count` frames of records drawn at random from `0..size`, each made by `frame_of`.
fn random_frames(rng: &mut StdRng, size: u32, frame_of: impl Fn(u32) -> Vec<u8>) -> Vec<Vec<u8>> {
    (0..TABLE_FRAMES.min(size as usize * 8))
        .map(|_| frame_of(rng.random_range(0..size)))
        .collect()
}

/// Times the v4 → v4 session path with each of `sessions` live sessions in one table, then
/// ChannelData client → peer with each of `allocations` live TURN allocations (sizes
/// ascending; records are added as the sizes grow), every run a packet of another record, so
/// what a full table costs in cache misses shows, not only its lookups.
pub fn run_table_sizes(
    options: BenchOptions,
    sessions: &[u32],
    allocations: &[u32],
) -> Result<Vec<TableSizeResult>> {
    if sessions.is_empty() && allocations.is_empty() {
        return Ok(Vec::new());
    }
    let capacity = sessions.iter().copied().max().unwrap_or(1).max(2);
    let max_allocations = allocations.iter().copied().max().unwrap_or(1).max(64);
    let mut sandbox = Sandbox::with_capacity("rb-xdpt", capacity, max_allocations)?;
    let bits = relay_common::maps::session_slot_bits(capacity);
    let vni_of = |slot: u32| (1 << bits) | slot;
    let mut lab = LabXdp::load()?;
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
    let mut installed = 0u32;
    for &size in sessions {
        while installed < size {
            let (a, b) = table_legs(installed);
            sandbox.add_session(vni_of(installed), installed, leg(a), leg(b))?;
            installed += 1;
        }
        let frames = random_frames(&mut rng, size, |i| {
            let from = table_legs(i).0;
            frame(from, relay_at(from, RELAY_PORT), &geneve_data(vni_of(i)))
        });
        out.push(time_table(
            &mut sandbox,
            &mut lab,
            options,
            "session",
            size,
            frames,
        )?);
    }
    let mut installed = 0u32;
    let mut maps = TurnMaps::open_pinned(sandbox.pin_dir())?;
    if !allocations.is_empty() {
        maps.serve_port(TURN_PORT)?;
    }
    for &size in allocations {
        while installed < size {
            let (client, peer) = table_legs(installed);
            let relayed = table_relayed_port(installed);
            maps.put(&turn_record(installed, relayed, client, peer))?;
            installed += 1;
        }
        let frames = random_frames(&mut rng, size, |i| {
            let client = table_legs(i).0;
            frame(client, relay_at(client, TURN_PORT), &channel_data())
        });
        out.push(time_table(
            &mut sandbox,
            &mut lab,
            options,
            "turn",
            size,
            frames,
        )?);
    }
    Ok(out)
}

/// The relayed port of allocation `i` of the table benchmark: clear of the sandbox's session
/// and TURN ports.
fn table_relayed_port(i: u32) -> u16 {
    10_000 + i as u16
}
