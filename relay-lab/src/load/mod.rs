//! The load harness (`cargo xtask bench --only load`, `relay-lab bench-load`): the relay as a
//! service holding crowds, in the NAT lab, under the configuration and the unit limits it
//! ships with — the daemon is started through a soft open-files limit of 1024, as systemd
//! starts a unit without `LimitNOFILE`, with the unit's hard limit.
//!
//! 1. **A crowd behind one NAT address** ([`crowd`]): TURN clients over UDP, TCP and TLS from
//!    the lab's client A (behind nat-a), each Allocate, CreatePermission, ChannelBind and
//!    echoed data, against the relay and against coturn on its defaults, one after the other
//!    in the same lab: who succeeded, the time from a client's first Allocate to its first
//!    relayed byte, descriptors per allocation, memory and CPU.
//! 2. **The configured maxima at once** ([`maxima`]): TURN allocations, WireGuard pairs and
//!    sessions as configured, with the daemon's memory, descriptors, kernel map memory and
//!    control-plane CPU per allocation, pair and session.
//! 3. **Churn** ([`churn`]): allocate, refresh and delete at a steady rate on all three fronts;
//!    memory, descriptors, map entries and bound ports sampled, their slope per hour.
//! 4. **Floods** ([`flood`]): idle TCP connections and TLS handshakes that never finish, from
//!    one address and from many, while legitimate clients allocate.
//!
//! Benchmarks report numbers; the privileged smoke test (`privileged_load`) runs a small
//! version of each and checks only that the harness works and nothing was lost.

pub mod api;
pub mod churn;
pub mod client;
pub mod crowd;
pub mod flood;
pub mod maxima;
pub mod process;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use self::{
    churn::{ChurnOptions, ChurnReport},
    client::{Job, Server, Transport},
    crowd::CrowdSummary,
    flood::{FloodOptions, FloodReport},
    maxima::{Counts, MaximaReport},
};
use crate::{
    nat_lab::{Host, NatLab, addr},
    scenario::{Scenario, ScenarioOptions, TURN_PORT, TURN_REALM, TURN_SECRET, TURNS_PORT},
    turn_clients::{self, PEER_PORT},
};
use relay_userspace::{
    config::XdpMode,
    fronts::turn::auth::{rest_password, rest_username},
};

/// The soft open-files limit servers start with: systemd's default for a unit without
/// `LimitNOFILE`.
pub const SYSTEMD_DEFAULT_SOFT: u64 = 1024;
/// The shipped unit's `LimitNOFILE`: the hard limit servers get, where the machine allows it
/// ([`unit_hard`]).
pub const UNIT_LIMIT_NOFILE: u64 = 1 << 20;

/// The hard open-files limit servers start with: the unit's, unless this process's own hard
/// limit is lower — raising it needs CAP_SYS_RESOURCE, which some sandboxes (this project's
/// CI among them: 20 000) do not grant. Reported with the results.
pub fn unit_hard() -> u64 {
    relay_userspace::descriptors::Limit::current()
        .hard
        .min(UNIT_LIMIT_NOFILE)
}
/// Clients per REST user: the shipped per-user quota is 100 allocations.
const CLIENTS_PER_USER: usize = 50;

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadOptions {
    /// The `relay` binary.
    #[serde(skip)]
    pub relay_bin: PathBuf,
    /// Clients of the crowd (a third each over UDP, TCP and TLS).
    pub crowd_clients: usize,
    /// Seconds over which the crowd's clients start.
    pub crowd_ramp_s: f64,
    /// Messages each client relays.
    pub messages: u32,
    /// Bytes per message.
    pub message_size: usize,
    /// Also measure coturn with the same crowd.
    pub coturn: bool,
    /// Churn (none: skipped).
    pub churn: Option<ChurnOptions>,
    /// Idle TCP connections and TLS handshakes per flood, and legitimate clients during each
    /// (none: skipped).
    pub floods: Option<(u64, u64, usize)>,
    /// The maxima to hold at once, and the seconds over which the TURN clients start (none:
    /// skipped).
    pub maxima: Option<(Counts, f64)>,
}

impl LoadOptions {
    /// The full benchmark: the numbers (the shipped defaults' maxima: 65 536 sessions
    /// in all, pairs included; 16 384 TURN allocations).
    pub fn full(relay_bin: PathBuf) -> LoadOptions {
        LoadOptions {
            relay_bin,
            crowd_clients: 2000,
            crowd_ramp_s: 10.0,
            messages: 5,
            message_size: 100,
            coturn: true,
            churn: Some(ChurnOptions {
                seconds: 600.0,
                sessions_per_sec: 20,
                pairs_per_sec: 2,
                allocations_per_sec: 10,
                alive: 200,
            }),
            floods: Some((20_000, 2_000, 300)),
            maxima: Some((
                Counts {
                    sessions: u64::from(relay_common::maps::DEFAULT_MAX_SESSIONS) - 2_000,
                    pairs: 2_000,
                    allocations: u64::from(relay_common::turn::DEFAULT_MAX_ALLOCATIONS),
                },
                100.0,
            )),
        }
    }

    /// A small run of every part that checks the harness (the CI smoke test).
    pub fn quick(relay_bin: PathBuf) -> LoadOptions {
        LoadOptions {
            crowd_clients: 150,
            crowd_ramp_s: 2.0,
            churn: Some(ChurnOptions {
                seconds: 15.0,
                sessions_per_sec: 20,
                pairs_per_sec: 2,
                allocations_per_sec: 10,
                alive: 20,
            }),
            floods: Some((2_000, 200, 30)),
            maxima: Some((
                Counts {
                    sessions: 2_000,
                    pairs: 20,
                    allocations: 300,
                },
                3.0,
            )),
            ..LoadOptions::full(relay_bin)
        }
    }
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    /// What ran.
    pub options: LoadOptions,
    /// The hard open-files limit the servers had (the unit's, or this machine's if lower).
    pub hard_limit: u64,
    /// The crowd, per server (the relay first).
    pub crowd: Vec<CrowdSummary>,
    /// Churn.
    pub churn: Option<ChurnReport>,
    /// Floods: from one address, from many.
    pub floods: Vec<FloodReport>,
    /// The maxima.
    pub maxima: Option<MaximaReport>,
}

/// Runs the harness. Needs root, coturn (for the comparison) and the lab's tools.
pub fn run(options: LoadOptions) -> Result<LoadResult> {
    raise_own_limit()?;
    let mut result = LoadResult {
        options: options.clone(),
        hard_limit: unit_hard(),
        crowd: Vec::new(),
        churn: None,
        floods: Vec::new(),
        maxima: None,
    };
    let mut s = start_relay(&options)?;
    turn_clients::start_peer(&mut s.lab)?;
    let server = lab_server(&s.lab)?;
    let pid = s.lab.pid("relay").context("the relay is not running")?;
    result
        .crowd
        .push(run_crowd(&s.lab, &server, &options, pid, "relay")?);
    if let Some(churn) = options.churn {
        eprintln!("churn for {} s", churn.seconds);
        let jobs = jobs(&options, 100_000, &Transport::ALL, 1)?;
        let report = churn::run(
            &s.lab,
            pid,
            &server,
            churn,
            move |i| {
                let mut job = jobs[i as usize % jobs.len()].clone();
                job.refresh = true;
                job
            },
            || stats(&s),
        )?;
        eprintln!(
            "churn: {} sessions, {} pairs, {} TURN clients, {} failures; slope per hour: \
             RSS {:.0} KiB, descriptors {:.1}, sessions {:.1}, allocations {:.1}, UDP ports {:.1}",
            report.sessions_created,
            report.pairs_created,
            report.allocations_done,
            report.failures,
            report.slope_per_hour[0],
            report.slope_per_hour[1],
            report.slope_per_hour[2],
            report.slope_per_hour[3],
            report.slope_per_hour[4],
        );
        result.churn = Some(report);
    }
    if let Some((idle, tls, legit)) = options.floods {
        let many = extra_attacker_addresses(&s.lab)?;
        let one = vec![IpAddr::from([0, 0, 0, 0])];
        for (name, host, sources, idle, tls) in [
            ("idle TCP, one address", Host::ClientA, one.clone(), idle, 0),
            (
                "idle TCP, many addresses",
                Host::Attacker,
                many.clone(),
                idle,
                0,
            ),
            ("unfinished TLS, one address", Host::ClientA, one, 0, tls),
            (
                "unfinished TLS, many addresses",
                Host::Attacker,
                many.clone(),
                0,
                tls,
            ),
        ] {
            let flood = FloodOptions {
                name: name.to_string(),
                idle_tcp: idle,
                tls_handshakes: tls,
                sources,
            };
            // A fresh daemon for each flood (it adopts what is pinned): its memory is then
            // this flood's alone, not what an earlier one grew the heap to.
            s.restart_relay()?;
            let pid = s.lab.pid("relay").context("the relay is not running")?;
            let legit_jobs = jobs(&options, legit, &Transport::ALL, options.messages)?;
            let report = flood::run(&s.lab, host, pid, &server, flood, legit_jobs)?;
            eprintln!(
                "flood from {name}: {} held, {} refused; RSS {:.0} → {:.0} MiB; legitimate \
                 clients {}/{} (first byte median {:.0} ms, p99 {:.0} ms)",
                report.held,
                report.refused,
                report.rss_before_mib,
                report.rss_peak_mib,
                report.legit_succeeded,
                report.legit_clients,
                report.legit_first_byte.median_ms,
                report.legit_first_byte.p99_ms
            );
            result.floods.push(report);
            // The flood's connections are closed by the allocation deadline.
            std::thread::sleep(Duration::from_secs(12));
        }
    }
    if let Some((counts, ramp)) = options.maxima {
        eprintln!("maxima: {counts:?}");
        s.restart_relay()?;
        let pid = s.lab.pid("relay").context("the relay is not running")?;
        let allocation_jobs = jobs(&options, counts.allocations as usize, &[Transport::Udp], 0)?;
        let report = maxima::run(
            &s.lab,
            pid,
            &server,
            allocation_jobs,
            counts,
            Duration::from_secs_f64(ramp),
        )?;
        eprintln!(
            "maxima held: {} sessions, {} pairs, {} allocations; {:.0} MiB RSS, {} descriptors, \
             {:.0} MiB of maps",
            report.sessions.held,
            report.pairs.held,
            report.allocations.held,
            report.rss_mib,
            report.descriptors,
            report.map_mib
        );
        result.maxima = Some(report);
    }
    if options.coturn {
        stop_relay(&mut s)?;
        start_coturn(&mut s.lab)?;
        let pid = s.lab.pid("coturn").context("coturn is not running")?;
        result
            .crowd
            .push(run_crowd(&s.lab, &server, &options, pid, "coturn")?);
    }
    Ok(result)
}

/// Entries of the session table and TURN allocations, as `relay stats` reads them from the
/// pinned maps.
fn stats(s: &Scenario) -> (u64, u64) {
    let pin = s.pin_dir.to_string_lossy().into_owned();
    s.relay_cli(&["stats", "--json", "--pin-dir", &pin])
        .ok()
        .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
        .map_or((0, 0), |v| {
            (
                v["session_count"].as_u64().unwrap_or(0),
                v["allocations"].as_u64().unwrap_or(0),
            )
        })
}

/// Addresses the attacker floods from, added to its link (192.0.2.64/26).
fn extra_attacker_addresses(lab: &NatLab) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for last in 67..=126u8 {
        let ip = IpAddr::from([192, 0, 2, last]);
        let _ = lab.exec(
            Host::Attacker,
            "ip",
            &["addr", "add", &format!("{ip}/26"), "dev", "eth0"],
        );
        out.push(ip);
    }
    Ok(out)
}

/// The harness itself opens a socket per client and per flood connection: its soft limit goes
/// up to its hard one.
fn raise_own_limit() -> Result<()> {
    relay_userspace::descriptors::raise_soft_limit()
        .context("raising the harness's own open-files limit")?;
    Ok(())
}

/// The relay as shipped: default limits, XDP native, started through a soft limit of 1024.
fn start_relay(options: &LoadOptions) -> Result<Scenario> {
    let mut o = ScenarioOptions::new(options.relay_bin.clone(), XdpMode::Native);
    o.sessions = false;
    o.turn = true;
    o.wireguard = true;
    o.shipped_limits = true;
    o.open_files_soft = Some(SYSTEMD_DEFAULT_SOFT);
    o.open_files_hard = Some(unit_hard());
    o.ipv4_only = true;
    o.api_bulk = true;
    Scenario::start(o)
}

/// Stops the relay and removes its pinned state (its program too: nothing of it may touch
/// coturn's traffic).
fn stop_relay(s: &mut Scenario) -> Result<()> {
    s.lab.stop("relay")?;
    relay_userspace::dataplane::loader::remove_pins(&s.pin_dir)?;
    Ok(())
}

/// coturn on its defaults (UDP, TCP and TLS on the standard ports, relayed ports
/// 49152–65535, no quotas), with the lab's realm, REST secret and certificate, started
/// through the same soft limit as the relay.
fn start_coturn(lab: &mut NatLab) -> Result<()> {
    crate::nat_lab::require_tool("turnserver")?;
    let dir = lab.dir.clone();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let nofile = format!("--nofile={SYSTEMD_DEFAULT_SOFT}:{}", unit_hard());
    let args = [
        nofile.as_str(),
        "turnserver",
        "-n",
        "--listening-ip",
        addr::RELAY_V4,
        "--relay-ip",
        addr::RELAY_V4,
        "--realm",
        TURN_REALM,
        "--use-auth-secret",
        "--static-auth-secret",
        TURN_SECRET,
        "--cert",
        &path("turn.crt"),
        "--pkey",
        &path("turn.key"),
        "--simple-log",
        "--log-file",
        &path("coturn-server.log"),
    ];
    lab.spawn(
        Host::Relay,
        "coturn",
        std::path::Path::new("/usr/bin/prlimit"),
        &args,
    )?;
    let turn: SocketAddr = SocketAddr::new(addr::RELAY_V4.parse()?, TURN_PORT);
    let up = NatLab::wait_until(Duration::from_secs(10), || {
        lab.in_host(Host::ClientA, || std::net::TcpStream::connect(turn).is_ok())
            .unwrap_or(false)
    });
    if !up {
        bail!("coturn did not come up:\n{}", lab.log("coturn"));
    }
    Ok(())
}

/// The lab's TURN server addresses, and TLS trusting its certificate.
pub fn lab_server(lab: &NatLab) -> Result<Server> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(lab.dir.join("turn.crt"))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let ip = addr::RELAY_V4.parse()?;
    Ok(Server {
        turn: SocketAddr::new(ip, TURN_PORT),
        turns: SocketAddr::new(ip, TURNS_PORT),
        tls: Arc::new(tls),
    })
}

/// `n` clients' jobs, 50 per REST user: transports in turn (or UDP only), each relaying
/// `messages` (0: allocating only).
fn jobs(
    options: &LoadOptions,
    n: usize,
    transports: &[Transport],
    messages: u32,
) -> Result<Vec<Job>> {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let peer = SocketAddr::new(addr::PEER_V4.parse()?, PEER_PORT);
    Ok((0..n)
        .map(|i| {
            let username = rest_username(&format!("crowd{}", i / CLIENTS_PER_USER), expiry);
            let password = rest_password(TURN_SECRET.as_bytes(), &username);
            Job {
                transport: transports[i % transports.len()],
                username,
                password,
                peer,
                messages,
                size: options.message_size,
                id: i as u32,
                refresh: false,
                pad_first: messages == 0,
                stall: false,
            }
        })
        .collect())
}

/// Runs the crowd against the server `pid` and sums it up.
fn run_crowd(
    lab: &NatLab,
    server: &Server,
    options: &LoadOptions,
    pid: u32,
    name: &str,
) -> Result<CrowdSummary> {
    let before = process::descriptors(pid);
    let cpu = process::cpu_seconds(pid)?;
    let at_hold: Arc<Mutex<Option<(usize, u64)>>> = Arc::default();
    let sample = at_hold.clone();
    let outcomes = crowd::run(
        lab,
        Host::ClientA,
        server,
        jobs(
            options,
            options.crowd_clients,
            &Transport::ALL,
            options.messages,
        )?,
        Duration::from_secs_f64(options.crowd_ramp_s),
        move || {
            *sample.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((process::descriptors(pid), process::rss_kib(pid)));
        },
    )?;
    let cpu = process::cpu_seconds(pid)? - cpu;
    let (held, rss) = at_hold
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_default();
    let summary = crowd::summarise(name, &outcomes, (before, held), rss, cpu);
    if summary.succeeded == 0 {
        bail!(
            "{name}: no client relayed anything ({:?})\n{}",
            summary.failures,
            lab.log(if name == "coturn" { "coturn" } else { "relay" })
        );
    }
    eprintln!(
        "{name}: {} of {} clients relayed everything; first byte median {:.0} ms, p99 {:.0} ms; \
         {:.2} descriptors per allocation; {:.1} CPU s",
        summary.succeeded,
        summary.clients,
        summary.first_byte.median_ms,
        summary.first_byte.p99_ms,
        summary.descriptors_per_allocation,
        summary.cpu_seconds
    );
    Ok(summary)
}
