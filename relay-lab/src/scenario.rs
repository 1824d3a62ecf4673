//! A relay at work in the NAT lab: the `relay` daemon on the relay host, a session allocated
//! with labels through the API, and a `relay client join` sidecar on each client. Tests, the demo
//! and the benchmarks build on it.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode as AyaMode;

use crate::nat_lab::{Host, INET_RELAY_IFS, LAB_BPFFS, NatLab, RELAY_IF};
use relay_userspace::{
    api::types::SessionDetails,
    config::XdpMode,
    dataplane::{Dataplane, LoadOptions, RelayMaps, loader::remove_pins, object::PROGRAM_PASS},
};

/// The relay's API token in the lab.
pub const LAB_TOKEN: &str = "lab-token-0123456789abcdef";
/// The relay port in the lab.
pub const LAB_PORT: u16 = 6081;
/// Where each client's application sends (the sidecar's port).
pub const SIDECAR_PORT: u16 = 51821;
/// Where each client's application listens: the sidecar's default delivery port (WireGuard's
/// conventional `ListenPort`), so the lab's sidecars need no `--app`.
pub const APP_PORT: u16 = relay_userspace::client::link::WIREGUARD_LISTEN_PORT;

/// How to run the scenario.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// The `relay` binary.
    pub relay_bin: PathBuf,
    /// XDP mode of the relay.
    pub xdp: XdpMode,
    /// Relay endpoint family each client uses: `[A, B]`, true for IPv6.
    pub v6: [bool; 2],
    /// Client bind refresh interval.
    pub keepalive: Duration,
    /// Clients re-bind after this much relay silence while sending.
    pub silence: Duration,
    /// Labels of the session's legs.
    pub labels: [String; 2],
    /// Leave everything running when this process exits (`relay-lab demo --keep`).
    pub keep: bool,
    /// Allocate a session and start the sidecars (the session protocol's scenario); off for
    /// scenarios of other fronts.
    pub sessions: bool,
    /// Run the TURN front ([`TURN_REALM`], [`TURN_SECRET`], [`TURN_USER`]) with TLS on
    /// [`TURNS_PORT`].
    pub turn: bool,
    /// Run the WireGuard front on [`WIREGUARD_RELAY_PORTS`] (snippets with
    /// `PersistentKeepalive` [`WIREGUARD_KEEPALIVE`]).
    pub wireguard: bool,
    /// The fronts with the limits they ship with (`deploy/relay.example.yaml`'s defaults: TURN's
    /// per-source request rate, per-user quota and whole relayed port range, WireGuard's port
    /// range) instead of the lab's (no request limit, [`TURN_QUOTA`], [`TURN_RELAY_PORTS`],
    /// [`WIREGUARD_RELAY_PORTS`]).
    pub shipped_limits: bool,
    /// With `shipped_limits`: keys of the `turn:` section to set anyway, as YAML lines
    /// indented by two spaces (`"  max_connections_per_source: 8\n"`).
    pub turn_keys: String,
    /// Start the daemon with this soft open-files limit (its hard limit stays the lab's), as
    /// systemd starts a service without `LimitNOFILE`: the daemon must raise it itself.
    pub open_files_soft: Option<u64>,
    /// The relay listens on its IPv4 address only (a pair's ports then take one descriptor
    /// each, not two).
    pub ipv4_only: bool,
    /// The lab token may hold as many sessions as the relay, and the API has no per-source
    /// request limit: an application server allocating for all its users (the load harness).
    pub api_bulk: bool,
    /// With `open_files_soft`: the hard limit (a unit's `LimitNOFILE`); default the lab's.
    pub open_files_hard: Option<u64>,
    /// Run each sidecar with exactly these arguments (after `relay`; [`TICKET_PLACEHOLDER`]
    /// stands for the leg's ticket) instead of the lab's (family, quick timers): the README's
    /// command, word for word.
    pub join_command: Option<Vec<String>>,
    /// The relay is not the lab's process: something else runs it in the relay host's
    /// namespace (a container that installed a package) with the configuration the scenario
    /// writes to `relay.yaml` in the lab's directory, whose `pin_dir` is then the packages'
    /// default. This is that pin directory as this process sees it. [`Scenario::start`] returns
    /// once the lab is up; [`Scenario::open_session`] allocates when the relay runs.
    pub external_relay: Option<PathBuf>,
    /// More arguments for `relay serve` (e.g. `--clear-drain`).
    pub serve_args: Vec<String>,
    /// Appended to the relay's configuration (a `fleet:` section, say).
    pub extra_config: String,
}

/// How the README writes a ticket in its commands; replaced by the leg's real ticket.
pub const TICKET_PLACEHOLDER: &str = "relay1.…";

/// The TURN realm in the lab.
pub const TURN_REALM: &str = "lab.relay.test";
/// The TURN REST shared secret in the lab.
pub const TURN_SECRET: &str = "lab-turn-shared-secret-0123";
/// A static TURN user in the lab: (name, password).
pub const TURN_USER: (&str, &str) = ("lab-user", "lab-password");
/// The TURN port in the lab (UDP and TCP; the default).
pub const TURN_PORT: u16 = 3478;
/// TURN over TLS port in the lab.
pub const TURNS_PORT: u16 = 5349;
/// Allocations one TURN user may hold in the lab.
pub const TURN_QUOTA: u32 = 8;
/// The relayed port range in the lab.
pub const TURN_RELAY_PORTS: (u16, u16) = (50_000, 50_999);

/// The WireGuard pairs' relay port range in the lab.
pub const WIREGUARD_RELAY_PORTS: (u16, u16) = (45_000, 45_099);
/// `PersistentKeepalive` of the lab's WireGuard snippets (the configuration's default).
pub const WIREGUARD_KEEPALIVE: u32 = 25;

/// The relay's metrics endpoint in the lab (on the relay host's loopback).
pub const LAB_METRICS: &str = "127.0.0.1:9101";

impl ScenarioOptions {
    /// Defaults: IPv4 for both clients, quick keepalives so tests see re-binds soon.
    pub fn new(relay_bin: PathBuf, xdp: XdpMode) -> ScenarioOptions {
        ScenarioOptions {
            relay_bin,
            xdp,
            v6: [false, false],
            keepalive: Duration::from_secs(2),
            silence: Duration::from_secs(2),
            labels: ["alice-laptop".into(), "office-nas".into()],
            keep: false,
            sessions: true,
            turn: false,
            wireguard: false,
            shipped_limits: false,
            turn_keys: String::new(),
            open_files_soft: None,
            open_files_hard: None,
            ipv4_only: false,
            api_bulk: false,
            join_command: None,
            external_relay: None,
            serve_args: Vec::new(),
            extra_config: String::new(),
        }
    }
}

/// The running scenario. Dropping it stops everything and removes the lab.
pub struct Scenario {
    /// The lab (dropped last).
    pub lab: NatLab,
    /// The relay's pin directory.
    pub pin_dir: PathBuf,
    /// The session the clients share.
    pub session: SessionDetails,
    /// Options it runs with.
    pub options: ScenarioOptions,
    /// The pass-everything program on the router side of the relay's link (native XDP_TX on
    /// a veth only delivers to a peer that runs XDP itself).
    pass: Option<(Dataplane, PathBuf)>,
    /// Other relays of the fleet: process name, host, pin directory.
    fleet: Vec<(String, Host, PathBuf)>,
}

fn relay_config(options: &ScenarioOptions, pin_dir: &Path, dir: &Path) -> String {
    let mode = options.xdp.name();
    let listen = if options.ipv4_only {
        format!("  listen: [{}]\n", crate::nat_lab::addr::RELAY_V4)
    } else {
        String::new()
    };
    let (bulk_rate, bulk_quota) = if options.api_bulk {
        (
            "  requests_per_sec_per_source: 0\n",
            format!(
                "      max_sessions: {}\n",
                relay_common::maps::DEFAULT_MAX_SESSIONS
            ),
        )
    } else {
        ("", String::new())
    };
    let mut config = format!(
        "interfaces: [eth0]\nxdp:\n  mode: {mode}\nrelay:\n  port: {LAB_PORT}\n{listen}api:\n  \
         listen: 127.0.0.1:8080\n{bulk_rate}  tokens:\n    - name: lab\n      token: {LAB_TOKEN}\n      admin: true\n\
         {bulk_quota}pin_dir: {}\nlog:\n  level: info\nmetrics:\n  listen: {LAB_METRICS}\n  top_sessions: 5\n",
        pin_dir.display()
    );
    if options.turn {
        if !options.shipped_limits {
            config = config.replace(
                "level: info",
                "level: info,relay_userspace::fronts::turn=debug",
            );
        }
        let (first, last) = TURN_RELAY_PORTS;
        let lab_limits = if options.shipped_limits {
            options.turn_keys.clone()
        } else {
            format!(
                "  relay_ports: {first}-{last}\n  requests_per_sec_per_source: 0\n  \
                 max_allocations_per_user: {TURN_QUOTA}\n"
            )
        };
        config.push_str(&format!(
            "turn:\n  realm: {TURN_REALM}\n{lab_limits}  secrets: [{TURN_SECRET}]\n  \
             users:\n    - name: {}\n      password: {}\n  tls:\n    cert: {}\n    key: {}\n    \
             ports: [{TURNS_PORT}]\nsessions:\n  leg_addresses:\n    deny: [{}]\n",
            TURN_USER.0,
            TURN_USER.1,
            dir.join("turn.crt").display(),
            dir.join("turn.key").display(),
            crate::nat_lab::addr::DENIED_NET,
        ));
    }
    if options.wireguard {
        let (first, last) = WIREGUARD_RELAY_PORTS;
        let ports = if options.shipped_limits {
            String::new()
        } else {
            format!("  relay_ports: {first}-{last}\n")
        };
        config.push_str(&format!(
            "wireguard:\n{ports}  keepalive: {WIREGUARD_KEEPALIVE}\n"
        ));
    }
    config
}

/// The command that starts the daemon with `config`: the binary itself, or through
/// `prlimit` when the scenario lowers its soft open-files limit.
fn relay_command(options: &ScenarioOptions, config: &Path) -> Result<(PathBuf, Vec<String>)> {
    let bin = options.relay_bin.to_str().context("path")?.to_string();
    let config = config.to_str().context("path")?.to_string();
    let mut serve = vec!["serve".to_string(), "--config".to_string(), config];
    serve.extend(options.serve_args.iter().cloned());
    Ok(match options.open_files_soft {
        None => (options.relay_bin.clone(), serve),
        Some(soft) => {
            let hard = options
                .open_files_hard
                .unwrap_or_else(|| relay_userspace::descriptors::Limit::current().hard);
            let mut args = vec![format!("--nofile={soft}:{hard}"), bin];
            args.extend(serve);
            (PathBuf::from("/usr/bin/prlimit"), args)
        }
    })
}

/// A self-signed certificate for the relay's lab addresses (TURN over TLS), written into `dir`.
pub(crate) fn write_turn_certificate(dir: &Path) -> Result<()> {
    let names = vec![
        crate::nat_lab::addr::RELAY_V4.to_string(),
        crate::nat_lab::addr::RELAY_V6.to_string(),
        TURN_REALM.to_string(),
    ];
    let pair = rcgen::generate_simple_self_signed(names)?;
    std::fs::write(dir.join("turn.crt"), pair.cert.pem())?;
    std::fs::write(dir.join("turn.key"), pair.signing_key.serialize_pem())?;
    Ok(())
}

impl Scenario {
    /// Builds the lab and starts the relay, the session and both sidecars; returns once both
    /// legs are bound.
    pub fn start(options: ScenarioOptions) -> Result<Scenario> {
        let mut lab = NatLab::create()?;
        lab.tie_to_parent = !options.keep;
        let pin_dir = match &options.external_relay {
            Some(dir) => dir.clone(),
            None => Path::new(LAB_BPFFS).join(lab.ns(Host::Relay).name()),
        };
        let config_pin_dir = match options.external_relay {
            Some(_) => PathBuf::from(relay_common::maps::DEFAULT_PIN_DIR),
            None => pin_dir.clone(),
        };
        let mut pass = None;
        if options.xdp != XdpMode::Off {
            let pins = Path::new(LAB_BPFFS).join(format!("{}-pass", lab.ns(Host::Relay).name()));
            let mut dp = Dataplane::load(&LoadOptions {
                pin_dir: pins.clone(),
                max_sessions: 4,
                max_allocations: 4,
                nexthop_cache_entries: 4,
                shared_from: None,
            })?;
            let _inside = lab.ns(Host::Inet).enter()?;
            // Pinned, so a kept lab (`relay-lab demo --keep`) keeps working after we exit. On
            // every relay host's link: a test may start more relays of the fleet.
            for (_, interface) in INET_RELAY_IFS {
                dp.attach_pinned(PROGRAM_PASS, interface, AyaMode::Driver)?;
            }
            pass = Some((dp, pins));
        }
        if options.turn {
            write_turn_certificate(&lab.dir)?;
        }
        let config_path = lab.dir.join("relay.yaml");
        std::fs::write(
            &config_path,
            relay_config(&options, &config_pin_dir, &lab.dir) + &options.extra_config,
        )?;
        if options.external_relay.is_none() {
            let (program, args) = relay_command(&options, &config_path)?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.spawn(Host::Relay, "relay", &program, &args)?;
        }
        let mut scenario = Scenario {
            lab,
            pin_dir,
            session: SessionDetails {
                vni: 0,
                token: String::new(),
                state: String::new(),
                created: String::new(),
                relay: Default::default(),
                bind_lifetime_s: 0,
                idle_lifetime_s: 0,
                legs: Vec::new(),
            },
            options,
            pass,
            fleet: Vec::new(),
        };
        if scenario.options.external_relay.is_some() {
            return Ok(scenario);
        }
        scenario.wait_for_api()?;
        if scenario.options.sessions {
            scenario.open_session()?;
        }
        Ok(scenario)
    }

    /// Allocates the session through the API and starts both sidecars; returns once both legs
    /// are bound. (What [`Scenario::start`] does unless the relay is external.)
    pub fn open_session(&mut self) -> Result<()> {
        let scenario = self;
        scenario.wait_for_api()?;
        scenario.session = scenario.create_session()?;
        for (leg, host) in [(0, Host::ClientA), (1, Host::ClientB)] {
            scenario.start_sidecar(leg, host, &format!("sidecar-{}", ["a", "b"][leg]))?;
        }
        if !NatLab::wait_until(Duration::from_secs(15), || {
            scenario.session_state().is_ok_and(|s| s.state == "bound")
        }) {
            bail!(
                "the clients did not bind within 15 s\n--- relay ---\n{}\n--- sidecar-a ---\n{}\n--- sidecar-b ---\n{}",
                scenario.lab.log("relay"),
                scenario.lab.log("sidecar-a"),
                scenario.lab.log("sidecar-b")
            );
        }
        Ok(())
    }

    /// Stops the relay daemon (SIGTERM: the fast path stays pinned) and starts a new one with
    /// the same configuration, which adopts the pinned state; returns once its API answers.
    pub fn restart_relay(&mut self) -> Result<()> {
        let status = self.lab.stop("relay")?;
        if !status.success() {
            bail!("the relay exited with {status}:\n{}", self.lab.log("relay"));
        }
        self.start_relay()
    }

    /// Starts the relay daemon again after a stop (`lab.stop("relay")`); returns once its API
    /// answers.
    pub fn start_relay(&mut self) -> Result<()> {
        let (program, args) = relay_command(&self.options, &self.lab.dir.join("relay.yaml"))?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn(Host::Relay, "relay", &program, &args)?;
        self.wait_for_api()
    }

    /// Starts another relay of the fleet on `host` (Relay2, Relay3) as process `name`, with
    /// this scenario's configuration and `extra_config` (its own `fleet:` section) instead of
    /// the first relay's; returns once its API answers. Stopped and unpinned with the scenario.
    pub fn start_fleet_relay(&mut self, host: Host, name: &str, extra_config: &str) -> Result<()> {
        let pin_dir = Path::new(LAB_BPFFS).join(self.lab.ns(host).name());
        let config = self.lab.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            relay_config(&self.options, &pin_dir, &self.lab.dir) + extra_config,
        )?;
        let (program, args) = relay_command(&self.options, &config)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn(host, name, &program, &args)?;
        self.fleet.push((name.to_string(), host, pin_dir));
        let ok = NatLab::wait_until(Duration::from_secs(10), || {
            self.relay_cli_on(host, &["drain", "--status"]).is_ok()
        });
        if !ok {
            bail!("relay {name} did not come up:\n{}", self.lab.log(name));
        }
        Ok(())
    }

    /// Stops and starts again the fleet relay `name` (its pinned state stays: it adopts).
    pub fn restart_fleet_relay(&mut self, name: &str) -> Result<()> {
        let (_, host, _) = self
            .fleet
            .iter()
            .find(|(n, _, _)| n == name)
            .cloned()
            .context("no such fleet relay")?;
        let status = self.lab.stop(name)?;
        if !status.success() {
            bail!("{name} exited with {status}:\n{}", self.lab.log(name));
        }
        let config = self.lab.dir.join(format!("{name}.yaml"));
        let (program, args) = relay_command(&self.options, &config)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn(host, name, &program, &args)?;
        if !NatLab::wait_until(Duration::from_secs(10), || {
            self.relay_cli_on(host, &["drain", "--status"]).is_ok()
        }) {
            bail!("{name} did not come back:\n{}", self.lab.log(name));
        }
        Ok(())
    }

    /// Runs the `relay` CLI on `host` (a relay of the fleet) with the lab's token.
    pub fn relay_cli_on(&self, host: Host, args: &[&str]) -> Result<String> {
        let token = format!("RELAY_TOKEN={LAB_TOKEN}");
        let bin = self.options.relay_bin.to_str().context("path")?;
        let mut argv = vec![token.as_str(), bin];
        argv.extend_from_slice(args);
        self.lab.exec(host, "env", &argv)
    }

    /// Runs the `relay` CLI on the relay host with the lab's token.
    pub fn relay_cli(&self, args: &[&str]) -> Result<String> {
        self.relay_cli_on(Host::Relay, args)
    }

    pub fn wait_for_api(&mut self) -> Result<()> {
        // The token's view, not only liveness: the API answers with this lab's token (a drained
        // relay answers too, so no probe allocation).
        let ok = NatLab::wait_until(Duration::from_secs(10), || {
            self.relay_cli(&["drain", "--status"]).is_ok()
        });
        if !ok {
            bail!(
                "the relay's API did not come up:\n{}",
                self.lab.log("relay")
            );
        }
        Ok(())
    }

    fn create_session(&self) -> Result<SessionDetails> {
        let out = self.relay_cli(&[
            "client",
            "create",
            "--json",
            "--label-a",
            &self.options.labels[0],
            "--label-b",
            &self.options.labels[1],
        ])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The session as the API shows it now.
    pub fn session_state(&self) -> Result<SessionDetails> {
        let out = self.relay_cli(&["client", "get", "--json", &self.session.vni.to_string()])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Starts (or restarts) the sidecar of leg `leg` on `host` as process `name`.
    pub fn start_sidecar(&mut self, leg: usize, host: Host, name: &str) -> Result<()> {
        let ticket = self.session.legs[leg]
            .ticket
            .clone()
            .context("the API returned no ticket")?;
        let bin = self.options.relay_bin.clone();
        let args: Vec<String> = match &self.options.join_command {
            Some(command) => command
                .iter()
                .map(|a| a.replace(TICKET_PLACEHOLDER, &ticket))
                .collect(),
            // No --app: the sidecar's default (WireGuard's port, where the lab's applications
            // listen) is what users get too.
            None => [
                "client",
                "join",
                "--ticket",
                &ticket,
                "--listen",
                &format!("127.0.0.1:{SIDECAR_PORT}"),
                "--family",
                if self.options.v6[leg] { "v6" } else { "v4" },
                "--keepalive",
                &format!("{}ms", self.options.keepalive.as_millis()),
                "--silence",
                &format!("{}ms", self.options.silence.as_millis()),
            ]
            .map(String::from)
            .to_vec(),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.spawn(host, name, &bin, &args)
    }

    /// A UDP socket for the application on `host` (bound to the app port).
    pub fn app_socket(&self, host: Host) -> Result<UdpSocket> {
        self.lab
            .in_host(host, || UdpSocket::bind(("127.0.0.1", APP_PORT)))?
            .context("binding the application socket")
    }

    /// Streams `count` sequence-numbered datagrams from client A's application to B's, one
    /// every `gap`, while `during` runs (a restart, an upgrade); returns the sequence numbers B
    /// never received.
    pub fn lost_while(
        &mut self,
        count: u32,
        gap: Duration,
        during: impl FnOnce(&mut Scenario),
    ) -> Result<Vec<u32>> {
        let a = self.app_socket(Host::ClientA)?;
        let b = self.app_socket(Host::ClientB)?;
        b.set_read_timeout(Some(Duration::from_secs(3)))?;
        let receiver = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut buf = [0u8; 64];
            while let Ok((n, _)) = b.recv_from(&mut buf) {
                if n == 4 {
                    seen.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                }
                if seen.len() == count as usize {
                    break;
                }
            }
            seen
        });
        let sender = std::thread::spawn(move || {
            for seq in 0..count {
                let _ = a.send_to(&seq.to_be_bytes(), Scenario::sidecar_addr());
                std::thread::sleep(gap);
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        during(self);
        sender.join().expect("the sender thread");
        let seen = receiver.join().expect("the receiver thread");
        Ok((0..count).filter(|n| !seen.contains(n)).collect())
    }

    /// Where an application on a client sends to reach its peer.
    pub fn sidecar_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], SIDECAR_PORT))
    }

    /// GET `path` from `addr` on the relay host (the metrics endpoint); the body of a 200.
    pub fn http_get(&self, addr: &str, path: &str) -> Result<String> {
        self.http_get_on(Host::Relay, addr, path)
    }

    /// [`Scenario::http_get`] on another host (a relay of the fleet).
    pub fn http_get_on(&self, host: Host, addr: &str, path: &str) -> Result<String> {
        use std::io::{Read, Write};
        let (addr, path) = (addr.to_string(), path.to_string());
        self.lab.in_host(host, move || -> Result<String> {
            let mut c = std::net::TcpStream::connect(&addr)?;
            write!(c, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n")?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            if !(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")) {
                bail!("GET {path}: {text}");
            }
            Ok(text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string())
        })?
    }

    /// The id of the XDP program the kernel runs on the relay's interface (None: nothing
    /// attached) — what an upgrade swaps and a removal detaches.
    pub fn xdp_program(&self) -> Result<Option<u64>> {
        let out = self
            .lab
            .exec(Host::Relay, "ip", &["-j", "-d", "link", "show", RELAY_IF])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v[0]["xdp"]["prog"]["id"].as_u64())
    }

    /// The relay's pinned maps.
    pub fn maps(&self) -> Result<RelayMaps> {
        Ok(RelayMaps::open_pinned(&self.pin_dir)?)
    }
}

impl Scenario {
    /// Leaves the lab running (processes, namespaces, pins); returns the namespace names.
    pub fn keep(mut self) -> Vec<String> {
        self.pass = None; // its link is pinned: the program stays attached
        let lab = std::mem::replace(&mut self.lab, NatLab::empty());
        std::mem::forget(self);
        lab.keep()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // Processes first (the lab's drop would do it too), then the pinned state: the relay
        // leaves it on purpose when it stops.
        for name in ["sidecar-a", "sidecar-b", "relay"] {
            let _ = self.lab.stop(name);
        }
        let _ = remove_pins(&self.pin_dir);
        for (name, _, pins) in std::mem::take(&mut self.fleet) {
            let _ = self.lab.stop(&name);
            let _ = remove_pins(&pins);
        }
        if let Some((dp, pins)) = self.pass.take() {
            drop(dp);
            let _ = remove_pins(&pins);
        }
    }
}
