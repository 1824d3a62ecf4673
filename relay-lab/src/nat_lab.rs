//! The NAT lab: two clients behind NATs that cannot reach each other, an "internet" router, the
//! relay host with a single interface (its traffic to the clients leaves through its gateway, as
//! on a cloud VM, so the fast path hairpins with XDP_TX), and an attacker host.
//!
//! ```text
//!  client-a ── nat-a ──┐                          ┌── relay (eth0: 192.0.2.10, 2001:db8:1::10)
//!  10.0.1.2            │ 198.51.100.2             │
//!  2001:db8:a:1::2     ├──────────── inet ────────┤
//!  client-b ── nat-b ──┘ 203.0.113.2              ├── attacker (192.0.2.66 on its own link)
//!  10.0.2.2                                       └── peer (192.0.2.130, 2001:db8:2::10)
//!  2001:db8:b:1::2
//! ```
//!
//! The peer is a public host, such as the far end of a TURN allocation (a media server, a
//! client with a public address).
//!
//! * nat-a masquerades IPv4 (port-preserving, "easy" NAT); nat-b masquerades with random ports
//!   (symmetric NAT) and lets its client send only to the relay (a strict firewall). Both pass
//!   IPv6 statefully: outbound and replies only, like a home router.
//! * Internet-side addresses are documentation ranges; RFC 1918 only behind the NATs.
//! * Every namespace is named `rl-<role>-<pid>-<n>`, removed when the lab is dropped (also on a
//!   panic); processes started in the lab are killed first. Namespaces of dead lab processes are
//!   cleaned up when the next lab starts.
//! * Locally generated UDP leaves with partial checksums that a native-XDP rewrite cannot
//!   complete, so TX checksum offload is turned off on the hosts that originate traffic.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, run_checked};

/// A host of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// The internet router.
    Inet,
    /// Client A's NAT.
    NatA,
    /// Client B's NAT (symmetric).
    NatB,
    /// Client A.
    ClientA,
    /// Client B.
    ClientB,
    /// The relay.
    Relay,
    /// A second relay of the fleet (idle unless a test starts one there).
    Relay2,
    /// A third relay of the fleet.
    Relay3,
    /// A host that spoofs.
    Attacker,
    /// A public host (a TURN client's peer).
    Peer,
}

impl Host {
    /// Every host.
    pub const ALL: [Host; 10] = [
        Host::Inet,
        Host::NatA,
        Host::NatB,
        Host::ClientA,
        Host::ClientB,
        Host::Relay,
        Host::Relay2,
        Host::Relay3,
        Host::Attacker,
        Host::Peer,
    ];

    fn role(self) -> &'static str {
        match self {
            Host::Inet => "inet",
            Host::NatA => "nata",
            Host::NatB => "natb",
            Host::ClientA => "cla",
            Host::ClientB => "clb",
            Host::Relay => "relay",
            Host::Relay2 => "relay2",
            Host::Relay3 => "relay3",
            Host::Attacker => "atk",
            Host::Peer => "peer",
        }
    }
}

/// Addresses of the lab.
pub mod addr {
    /// The relay's IPv4 address.
    pub const RELAY_V4: &str = "192.0.2.10";
    /// The relay's IPv6 address.
    pub const RELAY_V6: &str = "2001:db8:1::10";
    /// nat-a's public IPv4 address.
    pub const NAT_A_V4: &str = "198.51.100.2";
    /// nat-b's public IPv4 address.
    pub const NAT_B_V4: &str = "203.0.113.2";
    /// Client A's private IPv4 address.
    pub const CLIENT_A_V4: &str = "10.0.1.2";
    /// Client B's private IPv4 address.
    pub const CLIENT_B_V4: &str = "10.0.2.2";
    /// Client A's (global) IPv6 address.
    pub const CLIENT_A_V6: &str = "2001:db8:a:1::2";
    /// Client B's (global) IPv6 address.
    pub const CLIENT_B_V6: &str = "2001:db8:b:1::2";
    /// The second relay's IPv4 address.
    pub const RELAY2_V4: &str = "192.0.2.194";
    /// The second relay's IPv6 address.
    pub const RELAY2_V6: &str = "2001:db8:3::10";
    /// The third relay's IPv4 address.
    pub const RELAY3_V4: &str = "192.0.2.210";
    /// The third relay's IPv6 address.
    pub const RELAY3_V6: &str = "2001:db8:4::10";
    /// The attacker's address.
    pub const ATTACKER_V4: &str = "192.0.2.66";
    /// The public peer's IPv4 address.
    pub const PEER_V4: &str = "192.0.2.130";
    /// The public peer's IPv6 address.
    pub const PEER_V6: &str = "2001:db8:2::10";
    /// A second address of the peer host, in [`DENIED_NET`].
    pub const DENIED_PEER_V4: &str = "192.0.2.161";
    /// A range the TURN scenario's relay refuses as peers (`sessions.leg_addresses.deny`).
    pub const DENIED_NET: &str = "192.0.2.160/27";
}

/// A bpffs for the lab's pins outside /sys: `ip netns exec` remounts /sys in a private mount
/// namespace, which hides /sys/fs/bpf from the processes it starts.
pub const LAB_BPFFS: &str = "/run/relay-lab/bpf";

/// Mounts [`LAB_BPFFS`] unless it is mounted already.
pub fn ensure_lab_bpffs() -> Result<()> {
    let path = Path::new(LAB_BPFFS);
    if relay_userspace::dataplane::bpffs::is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    run_checked(Command::new("mount").args(["-t", "bpf", "bpf", LAB_BPFFS]))?;
    Ok(())
}

/// The relay's interface in its namespace.
pub const RELAY_IF: &str = "eth0";
/// The inet router's side of the relay's link (needs an XDP program for native XDP_TX).
pub const INET_RELAY_IF: &str = "to-relay";
/// Each relay host of the fleet and the inet router's side of its link.
pub const INET_RELAY_IFS: [(Host, &str); 3] = [
    (Host::Relay, INET_RELAY_IF),
    (Host::Relay2, "to-relay2"),
    (Host::Relay3, "to-relay3"),
];

/// One veth link: (host, interface, addresses) on both ends.
struct Link {
    a: (Host, &'static str, &'static [&'static str]),
    b: (Host, &'static str, &'static [&'static str]),
}

const LINKS: &[Link] = &[
    Link {
        a: (
            Host::Inet,
            "to-nata",
            &["198.51.100.1/24", "2001:db8:a::1/64"],
        ),
        b: (Host::NatA, "wan", &["198.51.100.2/24", "2001:db8:a::2/64"]),
    },
    Link {
        a: (
            Host::Inet,
            "to-natb",
            &["203.0.113.1/24", "2001:db8:b::1/64"],
        ),
        b: (Host::NatB, "wan", &["203.0.113.2/24", "2001:db8:b::2/64"]),
    },
    Link {
        a: (
            Host::Inet,
            INET_RELAY_IF,
            &["192.0.2.1/26", "2001:db8:1::1/64"],
        ),
        b: (
            Host::Relay,
            RELAY_IF,
            &["192.0.2.10/26", "2001:db8:1::10/64"],
        ),
    },
    Link {
        a: (
            Host::Inet,
            INET_RELAY_IFS[1].1,
            &["192.0.2.193/28", "2001:db8:3::1/64"],
        ),
        b: (
            Host::Relay2,
            RELAY_IF,
            &["192.0.2.194/28", "2001:db8:3::10/64"],
        ),
    },
    Link {
        a: (
            Host::Inet,
            INET_RELAY_IFS[2].1,
            &["192.0.2.209/28", "2001:db8:4::1/64"],
        ),
        b: (
            Host::Relay3,
            RELAY_IF,
            &["192.0.2.210/28", "2001:db8:4::10/64"],
        ),
    },
    Link {
        a: (Host::Inet, "to-atk", &["192.0.2.65/26"]),
        b: (Host::Attacker, "eth0", &["192.0.2.66/26"]),
    },
    Link {
        a: (
            Host::Inet,
            "to-peer",
            &["192.0.2.129/26", "2001:db8:2::1/64"],
        ),
        b: (
            Host::Peer,
            "eth0",
            &["192.0.2.130/26", "192.0.2.161/26", "2001:db8:2::10/64"],
        ),
    },
    Link {
        a: (Host::NatA, "lan", &["10.0.1.1/24", "2001:db8:a:1::1/64"]),
        b: (
            Host::ClientA,
            "eth0",
            &["10.0.1.2/24", "2001:db8:a:1::2/64"],
        ),
    },
    Link {
        a: (Host::NatB, "lan", &["10.0.2.1/24", "2001:db8:b:1::1/64"]),
        b: (
            Host::ClientB,
            "eth0",
            &["10.0.2.2/24", "2001:db8:b:1::2/64"],
        ),
    },
];

/// Default routes: (host, IPv4 gateway, IPv6 gateway).
const ROUTES: &[(Host, &str, Option<&str>)] = &[
    (Host::NatA, "198.51.100.1", Some("2001:db8:a::1")),
    (Host::NatB, "203.0.113.1", Some("2001:db8:b::1")),
    (Host::Relay, "192.0.2.1", Some("2001:db8:1::1")),
    (Host::Relay2, "192.0.2.193", Some("2001:db8:3::1")),
    (Host::Relay3, "192.0.2.209", Some("2001:db8:4::1")),
    (Host::Attacker, "192.0.2.65", None),
    (Host::Peer, "192.0.2.129", Some("2001:db8:2::1")),
    (Host::ClientA, "10.0.1.1", Some("2001:db8:a:1::1")),
    (Host::ClientB, "10.0.2.1", Some("2001:db8:b:1::1")),
];

/// The NATs' rules. Both masquerade IPv4 and pass IPv6 statefully (replies and outbound only,
/// like a home router). nat-a is an ordinary "easy" NAT. nat-b is hard: it picks random ports
/// (symmetric NAT) and, like a strict corporate firewall, lets its clients send only to the relay
/// (any relay of the fleet) — so no hole punching can connect A and B directly in either family.
fn nat_rules(strict: bool) -> String {
    let masquerade = if strict {
        "masquerade random"
    } else {
        "masquerade"
    };
    let outbound = if strict {
        format!(
            "iifname \"lan\" ip daddr {{ {}, {}, {} }} accept\n    \
             iifname \"lan\" ip6 daddr {{ {}, {}, {} }} accept",
            addr::RELAY_V4,
            addr::RELAY2_V4,
            addr::RELAY3_V4,
            addr::RELAY_V6,
            addr::RELAY2_V6,
            addr::RELAY3_V6
        )
    } else {
        "iifname \"lan\" accept".to_string()
    };
    format!(
        "table inet lab {{
  chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"wan\" ip version 4 {masquerade}; }}
  chain forward {{ type filter hook forward priority filter; policy drop;
    ct state established,related accept
    {outbound}
  }}
}}
"
    )
}

/// A built lab.
pub struct NatLab {
    hosts: Vec<(Host, Netns)>,
    children: Vec<(String, Child)>,
    /// Whether started processes die with this process (not for a kept lab).
    pub tie_to_parent: bool,
    /// Directory for logs and files of processes started in the lab.
    pub dir: PathBuf,
}

/// Removes what labs of processes that no longer exist left behind (a lab kept with `--keep`,
/// or a run killed with SIGKILL): the processes in their namespaces, the namespaces, their pins.
/// Returns the namespaces removed.
pub fn remove_stale_labs() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return removed;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !of_a_dead_lab(name) {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("relay-lab-{name}")));
        removed.push(name.to_string());
    }
    // Their pins (`<namespace>` and `<namespace>-pass`), and pins whose namespace is already
    // gone (its process was killed after the namespace's drop ran, or the namespace was deleted
    // by hand): each holds a full set of relay maps and a link.
    if let Ok(entries) = std::fs::read_dir(LAB_BPFFS) {
        for entry in entries.flatten() {
            if of_a_dead_lab(&entry.file_name().to_string_lossy()) {
                let _ = relay_userspace::dataplane::loader::remove_pins(&entry.path());
            }
        }
    }
    removed
}

/// Whether `name` (`rl-<host>-<pid>-…`, a lab namespace or its pin directory) belongs to a lab
/// whose process no longer exists.
fn of_a_dead_lab(name: &str) -> bool {
    let mut parts = name.split('-');
    if parts.next() != Some("rl") {
        return false;
    }
    parts
        .nth(1)
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

impl NatLab {
    /// Builds the lab.
    pub fn create() -> Result<NatLab> {
        remove_stale_labs();
        ensure_lab_bpffs()?;
        let mut hosts = Vec::new();
        for host in Host::ALL {
            hosts.push((host, Netns::create(&format!("rl-{}", host.role()))?));
        }
        let dir = std::env::temp_dir().join(format!("relay-lab-{}", hosts[0].1.name()));
        std::fs::create_dir_all(&dir)?;
        let lab = NatLab {
            hosts,
            children: Vec::new(),
            tie_to_parent: true,
            dir,
        };
        lab.wire().context("building the lab network")?;
        Ok(lab)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: Host) -> &Netns {
        &self
            .hosts
            .iter()
            .find(|(h, _)| *h == host)
            .expect("every host exists")
            .1
    }

    fn wire(&self) -> Result<()> {
        for link in LINKS {
            let (ha, ia, _) = link.a;
            let (hb, ib, _) = link.b;
            self.ns(ha).ip(&[
                "link",
                "add",
                ia,
                "type",
                "veth",
                "peer",
                "name",
                ib,
                "netns",
                self.ns(hb).name(),
            ])?;
            for (host, iface, addrs) in [link.a, link.b] {
                let ns = self.ns(host);
                for a in addrs {
                    let mut args = vec!["addr", "add", a, "dev", iface];
                    if a.contains(':') {
                        args.push("nodad");
                    }
                    ns.ip(&args)?;
                }
                ns.ip(&["link", "set", iface, "up"])?;
            }
        }
        for (host, v4, v6) in ROUTES {
            let ns = self.ns(*host);
            ns.ip(&["route", "add", "default", "via", v4])?;
            if let Some(v6) = v6 {
                ns.ip(&["-6", "route", "add", "default", "via", v6])?;
            }
        }
        // The clients' IPv6 prefixes are routed (not translated) through their firewalls.
        for (prefix, via) in [
            ("2001:db8:a:1::/64", "2001:db8:a::2"),
            ("2001:db8:b:1::/64", "2001:db8:b::2"),
        ] {
            self.ns(Host::Inet)
                .ip(&["-6", "route", "add", prefix, "via", via])?;
        }
        for host in [Host::Inet, Host::NatA, Host::NatB] {
            let ns = self.ns(host);
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        // The internet does not filter spoofed sources (worst case for the spoofing tests).
        self.ns(Host::Inet)
            .sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        self.ns(Host::Inet)
            .sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        for (host, random) in [(Host::NatA, false), (Host::NatB, true)] {
            let path = self.dir.join(format!("{}.nft", host.role()));
            std::fs::write(&path, nat_rules(random))?;
            self.ns(host)
                .exec("nft", &["-f", path.to_str().context("path")?])?;
        }
        // Hosts that originate UDP compute full checksums (see the module docs).
        for host in [Host::ClientA, Host::ClientB, Host::Attacker, Host::Peer] {
            self.ns(host)
                .exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        }
        Ok(())
    }

    /// Loads nftables `rules` (a ruleset text) in `host`, saved as `name` in the lab directory.
    pub fn nft_script(&self, host: Host, name: &str, rules: &str) -> Result<()> {
        let path = self.dir.join(name);
        std::fs::write(&path, rules)?;
        self.ns(host)
            .exec("nft", &["-f", path.to_str().context("path")?])?;
        Ok(())
    }

    /// Forwards UDP `port` on NAT `nat`'s public address to the same port of `to` behind it
    /// (and lets it through the NAT's firewall): the port forward a user would configure to
    /// reach a peer directly.
    pub fn forward_udp_port(&self, nat: Host, port: u16, to: &str) -> Result<()> {
        let rules = format!(
            "table inet lab {{
  chain prerouting {{ type nat hook prerouting priority dstnat; iifname \"wan\" udp dport {port} dnat ip to {to}:{port}; }}
  chain forward {{ ct status dnat accept; }}
}}
"
        );
        self.nft_script(nat, &format!("{}-forward-{port}.nft", nat.role()), &rules)
    }

    /// Starts `program args…` in `host`'s namespace with output to `<dir>/<name>.log`; the
    /// process is killed when the lab is dropped.
    pub fn spawn(&mut self, host: Host, name: &str, program: &Path, args: &[&str]) -> Result<()> {
        let log = File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = Command::new("ip");
        if self.tie_to_parent {
            // Killed with us even if we are killed (SIGKILL, a test harness timeout): no
            // orphaned relays or sidecars outlive the lab.
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                use std::os::unix::process::CommandExt;
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .args(["netns", "exec", self.ns(host).name()])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Sends `signal` to process `name`.
    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let (_, child) = self
            .children
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no process {name}"))?;
        // `ip netns exec` execs the program: the child's pid is the program's.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)?;
        Ok(())
    }

    /// Stops process `name` with SIGTERM (then SIGKILL after 5 s) and returns its exit status.
    pub fn stop(&mut self, name: &str) -> Result<std::process::ExitStatus> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no process {name}"))?;
        let (_, mut child) = self.children.remove(i);
        terminate(&mut child)
    }

    /// Whether process `name` is still running.
    pub fn running(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of process `name` (`ip netns exec` execs it, so it is the program's own).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// The log of process `name` so far.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `program args…` in `host` and returns its stdout.
    pub fn exec(&self, host: Host, program: &str, args: &[&str]) -> Result<String> {
        self.ns(host).exec(program, args)
    }

    /// Runs `program args…` in `host` for at most `limit` (then it is killed) and returns what it
    /// printed on both streams, whatever its exit status (for clients whose status says
    /// nothing).
    pub fn exec_output(
        &self,
        host: Host,
        program: &str,
        args: &[&str],
        limit: Duration,
    ) -> Result<String> {
        let out = self
            .ns(host)
            .command("timeout")
            .args(["--kill-after=5", &limit.as_secs().max(1).to_string()])
            // Line-buffered, so what it printed survives being killed.
            .args(["stdbuf", "-oL", "-eL", program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Starts an iperf3 server (process `iperf3-server`) in `host` listening on `addr`, for one
    /// test if `once`, and gives it time to listen.
    pub fn iperf_server(&mut self, host: Host, addr: &str, once: bool) -> Result<()> {
        let mut args = vec!["-s", "-B", addr];
        if once {
            args.push("-1");
        }
        self.spawn(host, "iperf3-server", Path::new("/usr/bin/iperf3"), &args)?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// Runs iperf3 (TCP, one stream) from `host` to the server at `addr` for `seconds`.
    pub fn iperf(&self, host: Host, addr: &str, seconds: u32) -> Result<IperfRun> {
        let out = self.exec(
            host,
            "iperf3",
            &["-c", addr, "-t", &seconds.to_string(), "-J"],
        )?;
        IperfRun::parse(&out)
    }

    /// Waits until `check` holds, at most `limit`.
    pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        check()
    }

    /// Runs `f` on a thread inside `host`'s namespace (sockets it opens live there).
    pub fn in_host<T: Send>(&self, host: Host, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = self.ns(host);
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                let _inside = ns.enter()?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", ns.name()))?
        })
    }

    /// A relay endpoint of the lab.
    pub fn relay_endpoint(v6: bool, port: u16) -> SocketAddr {
        let ip: IpAddr = if v6 { addr::RELAY_V6 } else { addr::RELAY_V4 }
            .parse()
            .expect("valid");
        SocketAddr::new(ip, port)
    }
}

fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // `ip netns exec` execs the program, so the pid is the program's own.
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            return Ok(child.wait()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NatLab {
    /// A lab with no hosts (what a kept lab's owner is left with).
    pub fn empty() -> NatLab {
        NatLab {
            hosts: Vec::new(),
            children: Vec::new(),
            tie_to_parent: false,
            dir: PathBuf::new(),
        }
    }

    /// Leaves the lab running after this process exits: processes keep running, namespaces
    /// stay. `relay-lab down` (or the next lab) removes it. Returns the namespace names.
    pub fn keep(mut self) -> Vec<String> {
        for (_, child) in self.children.drain(..) {
            std::mem::forget(child);
        }
        let hosts = std::mem::take(&mut self.hosts);
        hosts.into_iter().map(|(_, ns)| ns.keep()).collect()
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = terminate(child);
        }
        // Namespaces are deleted by their own drop; an XDP program attached in one goes with
        // its interfaces.
    }
}

/// What one iperf3 client run measured at the receiving end.
#[derive(Debug)]
pub struct IperfRun {
    /// Bytes the server received.
    pub bytes: u64,
    /// Their rate, Mbit/s.
    pub mbps: f64,
    /// iperf3's whole JSON report.
    pub report: serde_json::Value,
}

impl IperfRun {
    /// Reads iperf3's JSON report (`-J`).
    pub fn parse(json: &str) -> Result<IperfRun> {
        let report: serde_json::Value = serde_json::from_str(json).context("iperf3's report")?;
        let received = &report["end"]["sum_received"];
        Ok(IperfRun {
            bytes: received["bytes"].as_u64().unwrap_or(0),
            mbps: received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6,
            report,
        })
    }
}

/// Sends `payload` from `from` to `to` over UDP and reports whether `receiver` got it within
/// `wait` (bounded: used for "does not arrive" assertions too).
pub fn udp_probe(
    from: &std::net::UdpSocket,
    to: SocketAddr,
    receiver: &std::net::UdpSocket,
    payload: &[u8],
    wait: Duration,
) -> Result<bool> {
    receiver.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        from.send_to(payload, to)?;
        while let Ok((n, _)) = receiver.recv_from(&mut buf) {
            if &buf[..n] == payload {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Checks that a binary the lab needs is installed.
pub fn require_tool(tool: &str) -> Result<()> {
    if run_checked(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
        bail!("{tool} is not installed: run `cargo xtask setup`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iperf3_report_gives_what_the_server_received() {
        let run = IperfRun::parse(
            r#"{"end": {"sum_received": {"bytes": 125000000, "bits_per_second": 333333333.3}}}"#,
        )
        .unwrap();
        assert_eq!(run.bytes, 125_000_000);
        assert!((run.mbps - 333.33).abs() < 0.01, "{}", run.mbps);
        let failed = IperfRun::parse(r#"{"error": "unable to connect to server"}"#).unwrap();
        assert_eq!((failed.bytes, failed.mbps), (0, 0.0));
        assert!(IperfRun::parse("iperf3: error").is_err());
    }
}
