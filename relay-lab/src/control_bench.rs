//! Control-plane numbers: allocations per second through the HTTP API, bind handshakes per
//! second handled by the relay, memory per session (BPF maps and daemon heap), and the time to
//! fill a relay with a million sessions.
//!
//! Everything runs on this machine's two cores: for the API figure the load generator (HTTP
//! clients with keep-alive) competes with the daemon for them, so the figure is a floor.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_common::maps as names;
use serde::Serialize;

use crate::{Netns, netns::EnteredNetns};
use relay_userspace::{
    client::handshake::{Handshake, Step},
    config::Config,
    control::table::AllocationRequest,
    daemon::Daemon,
    dataplane::loader::remove_pins,
    fronts::geneve::SessionFront,
};

/// How much to measure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ControlBenchOptions {
    /// Seconds of API load.
    pub alloc_seconds: f64,
    /// Concurrent HTTP clients.
    pub concurrency: usize,
    /// Bind handshakes to time.
    pub binds: usize,
    /// Sessions for the fill measurement.
    pub fill: u32,
}

/// Results.
#[derive(Clone, Debug, Serialize)]
pub struct ControlBenchResult {
    /// Sessions allocated per second through the API (HTTP, JSON, auth, maps).
    pub allocations_per_sec: f64,
    /// API requests that failed during the load.
    pub api_errors: u64,
    /// Bind handshakes (request + answer, both verified, maps updated) per second of relay CPU.
    pub binds_per_sec: f64,
    /// Kernel memory of the maps the XDP program reads per session (session entry and per-CPU
    /// counters), bytes per session slot.
    pub fast_path_bytes_per_session: f64,
    /// Kernel memory of the userspace-only maps (forwarder counters, metadata), bytes per slot.
    pub control_bytes_per_session: f64,
    /// The daemon's own heap growth per session.
    pub heap_bytes_per_session: f64,
    /// Sessions filled.
    pub fill_sessions: u32,
    /// Seconds to allocate them (table + maps, no HTTP).
    pub fill_seconds: f64,
    /// Per-map kernel bytes per session slot.
    pub maps: Vec<(String, f64)>,
}

const TOKEN: &str = "benchmark-token-0123456789";

struct Instance {
    daemon: Option<Daemon>,
    pin_dir: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Instance {
    fn start(ns: &Netns, max_sessions: u32) -> Result<Instance> {
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-{max_sessions}", ns.name()));
        let yaml = format!(
            "xdp:\n  mode: off\nrelay:\n  port: 16081\n  listen: [198.51.100.1]\n  workers: 1\n\
             api:\n  listen: 127.0.0.1:0\n  max_body_bytes: 4096\n  requests_per_sec_per_source: 0\n  tokens:\n    - name: bench\n      \
             token: {TOKEN}\n      max_sessions: {max_sessions}\npin_dir: {}\nsessions:\n  \
             max_sessions: {max_sessions}\n  bind_lifetime: 1h\n  \
             binds_per_sec_per_source: 0\nlog:\n  level: warn\n",
            pin_dir.display()
        );
        let config = Config::parse(&yaml, "benchmark").map_err(|e| anyhow::anyhow!("{e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let daemon = runtime.block_on(Daemon::start(&config))?;
        Ok(Instance {
            daemon: Some(daemon),
            pin_dir,
            runtime,
        })
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.runtime.block_on(d.stop(false));
        }
        let _ = remove_pins(&self.pin_dir);
    }
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Kernel memory of a pinned map and its capacity (bpftool's `bytes_memlock`).
fn map_memory(pin: &Path) -> Result<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(pin)
        .output()
        .context("running bpftool (installed by cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "bpftool map show {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bytes = v["bytes_memlock"].as_u64().context("bytes_memlock")?;
    let entries = v["max_entries"].as_u64().context("max_entries")?;
    Ok((bytes, entries))
}

fn allocations_per_sec(instance: &Instance, options: &ControlBenchOptions) -> Result<(f64, u64)> {
    let api: SocketAddr = instance.daemon().started.api;
    let url = format!("http://{api}/v1/sessions");
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    instance.runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(options.concurrency)
            .build()?;
        let mut tasks = Vec::new();
        for _ in 0..options.concurrency {
            let (client, url, ok, errors, stop) = (
                client.clone(),
                url.clone(),
                ok.clone(),
                errors.clone(),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let r = client.post(&url).bearer_auth(TOKEN).send().await;
                    match r {
                        Ok(resp) if resp.status().as_u16() == 201 => {
                            let _ = resp.bytes().await;
                            ok.fetch_add(1, Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Relaxed);
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(options.alloc_seconds)).await;
        stop.store(true, Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok((ok.load(Relaxed) as f64 / elapsed, errors.load(Relaxed)))
}

fn binds_per_sec(instance: &Instance, binds: usize) -> Result<f64> {
    let daemon = instance.daemon();
    let plane = &daemon.plane;
    let control = daemon
        .front::<SessionFront>()
        .context("no session front")?
        .control();
    let mut sessions = Vec::with_capacity(binds);
    {
        let mut p = plane.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..binds {
            let (s, _) = p.allocate("bench", AllocationRequest::default())?;
            sessions.push((s.vni, s.legs[0].key));
        }
    }
    let mut relay_time = Duration::ZERO;
    for (i, (vni, key)) in sessions.iter().enumerate() {
        let src = SocketAddr::from(([198, 51, 100, (i % 250) as u8 + 2], 1024 + (i / 250) as u16));
        let mut hs = Handshake::new(*vni, 0, *key);
        let request = hs.start(Instant::now(), 1 + i as u64);
        let t = Instant::now();
        let challenge = control
            .handle(&request, src, Instant::now())?
            .context("no challenge")?;
        relay_time += t.elapsed();
        let Step::Send(answer) = hs.on_datagram(&challenge, Instant::now()) else {
            bail!("the client refused the challenge");
        };
        let t = Instant::now();
        let bound = control
            .handle(&answer, src, Instant::now())?
            .context("not bound")?;
        relay_time += t.elapsed();
        if !matches!(hs.on_datagram(&bound, Instant::now()), Step::Bound { .. }) {
            bail!("bind {i} did not complete");
        }
    }
    Ok(binds as f64 / relay_time.as_secs_f64())
}

/// Runs every control-plane measurement (needs root: namespace and BPF maps).
pub fn run(options: ControlBenchOptions) -> Result<ControlBenchResult> {
    let ns = Netns::create("rb-ctl")?;
    ns.ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"])?;
    let _inside: EnteredNetns = ns.enter()?;

    let capacity =
        ((options.alloc_seconds * 60_000.0) as u32 + options.binds as u32 + 1024).max(65_536);
    let (allocations_per_sec, api_errors, binds_per_sec) = {
        let instance = Instance::start(&ns, capacity)?;
        let (rate, errors) = allocations_per_sec(&instance, &options)?;
        let binds = binds_per_sec(&instance, options.binds)?;
        (rate, errors, binds)
    };

    let instance = Instance::start(&ns, options.fill)?;
    let rss_before = rss();
    let started = Instant::now();
    {
        let mut plane = instance
            .daemon()
            .plane
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for _ in 0..options.fill {
            plane.allocate("bench", AllocationRequest::default())?;
        }
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    let heap_bytes_per_session = rss().saturating_sub(rss_before) as f64 / options.fill as f64;
    let mut maps = Vec::new();
    let mut fast_path = 0.0;
    let mut control = 0.0;
    for name in [
        names::SESSION_SLOTS,
        names::SESSIONS,
        names::SESSION_STATS,
        names::USERSPACE_STATS,
        names::SESSION_META,
    ] {
        let (bytes, entries) = map_memory(&instance.pin_dir.join(name))?;
        let per = bytes as f64 / entries as f64;
        if [names::SESSION_SLOTS, names::SESSIONS, names::SESSION_STATS].contains(&name) {
            fast_path += per;
        } else {
            control += per;
        }
        maps.push((name.to_string(), per));
    }
    Ok(ControlBenchResult {
        allocations_per_sec,
        api_errors,
        binds_per_sec,
        fast_path_bytes_per_session: fast_path,
        control_bytes_per_session: control,
        heap_bytes_per_session,
        fill_sessions: options.fill,
        fill_seconds,
        maps,
    })
}
