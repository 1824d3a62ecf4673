//! Embeds the XDP object built by `cargo xtask build-ebpf`.
//!
//! The object is built separately (nightly, `-Z build-std=core`, bpf-linker), so a plain
//! `cargo build` cannot make it; instead this script finds it and fails with the command to run
//! when it is missing. `RELAY_EBPF_OBJECT` overrides the path.

use std::{env, path::PathBuf};

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
    println!("cargo:rustc-env=RELAY_EBPF_OBJECT={}", path.display());
}
