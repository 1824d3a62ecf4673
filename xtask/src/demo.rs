//! `cargo xtask demo`: the README's first command. Builds everything in release mode (after
//! `setup` on a fresh machine) and runs `relay-lab demo` in the NAT lab.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    ebpf::{self, Profile},
    run::{clean_command, is_root, status, workspace_root},
    setup,
};

/// Runs the demo (or removes a kept lab with `down`).
pub fn run(keep: bool, down: bool, turn: bool, seconds: u32) -> Result<()> {
    if !is_root() {
        bail!("the demo builds network namespaces and attaches XDP programs: run it as root");
    }
    setup::run()?;
    ebpf::build(Profile::Release)?;
    status(clean_command("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "relay-userspace",
        "-p",
        "relay-lab",
        "--bins",
    ]))?;
    let lab = workspace_root().join("target/release/relay-lab");
    let mut cmd = Command::new(lab);
    if down {
        cmd.arg("down");
    } else {
        cmd.args(["demo", "--seconds", &seconds.to_string()]);
        if keep {
            cmd.arg("--keep");
        }
        if turn {
            cmd.arg("--turn");
        }
    }
    status(&mut cmd)
}
