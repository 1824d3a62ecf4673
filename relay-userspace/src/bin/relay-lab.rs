//! `relay-lab`: labs, the demo and benchmarks in network namespaces. Developer tooling run by
//! `cargo xtask`; needs root.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use relay_userspace::lab::xdp_bench::{self, BenchOptions};

#[derive(Parser)]
#[command(name = "relay-lab", about = "Relay labs, demo and benchmarks (root)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-packet cost of the XDP fast path vs a MAC-swap reflector (BPF_PROG_TEST_RUN).
    BenchXdp {
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Runs per program, case and round.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::BenchXdp {
            rounds,
            calls,
            json,
        } => {
            let options = BenchOptions { rounds, calls };
            let results = xdp_bench::run(options)?;
            println!(
                "{:<10} {:>10} {:>12} {:>10} {:>8}",
                "case", "relay ns", "reflector ns", "pass ns", "ratio"
            );
            for r in &results {
                println!(
                    "{:<10} {:>10.1} {:>12.1} {:>10.1} {:>7.2}x",
                    r.case, r.relay_ns, r.reflector_ns, r.pass_ns, r.ratio
                );
            }
            if let Some(path) = json {
                let doc = serde_json::json!({ "options": options, "results": results });
                fs::write(&path, serde_json::to_string_pretty(&doc)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
