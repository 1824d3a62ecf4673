//! Turning passes into results: medians over rounds, the ratios the targets are stated in, and
//! the paper extrapolation to a 10 GbE NIC. Pure functions of the measurements.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What carried the packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The relay program in the driver.
    Native,
    /// The relay program in the driver, carrying stock WireGuard pairs' transport data.
    #[serde(rename = "wireguard")]
    WireGuard,
    /// The relay program in the network stack.
    Generic,
    /// No XDP: the daemon's batched userspace forwarder.
    Off,
    /// A MAC-swap XDP_TX program in the driver: the practical limit of the path.
    Reflector,
    /// TURN: the relay's TURN front with its program in the driver.
    #[serde(rename = "turn-native")]
    TurnNative,
    /// TURN: the relay's TURN front without XDP (its userspace path).
    #[serde(rename = "turn-off")]
    TurnOff,
    /// TURN: coturn, the server people run today.
    Coturn,
}

impl Mode {
    /// Every mode of the throughput benchmark, in the order it interleaves them.
    pub const ALL: [Mode; 5] = [
        Mode::Native,
        Mode::WireGuard,
        Mode::Generic,
        Mode::Off,
        Mode::Reflector,
    ];

    /// Every TURN mode, in the order the TURN benchmark interleaves them.
    pub const TURN: [Mode; 3] = [Mode::TurnNative, Mode::TurnOff, Mode::Coturn];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::WireGuard => "wireguard",
            Mode::Generic => "generic",
            Mode::Off => "off",
            Mode::Reflector => "reflector",
            Mode::TurnNative => "turn-native",
            Mode::TurnOff => "turn-off",
            Mode::Coturn => "coturn",
        }
    }
}

/// A pass's load is "loss-free" below this fraction lost.
pub const LOSS_FREE: f64 = 0.005;

/// A saturation pass was limited by the relay when it kept its core at least this busy.
pub const RELAY_BOUND: f64 = 0.9;

/// One timed pass of the generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    /// Seconds the generator sent for.
    pub seconds: f64,
    /// Frames the generator transmitted.
    pub offered: u64,
    /// Frames that came back out of the relay (counted by the sink).
    pub relayed: u64,
    /// The relay's CPU time over the pass (its NAPI thread and the daemon), ns.
    pub relay_cpu_ns: u64,
    /// The daemon's part of it, ns.
    pub daemon_cpu_ns: u64,
    /// Wall time the CPU time was taken over (the pass and its drain), ns.
    pub wall_ns: u64,
    /// The relay core's busy fraction from /proc/stat over the same time.
    pub core_busy: f64,
}

impl Pass {
    /// Relayed packets per second.
    pub fn relayed_pps(&self) -> f64 {
        self.relayed as f64 / self.seconds
    }

    /// Offered packets per second.
    pub fn offered_pps(&self) -> f64 {
        self.offered as f64 / self.seconds
    }

    /// Fraction of the offered packets that did not come back.
    pub fn loss(&self) -> f64 {
        if self.offered == 0 {
            return 0.0;
        }
        (1.0 - self.relayed as f64 / self.offered as f64).max(0.0)
    }

    /// The relay's CPU time per relayed packet, ns.
    pub fn cpu_ns_per_packet(&self) -> f64 {
        self.relay_cpu_ns as f64 / self.relayed.max(1) as f64
    }

    /// The fraction of one core the relay's threads used.
    pub fn relay_busy(&self) -> f64 {
        self.relay_cpu_ns as f64 / self.wall_ns.max(1) as f64
    }
}

/// One cell of one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// What carried the packets.
    pub mode: Mode,
    /// UDP payload bytes per packet (the Geneve header included).
    pub payload: usize,
    /// Sessions the packets are spread over.
    pub sessions: usize,
    /// Round number.
    pub round: usize,
    /// As fast as the generator sends.
    pub saturation: Pass,
    /// At 90 % of the saturation throughput, when the saturation pass lost packets: the CPU
    /// cost per packet is taken at a load the path carries (an overloaded stack also spends CPU
    /// on packets it then drops).
    pub paced: Option<Pass>,
    /// The XDP program's own run time per packet (bpf_stats), where there is one.
    pub program_ns: Option<f64>,
}

impl Measurement {
    /// The pass the CPU cost is taken from.
    pub fn cpu_pass(&self) -> &Pass {
        self.paced.as_ref().unwrap_or(&self.saturation)
    }
}

/// Medians over rounds for one (mode, payload, sessions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What carried the packets.
    pub mode: Mode,
    /// UDP payload bytes.
    pub payload: usize,
    /// Sessions.
    pub sessions: usize,
    /// Relayed packets per second at saturation.
    pub relayed_pps: f64,
    /// Offered packets per second at saturation.
    pub offered_pps: f64,
    /// Loss at saturation.
    pub loss: f64,
    /// Loss at the load the CPU cost was taken at.
    pub cpu_pass_loss: f64,
    /// Fraction of its core the relay used at saturation (≥ 0.9: the relay was the bottleneck;
    /// below, the generator was).
    pub relay_busy: f64,
    /// The relay's CPU time per relayed packet, ns.
    pub cpu_ns_per_packet: f64,
    /// The daemon's (userspace's) part of that.
    pub daemon_ns_per_packet: f64,
    /// Relayed packets per second of relay CPU time.
    pub packets_per_cpu_second: f64,
    /// The program's own ns per packet.
    pub program_ns: Option<f64>,
}

/// The median (upper median for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over rounds, one summary per (mode, payload, sessions) in first-seen order.
pub fn summarise(measurements: &[Measurement]) -> Vec<Summary> {
    let mut keys: Vec<(Mode, usize, usize)> = Vec::new();
    for m in measurements {
        let key = (m.mode, m.payload, m.sessions);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(mode, payload, sessions)| {
            let cell: Vec<&Measurement> = measurements
                .iter()
                .filter(|m| (m.mode, m.payload, m.sessions) == (mode, payload, sessions))
                .collect();
            let of = |f: &dyn Fn(&Measurement) -> f64| median(cell.iter().map(|m| f(m)).collect());
            let cpu_ns = of(&|m| m.cpu_pass().cpu_ns_per_packet());
            let program: Vec<f64> = cell.iter().filter_map(|m| m.program_ns).collect();
            Summary {
                mode,
                payload,
                sessions,
                relayed_pps: of(&|m| m.saturation.relayed_pps()),
                offered_pps: of(&|m| m.saturation.offered_pps()),
                loss: of(&|m| m.saturation.loss()),
                cpu_pass_loss: of(&|m| m.cpu_pass().loss()),
                relay_busy: of(&|m| m.saturation.relay_busy()),
                cpu_ns_per_packet: cpu_ns,
                daemon_ns_per_packet: of(&|m| {
                    m.cpu_pass().daemon_cpu_ns as f64 / m.cpu_pass().relayed.max(1) as f64
                }),
                packets_per_cpu_second: 1e9 / cpu_ns,
                program_ns: (!program.is_empty()).then(|| median(program)),
            }
        })
        .collect()
}

/// The ratios the targets are stated in, for one (payload, sessions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    /// UDP payload bytes.
    pub payload: usize,
    /// Sessions.
    pub sessions: usize,
    /// Native relay / reflector, relayed packets per second at saturation.
    pub native_vs_reflector_pps: f64,
    /// Native relay / reflector, packets per relay CPU-second (target ≥ 0.9).
    pub native_vs_reflector_per_cpu: f64,
    /// WireGuard pairs in the kernel / reflector, packets per relay CPU-second (target ≥ 0.9),
    /// when measured.
    pub wireguard_vs_reflector_per_cpu: Option<f64>,
    /// Native relay / userspace forwarder, packets per relay CPU-second (target ≥ 10).
    pub native_vs_off_per_cpu: f64,
    /// Generic / userspace forwarder, packets per relay CPU-second.
    pub generic_vs_off_per_cpu: f64,
}

/// The targets the ratios are held against (in the JSON, so the docs generator states them
/// from the same place).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Native relay / reflector, relayed packets per second.
    pub native_vs_reflector: f64,
    /// Native relay / userspace forwarder, packets per relay CPU-second.
    pub native_vs_userspace: f64,
    /// Native relay (sessions, WireGuard pairs) / reflector, packets per relay CPU-second.
    pub per_cpu_vs_reflector: f64,
}

/// Native relay ≥ 90 % of the reflector, in relayed packets per second and per relay
/// CPU-second; ≥ 10× the userspace forwarder per CPU-second.
pub const TARGETS: Targets = Targets {
    native_vs_reflector: 0.9,
    native_vs_userspace: 10.0,
    per_cpu_vs_reflector: 0.9,
};

/// Ratios for every (payload, sessions) that has the four session modes (and WireGuard's where
/// measured).
pub fn ratios(summaries: &[Summary]) -> Vec<Ratios> {
    let find = |mode, payload, sessions| {
        summaries
            .iter()
            .find(|s| s.mode == mode && s.payload == payload && s.sessions == sessions)
    };
    let mut out = Vec::new();
    for s in summaries.iter().filter(|s| s.mode == Mode::Native) {
        let (Some(generic), Some(off), Some(refl)) = (
            find(Mode::Generic, s.payload, s.sessions),
            find(Mode::Off, s.payload, s.sessions),
            find(Mode::Reflector, s.payload, s.sessions),
        ) else {
            continue;
        };
        out.push(Ratios {
            payload: s.payload,
            sessions: s.sessions,
            native_vs_reflector_pps: s.relayed_pps / refl.relayed_pps,
            native_vs_reflector_per_cpu: s.packets_per_cpu_second / refl.packets_per_cpu_second,
            wireguard_vs_reflector_per_cpu: find(Mode::WireGuard, s.payload, s.sessions)
                .map(|wg| wg.packets_per_cpu_second / refl.packets_per_cpu_second),
            native_vs_off_per_cpu: s.packets_per_cpu_second / off.packets_per_cpu_second,
            generic_vs_off_per_cpu: generic.packets_per_cpu_second / off.packets_per_cpu_second,
        });
    }
    out
}

/// Bytes a frame with `payload` bytes of UDP payload occupies on an Ethernet wire: Ethernet,
/// IPv4 and UDP headers, FCS, preamble and inter-frame gap; at least the 64-byte minimum frame.
pub fn wire_bytes(payload: usize) -> usize {
    (14 + 20 + 8 + payload + 4).max(64) + 20
}

/// Packets per second a 10 Gbit/s link carries in one direction at `wire_bytes` per frame.
pub fn line_rate_pps(wire_bytes: usize) -> f64 {
    10e9 / (wire_bytes as f64 * 8.0)
}

/// One row of the paper extrapolation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Extrapolation {
    /// What the row is about.
    pub case: String,
    /// Packets per second to relay for 10 Gbit/s in (and out).
    pub line_rate_pps: f64,
    /// Measured relay CPU ns per packet it is based on.
    pub cpu_ns_per_packet: f64,
    /// Cores needed: rate × cost.
    pub cores: f64,
}

/// Cores the native relay needs for 10 GbE line rate at each measured size (many sessions
/// where measured), and for a flood of minimum-size frames (at the smallest size's cost: the
/// relay's work does not depend on the payload).
pub fn extrapolate(summaries: &[Summary]) -> Vec<Extrapolation> {
    let most_sessions = summaries.iter().map(|s| s.sessions).max().unwrap_or(1);
    let mut native: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.mode == Mode::Native && s.sessions == most_sessions)
        .collect();
    native.sort_by_key(|s| s.payload);
    let mut out: Vec<Extrapolation> = native
        .iter()
        .map(|s| {
            let pps = line_rate_pps(wire_bytes(s.payload));
            Extrapolation {
                case: format!("{}-byte UDP payloads", s.payload),
                line_rate_pps: pps,
                cpu_ns_per_packet: s.cpu_ns_per_packet,
                cores: pps * s.cpu_ns_per_packet / 1e9,
            }
        })
        .collect();
    if let Some(smallest) = native.first() {
        let pps = line_rate_pps(64 + 20);
        out.push(Extrapolation {
            case: "64-byte frames (a flood of minimum-size packets)".into(),
            line_rate_pps: pps,
            cpu_ns_per_packet: smallest.cpu_ns_per_packet,
            cores: pps * smallest.cpu_ns_per_packet / 1e9,
        });
    }
    out
}

/// The terminal table.
pub fn table(summaries: &[Summary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>7} {:>8} {:>11} {:>7} {:>7} {:>10} {:>8} {:>12}",
        "mode",
        "payload",
        "sessions",
        "relayed/s",
        "loss",
        "relay%",
        "cpu ns/pkt",
        "prog ns",
        "pkts/cpu-s"
    );
    for x in summaries {
        let _ = writeln!(
            s,
            "{:<10} {:>7} {:>8} {:>11.0} {:>6.2}% {:>6.0}% {:>10.0} {:>8} {:>12.0}",
            x.mode.name(),
            x.payload,
            x.sessions,
            x.relayed_pps,
            x.loss * 100.0,
            x.relay_busy * 100.0,
            x.cpu_ns_per_packet,
            x.program_ns.map_or("-".to_string(), |p| format!("{p:.0}")),
            x.packets_per_cpu_second
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(offered: u64, relayed: u64, cpu_ns: u64) -> Pass {
        Pass {
            seconds: 1.0,
            offered,
            relayed,
            relay_cpu_ns: cpu_ns,
            daemon_cpu_ns: 0,
            wall_ns: 1_000_000_000,
            core_busy: 0.5,
        }
    }

    fn m(mode: Mode, round: usize, relayed: u64, cpu_ns: u64) -> Measurement {
        Measurement {
            mode,
            payload: 64,
            sessions: 1,
            round,
            saturation: pass(relayed, relayed, cpu_ns),
            paced: None,
            program_ns: None,
        }
    }

    #[test]
    fn pass_arithmetic() {
        let p = pass(1000, 900, 450_000);
        assert!((p.loss() - 0.1).abs() < 1e-12);
        assert!((p.cpu_ns_per_packet() - 500.0).abs() < 1e-12);
        assert!((p.relayed_pps() - 900.0).abs() < 1e-12);
        // Late frames of an earlier pass never make loss negative.
        assert_eq!(pass(10, 12, 1).loss(), 0.0);
        assert_eq!(pass(0, 0, 0).loss(), 0.0);
    }

    #[test]
    fn medians_per_cell_and_the_paced_pass_decides_cpu_cost() {
        let mut ms = vec![
            m(Mode::Native, 0, 1000, 100_000),
            m(Mode::Native, 1, 3000, 900_000),
            m(Mode::Native, 2, 2000, 400_000),
        ];
        let mut off = m(Mode::Off, 0, 100, 1_000_000);
        off.saturation.offered = 1000; // 90 % lost: overloaded
        off.paced = Some(pass(90, 90, 180_000));
        ms.push(off);
        let s = summarise(&ms);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].relayed_pps, 2000.0);
        // ns per packet per round: 100, 300, 200 → 200.
        assert_eq!(s[0].cpu_ns_per_packet, 200.0);
        assert_eq!(s[0].packets_per_cpu_second, 5_000_000.0);
        assert!((s[1].loss - 0.9).abs() < 1e-12);
        assert_eq!(s[1].cpu_ns_per_packet, 2000.0);
        assert_eq!(s[1].cpu_pass_loss, 0.0);
    }

    #[test]
    fn ratios_need_all_four_modes() {
        let ms = vec![
            m(Mode::Native, 0, 1000, 200_000),
            m(Mode::Generic, 0, 500, 250_000),
            m(Mode::Off, 0, 100, 200_000),
            m(Mode::Reflector, 0, 1100, 198_000),
        ];
        let r = ratios(&summarise(&ms));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].wireguard_vs_reflector_per_cpu, None);
        assert!((r[0].native_vs_reflector_pps - 1000.0 / 1100.0).abs() < 1e-9);
        // 200 ns vs 180 ns per packet.
        assert!((r[0].native_vs_reflector_per_cpu - 0.9).abs() < 1e-9);
        assert!((r[0].native_vs_off_per_cpu - 10.0).abs() < 1e-9);
        assert!((r[0].generic_vs_off_per_cpu - 4.0).abs() < 1e-9);
        assert!(ratios(&summarise(&ms[..3])).is_empty());
        let mut with_pairs = ms.clone();
        with_pairs.push(m(Mode::WireGuard, 0, 1000, 225_000));
        let r = ratios(&summarise(&with_pairs));
        // 225 ns vs 180 ns per packet.
        assert!((r[0].wireguard_vs_reflector_per_cpu.unwrap() - 0.8).abs() < 1e-9);
    }

    #[test]
    fn line_rates_of_10_gbe() {
        // The classic figures: 14.88 Mpps of 64-byte frames, ~0.82 Mpps of 1500-byte IP packets.
        assert!((line_rate_pps(84) - 14_880_952.0).abs() < 1.0);
        assert_eq!(wire_bytes(1472), 1538);
        assert!((line_rate_pps(wire_bytes(1472)) - 812_743.0).abs() < 1.0);
        // Tiny payloads are padded to the minimum frame.
        assert_eq!(wire_bytes(8), 84);
    }

    #[test]
    fn extrapolation_uses_the_most_sessions_and_adds_the_flood() {
        let mut a = m(Mode::Native, 0, 1000, 500_000);
        a.sessions = 1000;
        let mut b = a.clone();
        b.payload = 1420;
        b.saturation.relay_cpu_ns = 600_000;
        let one = m(Mode::Native, 0, 1000, 5_000_000); // 1 session: ignored
        let e = extrapolate(&summarise(&[a, b, one]));
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].cpu_ns_per_packet, 500.0);
        assert_eq!(e[1].case, "1420-byte UDP payloads");
        let pps = line_rate_pps(wire_bytes(1420));
        assert!((e[1].cores - pps * 600e-9).abs() < 1e-9);
        assert!((e[2].cores - 14_880_952.38 * 500e-9).abs() < 1e-3);
    }
}
