//! `cargo xtask test`: setup, build-ebpf, then every suite. Host tests always run; the privileged
//! suites (test binaries named `privileged_*`: BPF_PROG_TEST_RUN, XDP attach, network-namespace
//! labs) run when root and are otherwise listed as "skipped: needs root". A short fuzz run of
//! every target comes last, so CI keeps the targets building and their seeds passing; its
//! closing line (`fuzz: N passed, N failed`) is the last line printed. As root, the packages
//! (`cargo xtask dist`, twice: a build and a second one to upgrade to) are built before the
//! privileged suites, whose install tests boot a fresh Debian and install them.

use std::process::Command;

use anyhow::Result;

use crate::{
    dist,
    ebpf::{self, Profile},
    fuzz,
    run::{clean_command, is_root, output, status},
    setup,
};

/// Seconds per fuzz target in the test run: a smoke test (every seed, a few hundred thousand
/// mutations each); `cargo xtask fuzz --seconds N` is for hunting.
const FUZZ_SMOKE_SECONDS: u32 = 10;

/// nextest filter selecting the privileged test binaries.
const PRIVILEGED: &str = "binary(/^privileged_/)";

fn nextest(filter: &str) -> Command {
    let mut cmd = clean_command("cargo");
    cmd.args([
        "nextest",
        "run",
        "--workspace",
        "--no-fail-fast",
        "-E",
        filter,
    ]);
    cmd
}

/// Runs every suite, then the fuzz smoke run.
pub fn run() -> Result<()> {
    setup::run()?;
    ebpf::build(Profile::Debug)?;
    test_suites()?;
    fuzz::run(FUZZ_SMOKE_SECONDS, &[])
}

fn test_suites() -> Result<()> {
    let host = format!("not {PRIVILEGED}");
    if is_root() {
        println!("== host tests");
        status(&mut nextest(&host))?;
        // The install tests boot a fresh Debian and install what operators install: the
        // packages of this tree, and a second build of them to upgrade to.
        println!("== packages for the install tests");
        dist::run(1)?;
        dist::run(2)?;
        println!("== privileged tests (root)");
        status(&mut nextest(PRIVILEGED))
    } else {
        let listed = output(clean_command("cargo").args([
            "nextest",
            "list",
            "--workspace",
            "--message-format",
            "oneline",
            "-E",
            PRIVILEGED,
        ]))
        .unwrap_or_default();
        let names: Vec<&str> = listed.lines().filter(|l| !l.trim().is_empty()).collect();
        println!(
            "== privileged tests: skipped: needs root ({} tests not run)",
            names.len()
        );
        for name in &names {
            println!("skipped: needs root: {name}");
        }
        println!("== host tests");
        status(&mut nextest(&host))
    }
}
