//! Embeds the lab's XDP object (load generator, counting sink, reflector: `relay-ebpf`'s
//! `lab-xdp`), which `cargo xtask build-ebpf` builds in the same run as the relay's.
//! `RELAY_LAB_EBPF_OBJECT` overrides the path.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=RELAY_LAB_EBPF_OBJECT");
    let profile = env::var("PROFILE").unwrap_or_else(|_| "debug".into());
    let path = match env::var_os("RELAY_LAB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap())
            .parent()
            .unwrap()
            .join("target/ebpf/bpfel-unknown-none")
            .join(&profile)
            .join("lab-xdp"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        panic!(
            "\n\nThe lab's XDP object is missing: {}\nRun `cargo xtask build-ebpf{flag}` first.\n\n",
            path.display()
        );
    }
    println!("cargo:rustc-env=RELAY_LAB_EBPF_OBJECT={}", path.display());
}
