//! Everything in deploy/ that can be checked without root: the systemd unit verifies cleanly,
//! the scripts (the packages' too) pass shellcheck, the sysctls and the
//! cloud-init user-data are well-formed.

#[path = "common/process.rs"]
mod process;

use std::{path::PathBuf, process::Command};

use process::{relay_path, run_ok};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(file)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn systemd_unit_verifies_without_a_single_warning() {
    let unit = std::fs::read_to_string(deploy("relay.service")).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN",
        "ReadWritePaths=-/sys/fs/bpf/relay",
        "Restart=on-failure",
        // Far more than systemd's default soft limit of 1024: the defaults need ~57 000.
        "LimitNOFILE=1048576",
    ] {
        assert!(unit.contains(needed), "{needed} missing");
    }
    // Point it at the binary this test built (verify checks that ExecStart exists).
    let dir = tmp("unit");
    let path = dir.join("relay.service");
    std::fs::write(&path, unit.replace("/usr/bin/relay", &relay_path())).unwrap();
    // systemd-analyze verify prints warnings yet exits 0: require silence.
    let verify = |path: &PathBuf| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_string())
    };
    let (ok, text) = verify(&path);
    assert!(ok && text.is_empty(), "systemd-analyze verify: {text}");
    // And it does catch mistakes.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("Type=notify", "Type=notifyy"),
    )
    .unwrap();
    let (_, text) = verify(&path);
    assert!(text.contains("notifyy"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn scripts_pass_shellcheck_and_bash_syntax() {
    for script in ["install.sh", "tune-nic.sh"] {
        let path = deploy(script);
        run_ok(Command::new("bash").arg("-n").arg(&path));
        // shellcheck is installed by `cargo xtask setup`.
        run_ok(Command::new("shellcheck").arg(&path));
    }
    // What the packages run: POSIX sh (dash on Debian), no bashisms.
    for script in [
        "dist/install.sh",
        "debian/postinst",
        "debian/prerm",
        "debian/postrm",
    ] {
        let path = deploy(script);
        run_ok(Command::new("sh").arg("-n").arg(&path));
        run_ok(
            Command::new("shellcheck")
                .args(["--shell", "sh"])
                .arg(&path),
        );
    }
}

#[test]
fn sysctls_name_existing_keys() {
    let text = std::fs::read_to_string(deploy("sysctl.d/60-relay.conf")).unwrap();
    let mut keys = 0;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line.split_once('=').unwrap();
        let path = PathBuf::from("/proc/sys").join(key.trim().replace('.', "/"));
        assert!(path.exists(), "{} does not exist", key.trim());
        assert!(value.trim().parse::<u64>().is_ok(), "{line}");
        keys += 1;
    }
    assert!(keys >= 3);
}

#[test]
fn cloud_init_user_data_is_well_formed() {
    let text = std::fs::read_to_string(deploy("cloud-init.yaml")).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert!(
        doc["packages"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p == "nftables")
    );
    let runcmd = format!("{:?}", doc["runcmd"]);
    // The package, not a toolchain.
    assert!(
        !runcmd.contains("rustup") && !runcmd.contains("cargo"),
        "{runcmd}"
    );
    for step in [
        "apt-get install",
        "RELAY_DEB",
        "tune-nic.sh",
        "enable",
        "relay",
    ] {
        assert!(runcmd.contains(step), "runcmd lacks {step}");
    }
    // The embedded relay configuration is valid.
    let files = doc["write_files"].as_sequence().unwrap();
    let config = files
        .iter()
        .find(|f| f["path"] == "/etc/relay/relay.yaml")
        .unwrap()["content"]
        .as_str()
        .unwrap();
    relay_userspace::config::Config::parse(config, "cloud-init").unwrap();
    // Where cloud-init is installed, its own schema check too.
    if Command::new("cloud-init").arg("--version").output().is_ok() {
        run_ok(
            Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(deploy("cloud-init.yaml")),
        );
    }
}
