//! Deployment pieces that need root, exercised for real in network namespaces: the NIC tuning
//! script, the firewall, the daemon's systemd protocol (ready, watchdog, stopping), exiting with
//! and without detaching XDP, `relay down`, and `relay check`.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{relay_path, run_ok};
use relay_lab::Netns;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(file)
}

/// A namespace with `eth0` (a veth) up and addressed, loopback up.
fn host() -> Netns {
    let ns = Netns::create("rt-deploy").unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "198.51.100.10/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["link", "set", "peer0", "up"]).unwrap();
    ns
}

fn in_ns(ns: &Netns, program: &str) -> Command {
    // nsenter (network only) keeps /sys/fs/bpf visible, unlike `ip netns exec`.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(program);
    c
}

#[test]
fn tune_nic_dry_run_then_real_run() {
    require_root!();
    let ns = host();
    let script = deploy("tune-nic.sh");
    let tune = |args: &[&str]| run_ok(ns.command(script.to_str().unwrap()).args(args));
    let text = tune(&["eth0", "--dry-run", "--queues", "2"]);
    // A veth has separate RX and TX channels (as some NICs do), not combined ones.
    assert!(text.contains("would: ethtool -L eth0 rx 2 tx 2"), "{text}");
    assert!(
        text.contains("skip: no interrupts named after eth0"),
        "{text}"
    );
    let channels = || ns.exec("ethtool", &["-l", "eth0"]).unwrap();
    assert!(
        channels()
            .split("Current hardware settings:")
            .nth(1)
            .unwrap()
            .contains("RX:\t\t1"),
        "dry run changed something"
    );
    tune(&["eth0", "--queues", "2"]);
    assert!(
        channels()
            .split("Current hardware settings:")
            .nth(1)
            .unwrap()
            .contains("RX:\t\t2"),
        "{}",
        channels()
    );
    // Idempotent.
    assert!(tune(&["eth0", "--queues", "2"]).contains("ok: eth0 has 2 RX queue(s)"));
    let out = ns
        .command(script.to_str().unwrap())
        .arg("nosuch0")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn nftables_example_is_valid_ruleset() {
    require_root!();
    let ns = host();
    run_ok(
        ns.command("nft")
            .args(["-c", "-f"])
            .arg(deploy("nftables.conf")),
    );
    // And it loads for real inside the namespace, admitting the relay port only.
    run_ok(ns.command("nft").arg("-f").arg(deploy("nftables.conf")));
    let rules = ns
        .exec("nft", &["list", "chain", "inet", "relay_host", "input"])
        .unwrap();
    assert!(
        rules.contains("udp dport 6081 accept") && rules.contains("policy drop"),
        "{rules}"
    );
}

fn config(ns: &Netns, pin_dir: &std::path::Path) -> PathBuf {
    config_in_mode(ns, pin_dir, "generic")
}

fn config_in_mode(ns: &Netns, pin_dir: &std::path::Path, mode: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.yaml", ns.name()));
    std::fs::write(
        &path,
        format!(
            "interfaces: [eth0]\nxdp:\n  mode: {mode}\napi:\n  listen: 127.0.0.1:18080\n  tokens:\n    \
             - name: t\n      token: 0123456789abcdef0123\npin_dir: {}\n",
            pin_dir.display()
        ),
    )
    .unwrap();
    path
}

/// Receives notify messages until `want` arrives (at most `limit`).
/// A `NOTIFY_SOCKET` for daemons started in `ns` (what systemd gives a `Type=notify` unit).
fn notify_socket(ns: &Netns) -> (PathBuf, UnixDatagram) {
    let path = std::env::temp_dir().join(format!("{}.notify", ns.name()));
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (path, sock)
}

fn wait_notify(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("{want} never came; got {seen:?}");
}

#[test]
fn systemd_notify_watchdog_detach_on_exit_and_down() {
    require_root!();
    let ns = host();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    let cfg = config(&ns, &pin_dir);
    let (sock_path, sock) = notify_socket(&ns);
    let relay = &relay_path();
    let serve = |detach: bool| {
        // As systemd does: WATCHDOG_PID names the daemon itself (the shell execs into it).
        let script = format!(
            "export WATCHDOG_PID=$$; exec nsenter --net=/run/netns/{} {relay} serve --config {}{}",
            ns.name(),
            cfg.display(),
            if detach { " --detach-on-exit" } else { "" }
        );
        Command::new("sh")
            .args(["-c", &script])
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let xdp = || ns.exec("ip", &["-d", "link", "show", "eth0"]).unwrap();

    // Default: ready, watchdog pings, and on SIGTERM the fast path stays.
    let mut daemon = serve(false);
    let seen = wait_notify(&sock, "READY=1", Duration::from_secs(15));
    assert!(seen.concat().contains("STATUS=relaying"), "{seen:?}");
    wait_notify(&sock, "WATCHDOG=1", Duration::from_secs(5));
    assert!(xdp().contains("xdpgeneric"), "{}", xdp());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_notify(&sock, "STOPPING=1", Duration::from_secs(5));
    assert!(daemon.wait().unwrap().success());
    assert!(
        xdp().contains("xdpgeneric"),
        "the fast path should survive the daemon"
    );
    assert!(pin_dir.join("link_eth0").exists() && pin_dir.join("sessions").exists());

    // With --detach-on-exit: the next daemon keeps the link (same build), then detaches on exit
    // while the sessions stay pinned.
    let mut daemon = serve(true);
    wait_notify(&sock, "READY=1", Duration::from_secs(15));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success());
    assert!(
        !xdp().contains("xdpgeneric"),
        "XDP should be detached: {}",
        xdp()
    );
    assert!(!pin_dir.join("link_eth0").exists());
    assert!(
        pin_dir.join("sessions").exists(),
        "sessions stay pinned for the next daemon"
    );

    // relay down removes everything.
    let down = || run_ok(in_ns(&ns, relay).args(["down", "--pin-dir"]).arg(&pin_dir));
    assert!(down().contains("every session is gone"));
    assert!(!pin_dir.exists());
    assert!(down().contains("nothing pinned"));
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn check_reports_and_fails_on_what_cannot_work() {
    require_root!();
    let ns = host();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    let cfg = config(&ns, &pin_dir);
    let relay = &relay_path();
    let out = in_ns(&ns, relay)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for expected in [
        "PASS  kernel",
        "PASS  capabilities",
        "PASS  eth0 driver                  veth",
        "PASS  eth0 XDP                     native XDP attaches (tried and detached)",
        "PASS  relay port                   198.51.100.10:6081 is free",
        "0 failed",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(
        !ns.exec("ip", &["-d", "link", "show", "eth0"])
            .unwrap()
            .contains("xdp"),
        "the trial left XDP attached"
    );
    // JSON, and failures: another XDP program on the interface, a missing interface.
    let out = in_ns(&ns, relay)
        .args([
            "check",
            "--json",
            "--interface",
            "eth0",
            "--interface",
            "nosuch0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fail = v
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["check"] == "nosuch0")
        .unwrap();
    assert_eq!(fail["status"], "fail");
    ns.ip(&["link", "set", "dev", "eth0", "xdpgeneric", "off"])
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
}

#[test]
fn a_restart_with_another_xdp_mode_reattaches_in_that_mode_and_off_detaches() {
    require_root!();
    let ns = host();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    let (sock_path, sock) = notify_socket(&ns);
    let relay = &relay_path();
    let mut cfg = PathBuf::new();
    let xdp = || ns.exec("ip", &["-d", "link", "show", "eth0"]).unwrap();
    for (mode, shown) in [
        ("native", Some("xdp ")),
        ("generic", Some("xdpgeneric")),
        ("native", Some("xdp ")),
        ("off", None),
        ("generic", Some("xdpgeneric")),
    ] {
        cfg = config_in_mode(&ns, &pin_dir, mode);
        let log_path = std::env::temp_dir().join(format!("{}-{mode}.log", ns.name()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut daemon = in_ns(&ns, relay)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .env("NOTIFY_SOCKET", &sock_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let ready = std::panic::catch_unwind(|| {
            wait_notify(&sock, "READY=1", Duration::from_secs(15));
        });
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        assert!(
            ready.is_ok(),
            "{mode}: the daemon did not start:\n{log_text}"
        );
        let link = xdp();
        match shown {
            Some(tag) => {
                assert!(link.contains(tag), "{mode}: {link}");
                assert!(pin_dir.join("link_eth0").exists());
            }
            None => {
                assert!(!link.contains("xdp"), "{mode}: {link}");
                assert!(!pin_dir.join("link_eth0").exists());
                assert!(pin_dir.join("sessions").exists(), "sessions stay pinned");
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(daemon.wait().unwrap().success(), "{mode}");
    }
    run_ok(in_ns(&ns, relay).args(["down", "--pin-dir"]).arg(&pin_dir));
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&cfg);
}

/// A self-signed certificate for `ip`, written as `<name>.crt` / `<name>.key` in `dir`.
fn certificate(dir: &std::path::Path, name: &str, ip: &str) -> (PathBuf, PathBuf) {
    let pair = rcgen::generate_simple_self_signed(vec![ip.to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Removes a directory when dropped (also when the test fails).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_https_api_reloads_tokens_and_certificate_on_sighup_and_keeps_them_on_a_bad_file() {
    require_root!();
    let ns = host();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("{}-tls", ns.name())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    let (cert, key) = certificate(&dir.0, "api", "198.51.100.10");
    let first_cert = dir.0.join("first.crt");
    std::fs::copy(&cert, &first_cert).unwrap();
    let cfg = dir.0.join("relay.yaml");
    let write_config = |tokens: &str, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "interfaces: [eth0]\nxdp:\n  mode: off\napi:\n  listen: 198.51.100.10:18443\n  tls:\n    \
                 cert: {}\n    key: {}\n  tokens:\n{tokens}pin_dir: {}\n{extra}",
                cert.display(),
                key.display(),
                pin_dir.display()
            ),
        )
        .unwrap();
    };
    const OLD: &str = "old-token-0123456789";
    const NEW: &str = "new-token-0123456789";
    write_config(&format!("    - name: ops\n      token: {OLD}\n"), "");
    let (sock_path, sock) = notify_socket(&ns);
    let relay = &relay_path();
    let checked = in_ns(&ns, relay)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let checked = String::from_utf8_lossy(&checked.stdout).to_string();
    assert!(checked.contains("PASS  API certificate"), "{checked}");
    let log_path = dir.0.join("relay.log");
    let mut daemon = in_ns(&ns, relay)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = std::panic::catch_unwind(|| {
        wait_notify(&sock, "READY=1", Duration::from_secs(15));
    });
    assert!(started.is_ok(), "the daemon did not start:\n{}", log());
    // `relay client` from inside the namespace; Ok(stdout) or Err(stderr).
    let client = |args: &[&str], token: &str, ca: Option<&std::path::Path>| {
        let mut c = in_ns(&ns, relay);
        c.arg("client").args(args).env("RELAY_TOKEN", token);
        c.env("RELAY_API", "https://198.51.100.10:18443");
        if let Some(ca) = ca {
            c.env("RELAY_CA_CERT", ca);
        }
        let out = c.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        if out.status.success() {
            Ok(text(&out.stdout))
        } else {
            Err(text(&out.stderr))
        }
    };

    // HTTPS with the configured certificate; untrusted without it; no clear text.
    let created = client(&["create", "--json"], OLD, Some(&first_cert)).unwrap();
    let vni = serde_json::from_str::<serde_json::Value>(&created).unwrap()["vni"]
        .as_u64()
        .unwrap()
        .to_string();
    let e = client(&["get", &vni], OLD, None).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let mut plain = in_ns(&ns, relay);
    plain
        .args(["client", "get", &vni, "--api", "http://198.51.100.10:18443"])
        .env("RELAY_TOKEN", OLD);
    let e = String::from_utf8_lossy(&plain.output().unwrap().stderr).to_string();
    assert!(e.contains("clear text"), "{e}");

    // Rotate the token (same name: its sessions stay its own), renew the certificate in place,
    // change a setting that needs a restart; SIGHUP.
    write_config(
        &format!("    - name: ops\n      token: {NEW}\n"),
        "sessions:\n  idle_lifetime: 1m\n",
    );
    let (renewed, _) = certificate(&dir.0, "api", "198.51.100.10");
    let hup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let seen = wait_notify(&sock, "READY=1", Duration::from_secs(10));
        assert!(seen.concat().contains("RELOADING=1"), "{seen:?}");
    };
    hup();
    let shown = client(&["get", &vni], NEW, Some(&renewed)).unwrap();
    assert!(shown.contains(&format!("session {vni}")), "{shown}");
    let e = client(&["get", &vni], OLD, Some(&renewed)).unwrap_err();
    assert!(e.contains("401") && e.contains("unknown token"), "{e}");
    let e = client(&["get", &vni], NEW, Some(&first_cert)).unwrap_err();
    assert!(
        e.contains("certificate"),
        "the old certificate still served: {e}"
    );
    assert!(
        log().contains(r#"next restart keys=["sessions"]"#)
            && log().contains(r#"API tokens reloaded added=[] removed=[] rotated=["ops"]"#),
        "{}",
        log()
    );

    // A file that does not load changes nothing.
    std::fs::write(&cfg, "api: [not a mapping\n").unwrap();
    hup();
    client(&["get", &vni], NEW, Some(&renewed)).unwrap();
    assert!(log().contains("reload refused"), "{}", log());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(daemon.wait().unwrap().success(), "{}", log());
    run_ok(in_ns(&ns, relay).args(["down", "--pin-dir"]).arg(&pin_dir));
    let _ = std::fs::remove_file(&sock_path);
}
