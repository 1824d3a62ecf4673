//! `cargo xtask …`: the project's workflows as code.
//!
//! * `setup` installs and checks what building and testing need (idempotent).
//! * `build-ebpf` builds and checks the XDP object.
//! * `test` runs setup, build-ebpf and every test suite (the README's and CI's test command).
//! * `demo` runs the NAT lab demo (the README's first command).
//! * `bench` runs the benchmarks and regenerates `docs/benchmarks.md`.
//! * `fuzz` builds the cargo-fuzz targets and runs each for a bounded time.
//! * `dist` builds what operators install: a .deb, a portable tarball and an OCI image.

mod bench;
mod demo;
mod dist;
mod ebpf;
mod fuzz;
mod load_report;
mod plot;
mod run;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Relay developer workflows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and check the toolchain pieces, packages and bpffs the build and tests need.
    Setup,
    /// Build the XDP object (nightly, build-std, bpf-linker) and check its ELF sections.
    BuildEbpf {
        /// Build the release profile (what release builds of the relay embed).
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build-ebpf, every test suite (privileged ones need root), then a short fuzz run.
    Test,
    /// The NAT lab: two WireGuard peers behind NATs talk through the relay (root).
    Demo {
        /// Leave the lab running and print how to poke at it.
        #[arg(long)]
        keep: bool,
        /// Remove a lab left by --keep.
        #[arg(long, conflicts_with = "keep")]
        down: bool,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// The TURN front: coturn's client and two Chromium pages relay through it.
        #[arg(long, conflicts_with_all = ["keep", "down"])]
        turn: bool,
    },
    /// Release builds, every benchmark, and docs/benchmarks.md regenerated (root).
    Bench {
        /// A few seconds' smoke run that checks the harness; leaves docs alone.
        #[arg(long)]
        quick: bool,
        /// Run (and update the docs of) only these benchmarks: xdp-micro, throughput, turn,
        /// control-plane, hot-paths.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Rewrite the docs from the last results under target/bench without running anything
        /// (after a change to how results are presented).
        #[arg(long, conflicts_with = "quick")]
        render: bool,
    },
    /// Build the fuzz targets (nightly, libFuzzer) and run each for a bounded time; fails on any
    /// crash. Writes target/fuzz-summary.json.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u32,
        /// Run only these targets (file names under fuzz/fuzz_targets/); default all.
        #[arg(long = "target", value_delimiter = ',')]
        targets: Vec<String>,
    },
    /// The static release binary, a .deb, a portable tarball and an OCI image in target/dist/.
    Dist {
        /// The package revision: VERSION-REVISION (a second build of the same sources is -2).
        #[arg(long, default_value_t = 1)]
        revision: u32,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::BuildEbpf { release } => ebpf::build(ebpf::profile(release)).map(|_| ()),
        Command::Test => test::run(),
        Command::Bench {
            quick,
            only,
            render,
        } => bench::run(quick, render, &only),
        Command::Fuzz { seconds, targets } => fuzz::run(seconds, &targets),
        Command::Dist { revision } => dist::run(revision),
        Command::Demo {
            keep,
            down,
            seconds,
            turn,
        } => demo::run(keep, down, turn, seconds),
    }
}
