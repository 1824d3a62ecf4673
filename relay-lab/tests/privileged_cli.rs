//! The inspection commands against a real loaded program with sessions in its maps
//! (privileged): `relay sessions`, `relay stats` and `relay explain`, text and JSON.

mod common;

use std::process::Command;

use common::*;
use relay_common::{
    maps::{META_LABEL_LEN, SessionMeta},
    verdict::Reason,
};
use relay_userspace::explain::Explainer;

const VNI: u32 = 4242;
const SLOT: u32 = 5;

fn fixed<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

/// A sandboxed relay with one labelled session that has carried a few packets.
fn relay_with_traffic() -> Fixture {
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let meta = SessionMeta {
        created_unix_ms: 1_700_000_000_000,
        token: fixed("ops"),
        labels: [
            fixed::<META_LABEL_LEN>("alice-laptop"),
            fixed::<META_LABEL_LEN>("office-nas"),
        ],
        bind_lifetime_ms: 30_000,
        idle_lifetime_ms: 300_000,
        ..Default::default()
    };
    fx.maps().session_meta.insert(VNI, meta, 0).unwrap();
    let relay4 = std::net::SocketAddr::new(RELAY_V4.into(), RELAY_PORT);
    for _ in 0..3 {
        let f = udp_frame(
            sa(LEG_A4),
            relay4,
            &geneve_data(VNI, &payload(100)),
            FrameOpts::default(),
        );
        assert_eq!(
            fx.run(&f, SLOT).0.action,
            relay_userspace::dataplane::simulate::XdpAction::Tx
        );
    }
    let f = udp_frame(
        sa(LEG_B4),
        relay4,
        &geneve_data(VNI, &payload(50)),
        FrameOpts::default(),
    );
    fx.run(&f, SLOT);
    fx
}

/// Runs the `relay` binary in the sandbox's network namespace (nsenter keeps /sys and so the
/// pins visible, unlike `ip netns exec`).
fn relay(fx: &Fixture, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", fx.sandbox.netns_name()))
        .arg(relay_path())
        .args(args)
        .arg("--pin-dir")
        .arg(fx.sandbox.pin_dir())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sessions_table_and_json_show_legs_labels_counters_and_path() {
    require_root!();
    let fx = relay_with_traffic();
    let (ok, out, err) = relay(&fx, &["sessions", "--interval", "0"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("4242"))
        .unwrap_or_else(|| panic!("{out}"));
    for expected in [
        "bound",
        "alice-laptop 198.51.100.10:40000",
        "office-nas 198.51.100.20:40001",
        "3 pkt",
        "1 pkt",
        "kernel",
    ] {
        assert!(row.contains(expected), "{expected:?} missing in {row:?}");
    }
    assert!(
        out.contains("1 of 1 sessions shown; map capacity 1024"),
        "{out}"
    );

    let (ok, out, err) = relay(&fx, &["sessions", "--interval", "0", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &v[0];
    assert_eq!(s["vni"], 4242);
    assert_eq!(s["token"], "ops");
    assert_eq!(s["path"], "kernel");
    assert_eq!(s["legs"][1]["label"], "office-nas");
    assert_eq!(s["directions"][0]["kernel_packets"], 3);
    assert_eq!(s["directions"][0]["kernel_bytes"], 3 * 108);
    assert_eq!(s["directions"][1]["kernel_packets"], 1);
    assert!(s["directions"][0]["last_seen"].as_f64().unwrap() < 10.0);

    // Filters and detail.
    let (_, out, _) = relay(
        &fx,
        &["sessions", "--interval", "0", "--label", "nas", "--json"],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (_, out, _) = relay(
        &fx,
        &[
            "sessions",
            "--interval",
            "0",
            "--state",
            "allocated",
            "--json",
        ],
    );
    assert_eq!(out.trim(), "[]");
    let (ok, out, _) = relay(&fx, &["sessions", "--interval", "0", "show", "4242"]);
    assert!(
        ok && out.contains("token    ops") && out.contains("lifetimes bind 30s, idle 300s"),
        "{out}"
    );
    let (ok, _, err) = relay(&fx, &["sessions", "--interval", "0", "show", "99"]);
    assert!(!ok && err.contains("no session 99"), "{err}");
}

#[test]
fn stats_report_every_reason_and_occupancy() {
    require_root!();
    let fx = relay_with_traffic();
    let (ok, out, err) = relay(&fx, &["stats", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdicts"].as_array().unwrap().len(), Reason::ALL.len());
    let fwd = v["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "forwarded_v4")
        .unwrap();
    assert_eq!(fwd["kernel_packets"], 4);
    assert_eq!(
        (v["session_count"].as_u64(), v["capacity"].as_u64()),
        (Some(1), Some(1024))
    );
    let (ok, out, _) = relay(&fx, &["stats"]);
    assert!(ok);
    assert!(out.contains("Sessions 1 of 1024"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("forwarded_v4") && l.contains(" 4 ")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("dropped_send_error")),
        "{out}"
    );
}

#[test]
fn explain_covers_each_verdict_without_touching_live_counters() {
    require_root!();
    let mut fx = relay_with_traffic();
    let live_before = fx.maps().kernel_verdicts().unwrap();
    let session_before = fx.maps().kernel_session_stats(SLOT).unwrap();
    let mut explainer = Explainer::open(fx.sandbox.pin_dir(), Some("eth0")).unwrap();
    let relay4 = std::net::SocketAddr::new(RELAY_V4.into(), RELAY_PORT);
    let data = geneve_data(VNI, &payload(10));
    let mut arp = eth(etherparse::EtherType::ARP, CLIENT_MAC, [0xff; 6]).to_vec();
    arp.extend_from_slice(&[0; 28]);
    let cases = [
        (
            udp_frame(sa(LEG_A4), relay4, &data, FrameOpts::default()),
            "XDP_TX",
            "forwarded_v4",
        ),
        (
            udp_frame(sa("198.51.100.99:1"), relay4, &data, FrameOpts::default()),
            "XDP_DROP",
            "dropped_wrong_source",
        ),
        (
            udp_frame(
                sa(LEG_A4),
                relay4,
                &geneve_data(VNI + 1, &[1]),
                FrameOpts::default(),
            ),
            "XDP_DROP",
            "dropped_unknown_vni",
        ),
        (
            udp_frame(
                sa(LEG_A4),
                relay4,
                &geneve_control(VNI),
                FrameOpts::default(),
            ),
            "XDP_PASS",
            "passed_control",
        ),
        (
            udp_frame(sa(LEG_A4), relay4, &data[..4], FrameOpts::default()),
            "XDP_DROP",
            "dropped_malformed",
        ),
        (
            udp_frame(
                sa(LEG_A4),
                sa("192.0.2.5:6081"),
                &data,
                FrameOpts::default(),
            ),
            "XDP_PASS",
            "passed_not_our_address",
        ),
        (
            udp_frame(
                sa(LEG_A4),
                sa("203.0.113.1:53"),
                &data,
                FrameOpts::default(),
            ),
            "XDP_PASS",
            "passed_not_our_port",
        ),
        (arp, "XDP_PASS", "passed_not_ip"),
    ];
    for (frame, action, reason) in cases {
        let e = explainer.explain(&frame).unwrap();
        assert_eq!(
            (e.action.as_str(), e.reason),
            (action, Some(reason)),
            "{}",
            e.input
        );
    }
    let e = explainer
        .explain(&udp_frame(sa(LEG_A4), relay4, &data, FrameOpts::default()))
        .unwrap();
    let out = e.output.unwrap();
    assert!(
        out.contains("ipv4 203.0.113.1 → 198.51.100.20 ttl 64"),
        "{out}"
    );
    assert!(
        out.contains("header checksum ok") && out.contains("udp 6081 → 40001"),
        "{out}"
    );
    drop(explainer);
    assert_eq!(
        fx.maps().kernel_verdicts().unwrap(),
        live_before,
        "explain changed live counters"
    );
    assert_eq!(
        fx.maps().kernel_session_stats(SLOT).unwrap(),
        session_before,
        "explain touched the session"
    );
}

#[test]
fn explain_cli_reads_hex_and_pcap() {
    require_root!();
    let fx = relay_with_traffic();
    let relay4 = std::net::SocketAddr::new(RELAY_V4.into(), RELAY_PORT);
    let good = udp_frame(
        sa(LEG_A4),
        relay4,
        &geneve_data(VNI, &payload(10)),
        FrameOpts::default(),
    );
    let bad = udp_frame(
        sa(LEG_A4),
        relay4,
        &geneve_data(VNI + 1, &payload(10)),
        FrameOpts::default(),
    );
    let (ok, out, err) = relay(
        &fx,
        &["explain", "--interface", "eth0", &hex::encode(&good)],
    );
    assert!(ok, "{err}");
    assert!(out.contains("frames arrive on eth0"), "{out}");
    assert!(out.contains("verdict XDP_TX (forwarded_v4)"), "{out}");
    assert!(
        out.contains("out     ipv4 203.0.113.1 → 198.51.100.20"),
        "{out}"
    );
    // A pcap with two frames.
    let path = std::env::temp_dir().join(format!("relay-explain-{}.pcap", std::process::id()));
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut w = pcap_file::pcap::PcapWriter::new(file).unwrap();
        for f in [&good, &bad] {
            w.write_packet(&pcap_file::pcap::PcapPacket::new(
                std::time::Duration::ZERO,
                f.len() as u32,
                f,
            ))
            .unwrap();
        }
    }
    let (ok, out, err) = relay(
        &fx,
        &[
            "explain",
            "--interface",
            "eth0",
            "--pcap",
            path.to_str().unwrap(),
            "--json",
        ],
    );
    std::fs::remove_file(&path).unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["reason"], "forwarded_v4");
    assert_eq!(v[1]["reason"], "dropped_unknown_vni");
    assert_eq!(v[1]["action"], "XDP_DROP");
}

#[test]
fn clear_errors_without_pinned_maps_or_root() {
    require_root!();
    let out = Command::new(relay_path())
        .args(["sessions", "--pin-dir", "/sys/fs/bpf/no-such-relay"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no relay maps pinned in /sys/fs/bpf/no-such-relay"),
        "{err}"
    );
    assert!(err.contains("is the relay running"), "{err}");
    // As an unprivileged user, on a real relay's pins.
    let fx = relay_with_traffic();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(relay_path())
        .args(["stats", "--pin-dir"])
        .arg(fx.sandbox.pin_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied") && err.contains("run as root"),
        "{err}"
    );
}

/// A tmux session on a server of its own (`-L`), killed with its server when dropped.
///
/// One server per session: with a shared default server, killing the last session makes the
/// server exit while the next `new-session` may already be connecting to it, and tmux then
/// fails with "server exited unexpectedly" (seen once in CI).
struct Tmux(String);

impl Tmux {
    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.0]);
        command
    }

    fn capture(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let screen = self.capture();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{text:?} never appeared:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

#[test]
fn top_draws_live_and_quits_on_q_and_ctrl_c() {
    require_root!();
    let fx = relay_with_traffic();
    for (n, key) in [(0, "q"), (1, "C-c")] {
        let name = format!("relay-top-{}-{n}", std::process::id());
        let command = format!(
            "nsenter --net=/run/netns/{} {} top --pin-dir {} --interval 300ms; echo EXITED $?; sleep 30",
            fx.sandbox.netns_name(),
            &relay_path(),
            fx.sandbox.pin_dir().display()
        );
        let tmux = Tmux(name);
        let status = tmux
            .command()
            .args([
                "new-session",
                "-d",
                "-s",
                &tmux.0,
                "-x",
                "150",
                "-y",
                "40",
                &command,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let screen = tmux.wait_for("busiest sessions");
        assert!(screen.contains("relay top"), "{screen}");
        assert!(
            screen.contains("alice-laptop") && screen.contains("4242"),
            "{screen}"
        );
        tmux.command()
            .args(["send-keys", "-t", &tmux.0, key])
            .status()
            .unwrap();
        let screen = tmux.wait_for("EXITED");
        assert!(screen.contains("EXITED 0"), "{key}: {screen}");
    }
}

#[test]
fn top_once_prints_a_frame() {
    require_root!();
    let fx = relay_with_traffic();
    let (ok, out, err) = relay(&fx, &["top", "--once", "--interval", "200ms"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 sessions (1 bound) of 1024"), "{out}");
    assert!(out.contains("4242") && out.contains("office-nas"), "{out}");
    let (ok, out, err) = relay(&fx, &["top", "--once", "--json", "--interval", "200ms"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["sessions"][0]["vni"], 4242);
    assert!(v["sessions"][0]["rates"].is_array(), "{out}");
}

#[test]
fn explain_reads_turn_frames_through_the_live_allocations() {
    require_root!();
    use common::turn::*;
    use relay_userspace::fronts::turn::server::Transport;
    let fx = Fixture::new();
    let mut maps = fx.turn();
    let a = allocation(
        4,
        sa(LEG_A4),
        Transport::Udp,
        50_002,
        &[(0x4001, sa(LEG_B4))],
        &[],
    );
    install(&mut maps, &a, Default::default());
    let live_before = maps.kernel_stats(4).unwrap();
    let mut explainer = Explainer::open(fx.sandbox.pin_dir(), Some("eth0")).unwrap();
    let to_server = turn_server(sa(LEG_A4));
    let relayed = std::net::SocketAddr::new(RELAY_V4.into(), 50_002);
    let cases = [
        (
            udp_frame(
                sa(LEG_A4),
                to_server,
                &channel_data(0x4001, &payload(9), &[0, 0, 0]),
                FrameOpts::default(),
            ),
            "XDP_TX",
            "forwarded_turn_to_peer",
            "turn channel data channel 0x4001, 9 bytes of data and 3 after them (padding)",
            Some("9 bytes of data, TURN relayed port 50002 (allocation slot 4)"),
        ),
        (
            udp_frame(sa(LEG_B4), relayed, &payload(9), FrameOpts::default()),
            "XDP_TX",
            "forwarded_turn_to_client",
            "9 bytes of data, TURN relayed port 50002 (allocation slot 4)",
            Some("turn channel data channel 0x4001, 9 bytes of data"),
        ),
        (
            udp_frame(
                sa(LEG_A4),
                to_server,
                &channel_data(0x4002, &payload(9), &[]),
                FrameOpts::default(),
            ),
            "XDP_DROP",
            "dropped_turn_unknown_channel",
            "turn channel data channel 0x4002",
            None,
        ),
        (
            udp_frame(
                sa("198.51.100.99:5"),
                relayed,
                &payload(9),
                FrameOpts::default(),
            ),
            "XDP_DROP",
            "dropped_turn_no_permission",
            "TURN relayed port 50002",
            None,
        ),
    ];
    for (frame, action, reason, input, output) in cases {
        let e = explainer.explain(&frame).unwrap();
        assert_eq!(
            (e.action.as_str(), e.reason),
            (action, Some(reason)),
            "{}",
            e.input
        );
        assert!(e.input.contains(input), "{}", e.input);
        match output {
            Some(o) => assert!(e.output.as_deref().unwrap_or("").contains(o), "{e:?}"),
            None => assert!(e.output.is_none(), "{e:?}"),
        }
    }
    drop(explainer);
    assert_eq!(
        maps.kernel_stats(4).unwrap(),
        live_before,
        "explain counted into the live allocation"
    );
}
