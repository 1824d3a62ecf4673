//! `relay-lab`: labs, the demo and benchmarks in network namespaces. Developer tooling run by
//! `cargo xtask`; needs root.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::{Arc, atomic::AtomicBool};

use relay_lab::{
    control_bench::{self, ControlBenchOptions},
    demo::{self, DemoOptions},
    load::{self, LoadOptions},
    nat_lab,
    throughput::{self, ThroughputOptions, report},
    turn_bench::{self, TurnBenchOptions},
    turn_stream_bench::{self, StreamBenchOptions},
    wireguard_bench::{self, WgBenchOptions},
    xdp_bench::{self, BenchOptions},
};

#[derive(Parser)]
#[command(name = "relay-lab", about = "Relay labs, demo and benchmarks (root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two WireGuard peers behind NATs talk through the relay's kernel fast path.
    Demo {
        /// Seconds of iperf3 traffic.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Leave the lab running and print how to poke at it.
        #[arg(long)]
        keep: bool,
        /// The TURN front instead: coturn's client and two Chromium pages relay through it.
        #[arg(long, conflicts_with = "keep")]
        turn: bool,
    },
    /// Remove kept labs (and anything a killed run left behind).
    Down,
    /// Per-packet cost of the XDP fast path vs a MAC-swap reflector (BPF_PROG_TEST_RUN).
    BenchXdp {
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Runs per program, case and round.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Live sessions to time the session path with, comma-separated (one table grown to
        /// each size in turn); the flag without a value skips it.
        #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,1000,100000,1000000")]
        table_sizes: Vec<u32>,
        /// Live TURN allocations to time ChannelData (client → peer) with, comma-separated (one
        /// table grown to each size in turn); the flag without a value skips it.
        #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "1,1000,16384")]
        turn_table_sizes: Vec<u32>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Relayed packets/s and relay CPU per packet through the lab's relay host: XDP native,
    /// generic, off (userspace forwarder) and a MAC-swap reflector, interleaved.
    BenchThroughput {
        /// A few seconds, one size, a few sessions: checks the harness.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per pass (default 1; 0.25 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Only these modes (native, wireguard, generic, off, reflector), comma-separated: a profiling
        /// run; the ratios need native, generic, off and reflector.
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        /// UDP payload sizes, comma-separated (default 64,512,1420).
        #[arg(long, value_delimiter = ',')]
        payloads: Option<Vec<usize>>,
        /// Session counts, comma-separated (default 1,1000).
        #[arg(long, value_delimiter = ',')]
        sessions: Option<Vec<usize>>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TURN relayed packets/s and relay CPU per packet: the TURN front with XDP native and
    /// with XDP off, against coturn, interleaved.
    BenchTurn {
        /// A few seconds, one size, a few allocations: checks the harness.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per pass (default 1; 0.25 with --quick).
        #[arg(long)]
        seconds: Option<f64>,
        /// Allocation counts to measure, comma-separated (default 1,500; 4 with --quick).
        #[arg(long, value_delimiter = ',')]
        allocations: Option<Vec<usize>>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// TURN over TCP and TLS: messages per server CPU-second and loss at a ladder of loads,
    /// the relay against coturn.
    BenchTurnStreams {
        /// Two connections, two loads, half a second each: checks the harness.
        #[arg(long)]
        quick: bool,
        /// Rounds (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Offered loads, messages per second over all connections, comma-separated.
        #[arg(long, value_delimiter = ',')]
        loads: Option<Vec<u32>>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Stock WireGuard (wireguard-go, iperf3) direct, through the WireGuard front with no
    /// client software, and through sidecars, interleaved.
    BenchWireguard {
        /// One short round: checks the harness.
        #[arg(long)]
        quick: bool,
        /// Interleaved rounds (default 3).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds of iperf3 per path and round (default 5; 2 with --quick).
        #[arg(long)]
        seconds: Option<u32>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The relay as a service holding crowds under its shipped configuration and unit limits:
    /// a crowd of TURN clients behind one NAT (against coturn), the configured maxima at once,
    /// churn, floods.
    BenchLoad {
        /// A small run of each part: checks the harness.
        #[arg(long)]
        quick: bool,
        /// Clients of the crowd (default 2000; 150 with --quick).
        #[arg(long)]
        clients: Option<usize>,
        /// Skip coturn.
        #[arg(long)]
        no_coturn: bool,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Control-plane throughput and memory: API allocations/s, binds/s, bytes per session,
    /// time to fill the relay.
    BenchControl {
        /// Seconds of API load.
        #[arg(long, default_value_t = 5.0)]
        alloc_seconds: f64,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Bind handshakes timed.
        #[arg(long, default_value_t = 50_000)]
        binds: usize,
        /// Sessions to fill the relay with.
        #[arg(long, default_value_t = 1_000_000)]
        fill: u32,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_json(path: Option<PathBuf>, doc: serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    relay_userspace::logging::init("warn", relay_userspace::config::LogFormat::Text);
    match Cli::parse().command {
        Command::Demo {
            seconds,
            keep,
            turn,
        } => {
            let interrupted = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, interrupted.clone())?;
            }
            if turn {
                return demo::run_turn(relay_lab::relay_bin()?, interrupted);
            }
            demo::run(
                DemoOptions {
                    relay_bin: relay_lab::relay_bin()?,
                    seconds,
                    keep,
                },
                interrupted,
            )
        }
        Command::Down => {
            let removed = nat_lab::remove_stale_labs();
            println!("removed {} lab namespaces", removed.len());
            Ok(())
        }
        Command::BenchXdp {
            rounds,
            calls,
            table_sizes,
            turn_table_sizes,
            json,
        } => {
            let options = BenchOptions { rounds, calls };
            let results = xdp_bench::run(options)?;
            let tables = xdp_bench::run_table_sizes(options, &table_sizes, &turn_table_sizes)?;
            println!(
                "{:<24} {:>10} {:>12} {:>10} {:>8}",
                "case", "relay ns", "reflector ns", "pass ns", "ratio"
            );
            for r in &results {
                println!(
                    "{:<24} {:>10.1} {:>12.1} {:>10.1} {:>7.2}x",
                    r.case, r.relay_ns, r.reflector_ns, r.pass_ns, r.ratio
                );
            }
            println!(
                "\n{:<8} {:>10} {:>10} {:>12} {:>10}",
                "front", "records", "relay ns", "reflector ns", "pass ns"
            );
            for t in &tables {
                println!(
                    "{:<8} {:>10} {:>10.1} {:>12.1} {:>10.1}",
                    t.front, t.records, t.relay_ns, t.reflector_ns, t.pass_ns
                );
            }
            write_json(
                json,
                serde_json::json!({ "options": options, "results": results, "table_sizes": tables }),
            )
        }
        Command::BenchThroughput {
            quick,
            rounds,
            seconds,
            modes,
            payloads,
            sessions,
            json,
        } => {
            let mut options = if quick {
                ThroughputOptions::quick(relay_lab::relay_bin()?)
            } else {
                ThroughputOptions::full(relay_lab::relay_bin()?)
            };
            options.rounds = rounds.unwrap_or(options.rounds);
            options.seconds = seconds.unwrap_or(options.seconds);
            options.payloads = payloads.unwrap_or(options.payloads);
            options.sessions = sessions.unwrap_or(options.sessions);
            if let Some(modes) = modes {
                options.modes = modes
                    .iter()
                    .map(|name| {
                        report::Mode::ALL
                            .into_iter()
                            .find(|m| m.name() == name)
                            .with_context(|| {
                                format!(
                                    "no mode `{name}`: native, wireguard, generic, off or reflector"
                                )
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            let r = throughput::run(options)?;
            print!("{}", report::table(&r.summaries));
            for x in &r.ratios {
                println!(
                    "{} B x {} sessions: native/reflector {:.2} pps, {:.2} per CPU; native/off {:.1}x per CPU; generic/off {:.1}x",
                    x.payload,
                    x.sessions,
                    x.native_vs_reflector_pps,
                    x.native_vs_reflector_per_cpu,
                    x.native_vs_off_per_cpu,
                    x.generic_vs_off_per_cpu
                );
            }
            write_json(json, serde_json::to_value(&r)?)
        }
        Command::BenchWireguard {
            quick,
            rounds,
            seconds,
            json,
        } => {
            let options = WgBenchOptions {
                relay_bin: relay_lab::relay_bin()?,
                rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
                seconds: seconds.unwrap_or(if quick { 2 } else { 5 }),
            };
            let r = wireguard_bench::run(options)?;
            for p in &r.paths {
                println!("{:<12} median {:>8.0} Mbit/s", p.path, p.median_mbit_per_s);
            }
            println!(
                "no-software / direct {:.2} (target ≥ {}), sidecars / direct {:.2}, detour / direct {:.2}, no-software / detour {:.2}, kernel share {:.4}",
                r.no_software_vs_direct,
                r.target,
                r.sidecars_vs_direct,
                r.detour_vs_direct,
                r.no_software_vs_detour,
                r.no_software_kernel_share
            );
            write_json(json, serde_json::to_value(&r)?)
        }
        Command::BenchTurn {
            quick,
            rounds,
            seconds,
            allocations,
            json,
        } => {
            let mut options = if quick {
                TurnBenchOptions::quick(relay_lab::relay_bin()?)
            } else {
                TurnBenchOptions::full(relay_lab::relay_bin()?)
            };
            options.rounds = rounds.unwrap_or(options.rounds);
            options.seconds = seconds.unwrap_or(options.seconds);
            options.allocations = allocations.unwrap_or(options.allocations);
            let r = turn_bench::run(options)?;
            print!("{}", report::table(&r.summaries));
            for x in &r.ratios {
                println!(
                    "{} B x {} allocations: native/coturn {:.1}x per CPU, {:.1}x pps; userspace/coturn {:.2}x per CPU",
                    x.payload,
                    x.allocations,
                    x.native_vs_coturn_per_cpu,
                    x.native_vs_coturn_pps,
                    x.userspace_vs_coturn_per_cpu
                );
            }
            write_json(json, serde_json::to_value(&r)?)
        }
        Command::BenchTurnStreams {
            quick,
            rounds,
            loads,
            json,
        } => {
            let mut options = if quick {
                StreamBenchOptions::quick(relay_lab::relay_bin()?)
            } else {
                StreamBenchOptions::full(relay_lab::relay_bin()?)
            };
            options.rounds = rounds.unwrap_or(options.rounds);
            options.loads = loads.unwrap_or(options.loads);
            let r = turn_stream_bench::run(options)?;
            for s in &r.summaries {
                println!(
                    "{} over {}: best loss-free load {:?}/s, {:.0} messages per CPU-second there; loss {:.2} % at {}/s",
                    s.server.name(),
                    s.transport.name(),
                    s.best_lossless,
                    s.per_cpu_at_best.unwrap_or(0.0),
                    s.loss_at_most * 100.0,
                    s.most_offered
                );
            }
            for x in &r.ratios {
                println!(
                    "{}: relay / coturn {:.2}x per CPU-second (target {}), loss-free wherever coturn is: {}",
                    x.transport.name(),
                    x.relay_vs_coturn_per_cpu.unwrap_or(0.0),
                    r.target,
                    x.lossless_where_coturn_is
                );
            }
            write_json(json, serde_json::to_value(&r)?)
        }
        Command::BenchLoad {
            quick,
            clients,
            no_coturn,
            json,
        } => {
            let mut options = if quick {
                LoadOptions::quick(relay_lab::relay_bin()?)
            } else {
                LoadOptions::full(relay_lab::relay_bin()?)
            };
            options.crowd_clients = clients.unwrap_or(options.crowd_clients);
            options.coturn &= !no_coturn;
            let r = load::run(options)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            write_json(json, serde_json::to_value(&r)?)
        }
        Command::BenchControl {
            alloc_seconds,
            concurrency,
            binds,
            fill,
            json,
        } => {
            let options = ControlBenchOptions {
                alloc_seconds,
                concurrency,
                binds,
                fill,
            };
            let r = control_bench::run(options)?;
            println!(
                "allocations/s through the API: {:.0} ({} errors)",
                r.allocations_per_sec, r.api_errors
            );
            println!("binds/s (relay side):          {:.0}", r.binds_per_sec);
            println!(
                "fast-path map bytes/session:   {:.0}",
                r.fast_path_bytes_per_session
            );
            println!(
                "control map bytes/session:     {:.0}",
                r.control_bytes_per_session
            );
            println!(
                "daemon heap bytes/session:     {:.0}",
                r.heap_bytes_per_session
            );
            println!(
                "fill {} sessions:          {:.2} s",
                r.fill_sessions, r.fill_seconds
            );
            for (map, bytes) in &r.maps {
                println!("  {map:<14} {bytes:>8.1} bytes/slot");
            }
            write_json(
                json,
                serde_json::json!({ "options": options, "results": r }),
            )
        }
    }
}
