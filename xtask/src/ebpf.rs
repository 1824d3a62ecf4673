//! `cargo xtask build-ebpf`: builds the XDP object with nightly, `-Z build-std=core` and
//! bpf-linker (with BTF), then checks the ELF really has the programs, maps and BTF the loader
//! needs, so a broken build fails here rather than at load time.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSymbol};
use sha2::{Digest, Sha256};

use crate::{
    run::{clean_command, status, workspace_root},
    setup::NIGHTLY,
};

/// The BPF target triple.
pub const TARGET: &str = "bpfel-unknown-none";
/// Programs the relay object must contain.
const PROGRAMS: &[&str] = &["relay_xdp", "relay_turn", "xdp_pass", "clock_probe"];
/// Maps the object must contain (names from relay-common's `maps`, `turn` and `wireguard`
/// modules).
const MAPS: &[&str] = &[
    "session_slots",
    "sessions",
    "session_stats",
    "user_stats",
    "verdicts",
    "user_verdicts",
    "relay_config",
    "redirect_ifs",
    "nexthop_cache",
    "session_meta",
    "log_gate",
    "build_info",
    "fleet_state",
    "port_owners",
    "turn_slots",
    "turn_alloc_meta",
    "turn_channels",
    "turn_peers",
    "turn_perms",
    "turn_stats",
    "turn_user_stats",
    "turn_keys",
    "front_programs",
    "fib_request",
    "turn_scratch",
    "wg_slots",
];
/// Programs and maps of the benchmark lab's object (names from relay-common's `bench` module).
const LAB_PROGRAMS: &[&str] = &["bench_gen", "bench_sink", "reflector"];
const LAB_MAPS: &[&str] = &[
    "bench_templates",
    "bench_gen_config",
    "bench_gen_cursor",
    "bench_sink_counts",
];

/// Cargo profile of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Embedded by debug builds of the relay (tests).
    Debug,
    /// Embedded by release builds (benchmarks, deployment).
    Release,
}

/// The profile for a `--release` flag.
pub fn profile(release: bool) -> Profile {
    if release {
        Profile::Release
    } else {
        Profile::Debug
    }
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Where the relay object of `profile` is written (relay-userspace's build script looks there).
pub fn object_path(profile: Profile) -> PathBuf {
    object_dir(profile).join("relay-ebpf")
}

/// Where the benchmark lab's object is written.
pub fn lab_object_path(profile: Profile) -> PathBuf {
    object_dir(profile).join("lab-xdp")
}

fn object_dir(profile: Profile) -> PathBuf {
    workspace_root()
        .join("target/ebpf")
        .join(TARGET)
        .join(profile.dir())
}

/// Builds and checks both objects; returns the relay object's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let root = workspace_root();
    println!("== build-ebpf ({})", profile.dir());
    let home = std::env::var("HOME").unwrap_or_default();
    // BTF for the loader; path remapping so the object does not depend on where it was built.
    let rustflags = [
        "-C debuginfo=2".to_string(),
        "-C link-arg=--btf".to_string(),
        format!("--remap-path-prefix={}=/relay", root.display()),
        format!("--remap-path-prefix={home}/.cargo=/cargo"),
        format!("--remap-path-prefix={home}/.rustup=/rustup"),
    ]
    .join(" ");
    let mut cmd = clean_command("rustup");
    cmd.args(["run", NIGHTLY, "cargo", "build", "--locked"])
        .args(["-Z", "build-std=core", "--target", TARGET])
        .arg("--manifest-path")
        .arg(root.join("relay-ebpf/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("target/ebpf"))
        .env("RUSTFLAGS", rustflags);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    status(&mut cmd).context(
        "building the XDP object failed; `cargo xtask setup` installs nightly rust-src and \
         bpf-linker",
    )?;
    let path = object_path(profile);
    check(&path, PROGRAMS, MAPS)?;
    check(&lab_object_path(profile), LAB_PROGRAMS, LAB_MAPS)?;
    Ok(path)
}

/// Checks the ELF: program section and symbols, every map, BTF. Prints path, size and digest.
pub fn check(path: &PathBuf, programs: &[&str], maps: &[&str]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*bytes).context("parsing the XDP object as ELF")?;
    let section = |name: &str| file.section_by_name(name);
    if section("xdp").is_none() {
        bail!("{}: no `xdp` program section", path.display());
    }
    if section("maps").is_none() {
        bail!("{}: no `maps` section", path.display());
    }
    if section(".BTF").is_none() || section(".BTF.ext").is_none() {
        bail!(
            "{}: no BTF (.BTF/.BTF.ext); is bpf-linker run with --btf?",
            path.display()
        );
    }
    let symbols: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for wanted in programs.iter().chain(maps) {
        if !symbols.iter().any(|s| s == wanted) {
            bail!("{}: symbol `{wanted}` missing", path.display());
        }
    }
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "XDP object: {} ({} bytes, sha256 {hex})\n  programs: {}\n  maps: {}\n  BTF: yes",
        path.display(),
        bytes.len(),
        programs.join(", "),
        maps.join(", ")
    );
    Ok(())
}
