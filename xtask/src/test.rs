//! `cargo xtask test`: setup, build-ebpf, then every suite. Host tests always run; the privileged
//! suites (test binaries named `privileged_*`: BPF_PROG_TEST_RUN, XDP attach, network-namespace
//! labs) run when root and are otherwise listed as "skipped: needs root". The last line printed is
//! the test runner's summary.

use std::process::Command;

use anyhow::Result;

use crate::{
    ebpf::{self, Profile},
    run::{clean_command, is_root, output, status},
    setup,
};

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

/// Runs every suite.
pub fn run() -> Result<()> {
    setup::run()?;
    ebpf::build(Profile::Debug)?;
    let host = format!("not {PRIVILEGED}");
    if is_root() {
        println!("== host tests");
        status(&mut nextest(&host))?;
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
