//! Embeds the relay's XDP object built by `cargo xtask build-ebpf` (the lab's object, built in
//! the same run, is embedded by relay-lab's build script).
//!
//! The object is built separately (nightly, `-Z build-std=core`, bpf-linker), so a plain
//! `cargo build` cannot make it; instead this script finds it and fails with the command to run
//! when it is missing. `RELAY_EBPF_OBJECT` overrides the path.

use sha2::Digest as _;
use std::{
    env,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// The newest modification time of the files under `dir` (recursively).
fn newest(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().ok()?.modified().ok().map(|t| (t, path))
        };
        if let Some(c) = candidate
            && best.as_ref().is_none_or(|b| c.0 > b.0)
        {
            best = Some(c);
        }
    }
    best
}

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_EBPF_OBJECT");
    let profile = env::var("PROFILE").unwrap_or_else(|_| "debug".into());
    let path = match env::var_os("RELAY_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest
                .parent()
                .unwrap()
                .join("target/ebpf/bpfel-unknown-none")
                .join(&profile)
                .join("relay-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        panic!(
            "\n\nThe XDP object is missing: {}\nRun `cargo xtask build-ebpf{flag}` first \
             (or `cargo xtask setup` on a fresh machine).\n\n",
            path.display()
        );
    }
    // The object embeds relay-common's layouts (map sizes, reasons): refuse one older than its
    // sources, or userspace and kernel would disagree about the maps. `build-ebpf` builds both
    // objects in one cargo run, which relinks only the one whose sources changed: the newer of
    // the two tells when that run was.
    if env::var_os("RELAY_EBPF_OBJECT").is_none() {
        let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let built = modified(&path).max(modified(&path.with_file_name("lab-xdp")));
        for dir in ["relay-common/src", "relay-ebpf/src"] {
            let dir = manifest.parent().unwrap().join(dir);
            println!("cargo:rerun-if-changed={}", dir.display());
            if let (Some(built), Some((changed, file))) = (built, newest(&dir))
                && changed > built
            {
                let flag = if profile == "release" {
                    " --release"
                } else {
                    ""
                };
                panic!(
                    "\n\nThe XDP object {} is older than {}.\nRun `cargo xtask build-ebpf{flag}` \
                     to rebuild it.\n\n",
                    path.display(),
                    file.display()
                );
            }
        }
    }
    println!("cargo:rustc-env=RELAY_EBPF_OBJECT={}", path.display());
    // The build's identity: a restarted daemon swaps the attached program only when it differs.
    let digest = sha2::Sha256::digest(std::fs::read(&path).expect("reading the XDP object"));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=RELAY_EBPF_SHA256={hex}");
    println!("cargo:rustc-env=RELAY_GIT_COMMIT={}", git_commit());
}

/// The commit this build is from, for `relay --version`: `RELAY_GIT_COMMIT` when set (`cargo
/// xtask dist` sets it, with "-dirty" for uncommitted changes; a build from a source tarball has
/// no .git), else what `git` says, else "unknown".
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=RELAY_GIT_COMMIT");
    if let Ok(commit) = env::var("RELAY_GIT_COMMIT") {
        return commit;
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let git = manifest.parent().unwrap().join(".git");
    // HEAD names a branch whose ref file (or packed-refs) moves on each commit.
    for file in ["HEAD", "packed-refs"] {
        println!("cargo:rerun-if-changed={}", git.join(file).display());
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git.join(branch).display());
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&manifest)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
