//! `cargo xtask setup`: everything the build and the tests need, checked and installed
//! idempotently. Each step prints what it found and what it did; a step that cannot be done is an
//! error that says how to do it by hand.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::run::{clean_command, is_root, output, status};

/// bpf-linker release that dlopens the nightly toolchain's own LLVM (newer releases need a
/// system LLVM this Debian lacks).
pub const BPF_LINKER_VERSION: &str = "0.10.4";

/// The nightly toolchain that builds the XDP object and the fuzz targets.
pub const NIGHTLY: &str = "nightly";

/// cargo-fuzz release (`cargo xtask fuzz`); builds with the stable toolchain the README asks for.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Debian packages the tests, lab and demo use, with what for.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "network namespaces, veth pairs, routes (ip)"),
    ("nftables", "the lab's NATs (nft)"),
    ("bpftool", "inspecting programs and bpf_stats"),
    ("ethtool", "checksum offload and NIC queue settings"),
    ("conntrack", "flushing NAT mappings in the lab"),
    ("wireguard-go", "real WireGuard over the relay in the lab"),
    ("wireguard-tools", "configuring WireGuard (wg)"),
    ("iperf3", "throughput through the relay"),
    ("iputils-ping", "ping through the tunnel in the lab"),
    ("tmux", "driving `relay top` in a terminal in its tests"),
    ("shellcheck", "linting the deploy scripts in the tests"),
    ("tcpdump", "packet captures while debugging the lab"),
    ("procps", "sysctl"),
    (
        "coturn",
        "coturn's TURN test client and echo peer (turnutils_uclient, turnutils_peer), and coturn \
         itself as the TURN benchmark's baseline",
    ),
    (
        "chromium",
        "headless WebRTC peers relaying through the TURN front",
    ),
    (
        "python3-venv",
        "the lab's Python environment (aioice, the Chromium driver)",
    ),
    ("python3-pip", "installing the lab's Python packages"),
    (
        "musl-tools",
        "the C compiler for the static (musl) relay that the packages ship (ring's C code)",
    ),
    (
        "debootstrap",
        "the fresh Debian the package and tarball install tests boot",
    ),
    (
        "systemd-container",
        "systemd-nspawn: booting that Debian with systemd as PID 1",
    ),
    (
        "umoci",
        "reading back the OCI image `cargo xtask dist` writes",
    ),
];

/// The lab's Python environment (under target/, created by setup): real TURN and WebRTC
/// clients the tests drive.
pub const LAB_VENV: &str = "target/lab-venv";

/// PyPI packages of the lab's environment, pinned.
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("aioice", "0.10.1"),
    ("websockets", "15.0.1"),
    // Validates deploy/kubernetes offline against its bundled Kubernetes schemas.
    ("kubernetes-validate", "1.31.0"),
];

/// Runs every setup step.
pub fn run() -> Result<()> {
    println!("== setup");
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_nextest()?;
    cargo_fuzz()?;
    musl_target()?;
    cargo_deb()?;
    boringtun_cli()?;
    debian_packages()?;
    python_venv()?;
    kubectl();
    bpffs()?;
    kernel_btf();
    println!("== setup done");
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        println!("nightly toolchain: missing, installing");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    } else {
        println!("nightly toolchain: found");
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("nightly rust-src: found");
    } else {
        println!("nightly rust-src: missing, installing");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    pinned_cargo_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        Command::new("bpf-linker").arg("--version"),
    )
}

/// Installs `krate` at exactly `version` with `cargo install` unless `probe` (its `--version`)
/// already reports that version.
fn pinned_cargo_tool(krate: &str, version: &str, probe: &mut Command) -> Result<()> {
    match output(probe).as_deref().map(str::trim) {
        Some(v) if v.ends_with(version) => {
            println!("{krate}: found {v}");
            return Ok(());
        }
        Some(v) => println!("{krate}: found {v}, want {version}; reinstalling"),
        None => println!("{krate}: missing, installing {version} (a few minutes)"),
    }
    status(clean_command("cargo").args([
        "install",
        krate,
        "--version",
        version,
        "--locked",
        "--force",
    ]))
}

fn cargo_nextest() -> Result<()> {
    if let Some(v) = output(Command::new("cargo").args(["nextest", "--version"])) {
        println!(
            "cargo-nextest: found {}",
            v.lines().next().unwrap_or("").trim()
        );
        return Ok(());
    }
    println!("cargo-nextest: missing, installing");
    status(clean_command("cargo").args(["install", "cargo-nextest", "--locked"]))
}

/// Any installed cargo-fuzz will do (its flags have been stable across releases); a missing one
/// is installed at the pinned version.
fn cargo_fuzz() -> Result<()> {
    if let Some(v) = output(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("cargo-fuzz: found {}", v.trim());
        return Ok(());
    }
    println!("cargo-fuzz: missing, installing {CARGO_FUZZ_VERSION}");
    status(clean_command("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// The target of the static binary the packages ship (`cargo xtask dist`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// cargo-deb release that builds the .deb (`cargo xtask dist`).
const CARGO_DEB_VERSION: &str = "3.6.2";
/// boringtun-cli, pinned like the other tools (`--version` prints "boringtun 0.6.0").
const BORINGTUN_CLI_VERSION: &str = "0.6.0";

fn musl_target() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        println!("rust target {MUSL_TARGET}: found");
        return Ok(());
    }
    println!("rust target {MUSL_TARGET}: missing, installing");
    status(Command::new("rustup").args(["target", "add", MUSL_TARGET]))
}

/// boringtun, the second WireGuard implementation the lab tests the WireGuard front with (its
/// timers differ from wireguard-go's; Debian does not package it).
fn boringtun_cli() -> Result<()> {
    pinned_cargo_tool(
        "boringtun-cli",
        BORINGTUN_CLI_VERSION,
        Command::new("boringtun-cli").arg("--version"),
    )
}

fn cargo_deb() -> Result<()> {
    pinned_cargo_tool(
        "cargo-deb",
        CARGO_DEB_VERSION,
        Command::new("cargo").args(["deb", "--version"]),
    )
}

/// kubectl renders deploy/kubernetes in its test (`kubectl kustomize`, offline). Debian does not
/// package it; these machines have it. Missing, the test fails and says so.
fn kubectl() {
    match output(Command::new("kubectl").args(["version", "--client"])) {
        Some(v) => println!("kubectl: found ({})", v.lines().next().unwrap_or("").trim()),
        None => println!(
            "kubectl: MISSING — the Kubernetes manifests' test will fail; install kubectl \
             (https://kubernetes.io/docs/tasks/tools/)"
        ),
    }
}

fn is_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(p, _)| !is_installed(p))
        .map(|(p, _)| *p)
        .collect();
    for (package, why) in PACKAGES {
        if !missing.contains(package) {
            println!("package {package}: found ({why})");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}\ninstall them as root: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("packages missing: {}; installing", missing.join(" "));
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        status(&mut cmd)
    };
    if install().is_err() {
        // Stale package lists are the usual cause: refresh once and retry.
        status(Command::new("apt-get").args(["update"]))?;
        install()?;
    }
    Ok(())
}

/// Creates the lab's venv and installs the pinned packages missing from it.
fn python_venv() -> Result<()> {
    let root = crate::run::workspace_root();
    let venv = root.join(LAB_VENV);
    let python = venv.join("bin/python");
    if !python.exists() {
        println!("python venv: missing, creating {}", venv.display());
        status(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )?;
    }
    let installed = output(Command::new(&python).args(["-m", "pip", "freeze"])).unwrap_or_default();
    let missing: Vec<String> = PYTHON_PACKAGES
        .iter()
        .map(|(p, v)| format!("{p}=={v}"))
        .filter(|want| {
            !installed
                .lines()
                .any(|l| l.trim().eq_ignore_ascii_case(want))
        })
        .collect();
    if missing.is_empty() {
        println!(
            "python venv: {} ({})",
            venv.display(),
            PYTHON_PACKAGES
                .iter()
                .map(|(p, v)| format!("{p} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    println!("python venv: installing {}", missing.join(" "));
    status(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .args(&missing),
    )
}

fn bpffs() -> Result<()> {
    const ROOT: &str = "/sys/fs/bpf";
    let mounted = output(Command::new("stat").args(["-f", "-c", "%T", ROOT]))
        .is_some_and(|t| t.trim() == "bpf_fs");
    if mounted {
        println!("bpffs: mounted at {ROOT}");
        return Ok(());
    }
    if !is_root() {
        println!("bpffs: not mounted at {ROOT}; the relay mounts it when run as root");
        return Ok(());
    }
    std::fs::create_dir_all(ROOT).with_context(|| format!("creating {ROOT}"))?;
    status(Command::new("mount").args(["-t", "bpf", "bpf", ROOT]))?;
    println!("bpffs: mounted at {ROOT}");
    Ok(())
}

fn kernel_btf() {
    let release = output(Command::new("uname").arg("-r")).unwrap_or_default();
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        println!("kernel: {} with BTF", release.trim());
    } else {
        println!(
            "kernel: {} WITHOUT BTF (/sys/kernel/btf/vmlinux missing): the relay needs a kernel \
             built with CONFIG_DEBUG_INFO_BTF",
            release.trim()
        );
    }
}
