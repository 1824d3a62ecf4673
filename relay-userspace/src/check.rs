//! `relay check`: can this host run the relay, and run it fast? One pass / warn / fail line per
//! check, so an operator knows before going live whether the VM does native XDP, and what to fix
//! otherwise. Each verdict is a small pure function of facts gathered from the host, so the
//! rules are unit-tested; the gathering (`ip`, `ethtool`, `/proc`, an attach trial) is not.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    process::Command,
};

use aya::programs::XdpMode as AyaMode;
use serde::Serialize;

use crate::{
    config::{Config, XdpMode},
    control::address_policy::normalise,
    dataplane::{Dataplane, LoadOptions, bpffs, loader::remove_pins, object::PROGRAM_PASS},
    descriptors::{self, Limit, Needs},
};

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but slower or riskier than it should.
    Warn,
    /// The relay cannot work (well) like this.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    /// Verdict.
    pub status: Status,
    /// What was checked.
    pub check: String,
    /// What was found, and what to do.
    pub detail: String,
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        write!(f, "{s}  {:<28} {}", self.check, self.detail)
    }
}

fn line(status: Status, check: impl Into<String>, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        status,
        check: check.into(),
        detail: detail.into(),
    }
}

/// Native-XDP MTU limits of common cloud and datacenter drivers without multi-buffer XDP (from
/// their sources, Linux 6.x; approximate — the attach trial is authoritative).
pub const DRIVER_XDP_MTU: &[(&str, u32)] = &[
    ("virtio_net", 3506),
    ("ena", 3498),
    ("gve", 2032),
    ("mlx5_core", 3498),
    ("i40e", 3046),
    ("ixgbe", 3046),
];

/// Kernel release ≥ 5.15 (bpf links, ring buffers, jiffies and coarse clock helpers) with BTF.
pub fn kernel(release: &str, btf: bool) -> CheckLine {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 15) {
        return line(
            Status::Fail,
            "kernel",
            format!("{release}: the relay needs Linux 5.15 or newer"),
        );
    }
    if !btf {
        return line(
            Status::Fail,
            "kernel",
            format!(
                "{release} without BTF (/sys/kernel/btf/vmlinux): build with CONFIG_DEBUG_INFO_BTF"
            ),
        );
    }
    line(Status::Pass, "kernel", format!("{release} with BTF"))
}

/// Capabilities the daemon needs, from the `CapEff` mask.
pub fn capabilities(cap_eff: u64) -> CheckLine {
    const NEEDED: [(u32, &str); 3] = [(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")];
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        line(
            Status::Pass,
            "capabilities",
            "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON",
        )
    } else {
        line(
            Status::Fail,
            "capabilities",
            format!("missing {} (run as root or grant them)", missing.join(", ")),
        )
    }
}

/// MTU against the driver's native-XDP limit.
pub fn mtu(interface: &str, driver: &str, mtu: u32) -> CheckLine {
    let name = format!("{interface} MTU");
    match DRIVER_XDP_MTU.iter().find(|(d, _)| *d == driver) {
        Some((_, limit)) if mtu > *limit => line(
            Status::Fail,
            name,
            format!(
                "{mtu} exceeds {driver}'s native-XDP limit of about {limit}: lower it (WireGuard needs 1420 + 60)"
            ),
        ),
        Some((_, limit)) => line(
            Status::Pass,
            name,
            format!("{mtu} (≤ {limit} for {driver})"),
        ),
        None => line(
            Status::Pass,
            name,
            format!("{mtu} ({driver}: no known limit; the attach trial decides)"),
        ),
    }
}

/// Queue count against CPUs: each queue's interrupts land on one CPU.
pub fn queues(interface: &str, combined: Option<u32>, cpus: u32) -> CheckLine {
    let name = format!("{interface} queues");
    match combined {
        None => line(
            Status::Warn,
            name,
            "unknown (ethtool -l not supported): packets may all land on one CPU",
        ),
        Some(q) if q < cpus => line(
            Status::Warn,
            name,
            format!(
                "{q} queue(s) for {cpus} CPUs: the fast path uses only {q} CPU(s); deploy/tune-nic.sh raises it"
            ),
        ),
        Some(q) => line(Status::Pass, name, format!("{q} queue(s) for {cpus} CPUs")),
    }
}

/// LRO and hardware GRO, which native XDP cannot run with (from `ethtool -k`).
pub fn offloads(interface: &str, ethtool_k: &str) -> CheckLine {
    let on = |feature: &str| {
        ethtool_k
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("{feature}:")) && l.contains(": on"))
    };
    let mut bad = Vec::new();
    if on("large-receive-offload") {
        bad.push("LRO");
    }
    if on("rx-gro-hw") {
        bad.push("hardware GRO");
    }
    if bad.is_empty() {
        line(
            Status::Pass,
            format!("{interface} offloads"),
            "LRO and hardware GRO off",
        )
    } else {
        line(
            Status::Warn,
            format!("{interface} offloads"),
            format!(
                "{} on: drivers refuse native XDP with it (deploy/tune-nic.sh turns it off)",
                bad.join(" and ")
            ),
        )
    }
}

/// An advertised endpoint must be reachable from the internet.
pub fn endpoint(key: &str, addr: SocketAddr) -> CheckLine {
    let ip = normalise(addr.ip());
    let special = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() || v4.is_multicast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_multicast()
        }
    };
    let private = match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if special {
        line(
            Status::Fail,
            key,
            format!("{addr} cannot be reached by clients"),
        )
    } else if private {
        line(
            Status::Warn,
            key,
            format!(
                "{addr} is private: clients on the internet cannot reach it (behind 1:1 NAT, set relay.advertise to the public address)"
            ),
        )
    } else {
        line(Status::Pass, key, format!("{addr}"))
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Tries native XDP on `interface` with the pass-everything program, then detaches.
fn attach_trial(interface: &str, pin_parent: &Path) -> Result<(), String> {
    let pins = pin_parent.join(format!("relay-check-{}", std::process::id()));
    let result = (|| {
        let mut dp = Dataplane::load(&LoadOptions {
            pin_dir: pins.clone(),
            max_sessions: 1,
            max_allocations: 1,
            nexthop_cache_entries: 1,
            shared_from: None,
        })?;
        dp.attach(PROGRAM_PASS, interface, AyaMode::Driver)
    })()
    .map_err(|e| format!("{e:#}"));
    let _ = remove_pins(&pins);
    result
}

fn interface_checks(interface: &str, config: Option<&Config>, out: &mut Vec<CheckLine>) {
    let Some(link) = output("ip", &["-j", "-d", "link", "show", "dev", interface]) else {
        out.push(line(
            Status::Fail,
            interface.to_string(),
            "no such interface",
        ));
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&link).unwrap_or_default();
    let v = &v[0];
    let up = v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    out.push(if up {
        line(
            Status::Pass,
            interface.to_string(),
            format!(
                "exists, up, state {}",
                v["operstate"].as_str().unwrap_or("?")
            ),
        )
    } else {
        line(Status::Fail, interface.to_string(), "exists but is down")
    });
    let driver = output("ethtool", &["-i", interface])
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("driver: ").map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into());
    out.push(line(
        Status::Pass,
        format!("{interface} driver"),
        driver.clone(),
    ));
    let mode = config.map_or(XdpMode::Auto, |c| c.xdp.mode);
    let attached = v["xdp"]["prog"]["name"].as_str();
    let xdp_line = match attached {
        Some("relay_xdp") => {
            let m = match v["xdp"]["mode"].as_u64() {
                Some(1) => "native",
                Some(2) => "generic",
                _ => "other",
            };
            let status = if m == "native" {
                Status::Pass
            } else {
                Status::Warn
            };
            line(
                status,
                format!("{interface} XDP"),
                format!("the relay is attached ({m} mode)"),
            )
        }
        Some(other) => line(
            Status::Fail,
            format!("{interface} XDP"),
            format!("another XDP program ({other}) is attached: the relay cannot attach"),
        ),
        None => {
            let parent = config
                .and_then(|c| c.pin_dir.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| Path::new(bpffs::BPFFS_ROOT).to_path_buf());
            match attach_trial(interface, &parent) {
                Ok(()) => line(
                    Status::Pass,
                    format!("{interface} XDP"),
                    "native XDP attaches (tried and detached)",
                ),
                Err(e) if mode == XdpMode::Native => line(
                    Status::Fail,
                    format!("{interface} XDP"),
                    format!("native XDP does not attach: {e}"),
                ),
                Err(e) => line(
                    Status::Warn,
                    format!("{interface} XDP"),
                    format!("native XDP does not attach ({e}): generic mode, several times slower"),
                ),
            }
        }
    };
    out.push(xdp_line);
    out.push(mtu(
        interface,
        &driver,
        v["mtu"].as_u64().unwrap_or(0) as u32,
    ));
    let combined = output("ethtool", &["-l", interface]).and_then(|t| {
        let current = t.split("Current hardware settings:").nth(1)?.to_string();
        let value = |key: &str| {
            current.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(key)
                    .map(|v| v.trim().parse::<u32>().unwrap_or(0))
            })
        };
        Some(
            value("Combined:")
                .unwrap_or(0)
                .max(value("RX:").unwrap_or(0)),
        )
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    out.push(queues(interface, combined.filter(|c| *c > 0), cpus));
    if let Some(k) = output("ethtool", &["-k", interface]) {
        out.push(offloads(interface, &k));
    }
    let manage = config.is_none_or(|c| c.xdp.manage_forwarding);
    let forwarding = read(&format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"));
    out.push(match (forwarding.as_deref(), manage) {
        (Some("1"), _) => line(
            Status::Pass,
            format!("{interface} forwarding"),
            "enabled (the XDP route lookup needs it)",
        ),
        (_, true) => line(
            Status::Pass,
            format!("{interface} forwarding"),
            "off now; the daemon enables it (xdp.manage_forwarding)",
        ),
        _ => line(
            Status::Fail,
            format!("{interface} forwarding"),
            "off and xdp.manage_forwarding is false: every packet would take the slow path",
        ),
    });
}

/// The open-files limit against what the configuration can need. The daemon raises its soft
/// limit to the hard one at start, so the hard limit is what counts.
pub fn open_files(needs: &Needs, limit: Limit) -> CheckLine {
    let need = needs.total();
    if limit.hard < need {
        return line(
            Status::Fail,
            "open files",
            format!(
                "hard limit {} < {need} this configuration can need ({needs}): set \
                 LimitNOFILE={} or more in the unit (systemctl edit relay), or lower the \
                 maxima named",
                limit.hard,
                need.next_power_of_two(),
            ),
        );
    }
    line(
        Status::Pass,
        "open files",
        format!(
            "hard limit {} ≥ {need} this configuration can need (the daemon raises its soft \
             limit {} to it)",
            limit.hard, limit.soft
        ),
    )
}

/// Runs every check for `config` (or, without one, for `interfaces`).
pub fn run(config: Option<&Config>, interfaces: &[String]) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let release = output("uname", &["-r"]).unwrap_or_default();
    out.push(kernel(
        release.trim(),
        Path::new("/sys/kernel/btf/vmlinux").exists(),
    ));
    out.push(if bpffs::is_bpffs(Path::new(bpffs::BPFFS_ROOT)) {
        line(
            Status::Pass,
            "bpffs",
            format!("mounted at {}", bpffs::BPFFS_ROOT),
        )
    } else {
        line(
            Status::Warn,
            "bpffs",
            "not mounted: the daemon mounts it (needs CAP_SYS_ADMIN)",
        )
    });
    let cap_eff = read("/proc/self/status")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string()))
        })
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(0);
    out.push(capabilities(cap_eff));
    out.push(match read("/proc/sys/net/core/bpf_jit_enable").as_deref() {
        Some("1") | Some("2") => line(Status::Pass, "BPF JIT", "enabled"),
        Some(_) => line(
            Status::Warn,
            "BPF JIT",
            "disabled: the fast path runs interpreted, far slower",
        ),
        None => line(
            Status::Warn,
            "BPF JIT",
            "unknown (not visible from this network namespace)",
        ),
    });
    out.push(match read("/proc/sys/net/core/rmem_max").and_then(|v| v.parse::<u64>().ok()) {
        Some(v) if v >= 8 << 20 => line(Status::Pass, "socket buffers", format!("rmem_max {v}")),
        Some(v) => line(Status::Warn, "socket buffers", format!("rmem_max {v}: the userspace forwarder's bursts may overflow (deploy/sysctl.d/60-relay.conf)")),
        None => line(Status::Warn, "socket buffers", "unknown"),
    });
    let interfaces: Vec<String> = match config {
        Some(c) => c.interfaces.clone(),
        None => interfaces.to_vec(),
    };
    for i in &interfaces {
        interface_checks(i, config, &mut out);
    }
    if let Some(c) = config {
        let listen: Vec<IpAddr> = if c.relay.listen.is_empty() {
            interfaces
                .iter()
                .flat_map(|i| crate::daemon::host::interface_addresses(i).unwrap_or_default())
                .collect()
        } else {
            c.relay.listen.clone()
        };
        for ip in &listen {
            let addr = SocketAddr::new(*ip, c.relay.port);
            out.push(match UdpSocket::bind(addr) {
                Ok(_) => line(Status::Pass, "relay port", format!("{addr} is free")),
                Err(e)
                    if c.pin_dir
                        .join("link_".to_string() + interfaces.first().map_or("", |s| s))
                        .exists() =>
                {
                    line(
                        Status::Warn,
                        "relay port",
                        format!("{addr}: {e} (the relay is running?)"),
                    )
                }
                Err(e) => line(Status::Fail, "relay port", format!("{addr}: {e}")),
            });
        }
        out.push(match TcpListener::bind(c.api.listen) {
            Ok(_) => line(
                Status::Pass,
                "API address",
                format!("{} is free", c.api.listen),
            ),
            Err(e) => line(
                Status::Warn,
                "API address",
                format!("{}: {e} (the relay is running?)", c.api.listen),
            ),
        });
        if let Some(tls) = &c.api.tls {
            out.push(match crate::api::tls::server_config(tls) {
                Ok(_) => line(
                    Status::Pass,
                    "API certificate",
                    format!("{} and its key load", tls.cert.display()),
                ),
                Err(e) => line(Status::Fail, "API certificate", format!("{e:#}")),
            });
        }
        if let Some(tls) = c.turn.as_ref().and_then(|t| t.tls.as_ref()) {
            let files = crate::config::TlsConfig {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
            };
            out.push(
                match crate::api::tls::files_config(&files, "turn.tls", Vec::new()) {
                    Ok(_) => line(
                        Status::Pass,
                        "TURN certificate",
                        format!("{} and its key load", tls.cert.display()),
                    ),
                    Err(e) => line(Status::Fail, "TURN certificate", format!("{e:#}")),
                },
            );
        }
        let families = if listen.is_empty() {
            descriptors::configured_families(c)
        } else {
            listen
                .iter()
                .map(|ip| ip.is_ipv6())
                .collect::<HashSet<_>>()
                .len() as u64
        };
        out.push(open_files(
            &descriptors::needed(c, families, descriptors::configured_workers(c)),
            descriptors::Limit::current(),
        ));
        for (key, configured, family_v6) in [
            ("advertise v4", c.relay.advertise.v4, false),
            ("advertise v6", c.relay.advertise.v6, true),
        ] {
            let derived = listen
                .iter()
                .find(|ip| ip.is_ipv6() == family_v6)
                .map(|ip| SocketAddr::new(*ip, c.relay.port));
            if let Some(addr) = configured.or(derived) {
                out.push(endpoint(key, addr));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_fail_below_what_the_configuration_needs_and_name_the_fix() {
        let needs = Needs {
            parts: vec![("turn.max_allocations × families".into(), 32_768)],
        };
        let low = open_files(
            &needs,
            Limit {
                soft: 1024,
                hard: 4096,
            },
        );
        assert_eq!(low.status, Status::Fail);
        assert!(low.detail.contains("LimitNOFILE=32768"), "{}", low.detail);
        assert!(
            low.detail.contains("turn.max_allocations"),
            "{}",
            low.detail
        );
        let fine = open_files(
            &needs,
            Limit {
                soft: 1024,
                hard: 1 << 20,
            },
        );
        assert_eq!(
            fine.status,
            Status::Pass,
            "the soft limit is raised at start"
        );
    }

    #[test]
    fn kernel_needs_5_15_and_btf() {
        assert_eq!(kernel("6.18.44-fc", true).status, Status::Pass);
        assert_eq!(kernel("5.15.0-91-generic", true).status, Status::Pass);
        assert_eq!(kernel("5.10.0", true).status, Status::Fail);
        assert_eq!(kernel("6.1.0", false).status, Status::Fail);
    }

    #[test]
    fn capabilities_from_the_effective_mask() {
        let all = (1u64 << 12) | (1 << 38) | (1 << 39);
        assert_eq!(capabilities(all).status, Status::Pass);
        let c = capabilities(1 << 12);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("CAP_PERFMON, CAP_BPF"), "{}", c.detail);
    }

    #[test]
    fn mtu_against_known_driver_limits() {
        assert_eq!(mtu("eth0", "ena", 9001).status, Status::Fail);
        assert_eq!(mtu("eth0", "ena", 1500).status, Status::Pass);
        assert_eq!(mtu("eth0", "virtio_net", 3506).status, Status::Pass);
        assert_eq!(mtu("eth0", "gve", 4000).status, Status::Fail);
        assert!(mtu("eth0", "veth", 9000).detail.contains("no known limit"));
    }

    #[test]
    fn queues_and_offloads() {
        assert_eq!(queues("eth0", Some(8), 8).status, Status::Pass);
        assert_eq!(queues("eth0", Some(1), 8).status, Status::Warn);
        assert_eq!(queues("eth0", None, 8).status, Status::Warn);
        let k = "Features for eth0:\nlarge-receive-offload: on\nrx-gro-hw: off [fixed]\n";
        let o = offloads("eth0", k);
        assert_eq!(o.status, Status::Warn);
        assert!(o.detail.starts_with("LRO on"), "{}", o.detail);
        assert_eq!(
            offloads(
                "eth0",
                "large-receive-offload: off [fixed]\nrx-gro-hw: off\n"
            )
            .status,
            Status::Pass
        );
    }

    #[test]
    fn advertised_endpoints_must_be_public() {
        assert_eq!(
            endpoint("v4", "198.51.100.7:6081".parse().unwrap()).status,
            Status::Pass
        );
        assert_eq!(
            endpoint("v4", "10.0.0.5:6081".parse().unwrap()).status,
            Status::Warn
        );
        assert_eq!(
            endpoint("v4", "127.0.0.1:6081".parse().unwrap()).status,
            Status::Fail
        );
        assert_eq!(
            endpoint("v6", "[::ffff:127.0.0.1]:6081".parse().unwrap()).status,
            Status::Fail
        );
        assert_eq!(
            endpoint("v6", "[fd00::1]:6081".parse().unwrap()).status,
            Status::Warn
        );
        assert_eq!(
            endpoint("v6", "[2001:db8::1]:6081".parse().unwrap()).status,
            Status::Pass
        );
    }
}
