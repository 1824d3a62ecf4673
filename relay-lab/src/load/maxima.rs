//! The configured maxima held at once: sessions and WireGuard pairs through the API, then TURN
//! allocations from a crowd behind one NAT, each step measured — the daemon's memory,
//! descriptors and CPU per session, pair and allocation, and the kernel maps' memory.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;

use super::{
    api::{self, Api},
    client::{Job, Server},
    crowd, process,
};
use crate::nat_lab::{Host, NatLab};

/// How many of each.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Counts {
    /// Sessions (a pair is a session too: together they fill `sessions.max_sessions`).
    pub sessions: u64,
    /// WireGuard pairs.
    pub pairs: u64,
    /// TURN allocations.
    pub allocations: u64,
}

/// What one kind of state costs the daemon, per item.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerItem {
    /// Items asked for.
    pub asked: u64,
    /// Items held.
    pub held: u64,
    /// Resident memory, bytes per item.
    pub rss_bytes: f64,
    /// Descriptors per item.
    pub descriptors: f64,
    /// Control-plane CPU per item, microseconds (creating it, through the API or the TURN
    /// protocol).
    pub cpu_us: f64,
    /// Seconds to create them all.
    pub seconds: f64,
}

/// The whole measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MaximaReport {
    /// Sessions.
    pub sessions: PerItem,
    /// WireGuard pairs.
    pub pairs: PerItem,
    /// TURN allocations.
    pub allocations: PerItem,
    /// Why TURN clients failed, if some did.
    pub allocation_failures: std::collections::BTreeMap<String, usize>,
    /// With everything held: resident memory (MiB), descriptors, kernel map memory (MiB).
    pub rss_mib: f64,
    /// Descriptors held.
    pub descriptors: usize,
    /// Memory of the BPF maps the daemon holds (preallocated for the configured maxima).
    pub map_mib: f64,
    /// CPU the daemon spends per second with everything held and nothing changing (its
    /// tickers: expiry, counters), milliseconds.
    pub cpu_at_rest_ms_per_sec: f64,
}

/// How long the daemon's CPU at rest is measured.
const AT_REST: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
struct Snapshot {
    rss_kib: u64,
    descriptors: usize,
    cpu: f64,
}

fn snapshot(pid: u32) -> Result<Snapshot> {
    Ok(Snapshot {
        rss_kib: process::rss_kib(pid),
        descriptors: process::descriptors(pid),
        cpu: process::cpu_seconds(pid)?,
    })
}

fn per_item(asked: u64, held: u64, before: Snapshot, after: Snapshot, seconds: f64) -> PerItem {
    let n = held.max(1) as f64;
    PerItem {
        asked,
        held,
        rss_bytes: (after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / n,
        descriptors: after.descriptors.saturating_sub(before.descriptors) as f64 / n,
        cpu_us: (after.cpu - before.cpu) * 1e6 / n,
        seconds,
    }
}

/// Fills the relay `pid` with `counts` (sessions and pairs from the relay host, allocations
/// from client A over `ramp`), measures, and lets go of the allocations (the sessions and pairs
/// stay).
pub fn run(
    lab: &NatLab,
    pid: u32,
    server: &Server,
    allocation_jobs: Vec<Job>,
    counts: Counts,
    ramp: Duration,
) -> Result<MaximaReport> {
    let t0 = snapshot(pid)?;
    let started = std::time::Instant::now();
    let sessions = counts.sessions;
    let (sessions_held, _) = lab.in_host(Host::Relay, move || -> Result<(u64, u64)> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let api = Api::new(32)?;
            let (ids, failed) = api::bulk(0..sessions, 32, |_| {
                let api = api.clone();
                async move { api.create_session().await }
            })
            .await;
            Ok((ids.len() as u64, failed))
        })
    })??;
    let t1 = snapshot(pid)?;
    let sessions_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let pairs = counts.pairs;
    let (pairs_held, _) = lab.in_host(Host::Relay, move || -> Result<(u64, u64)> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let api = Api::new(8)?;
            let (ids, failed) = api::bulk(0..pairs, 8, |i| {
                let api = api.clone();
                async move { api.create_pair(i).await }
            })
            .await;
            Ok((ids.len() as u64, failed))
        })
    })??;
    let t2 = snapshot(pid)?;
    let pairs_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let at_hold: Arc<Mutex<Option<(Snapshot, u64, f64)>>> = Arc::default();
    let sample = at_hold.clone();
    let outcomes = crowd::run(
        lab,
        Host::ClientA,
        server,
        allocation_jobs,
        ramp,
        move || {
            let Ok(s) = snapshot(pid) else { return };
            // Everything held, nothing changing: what the daemon spends on it by itself.
            std::thread::sleep(AT_REST);
            let at_rest = snapshot(pid).map_or(f64::NAN, |later| {
                (later.cpu - s.cpu) * 1000.0 / AT_REST.as_secs_f64()
            });
            *sample.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((s, process::bpf_map_bytes(pid), at_rest));
        },
    )?;
    let allocations_s = started.elapsed().as_secs_f64();
    let (t3, map_bytes, at_rest_ms) = at_hold
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or((t2, 0, f64::NAN));
    let allocated = outcomes.iter().filter(|o| o.allocated).count() as u64;
    let failures = crowd::failure_kinds(&outcomes);
    Ok(MaximaReport {
        sessions: per_item(sessions, sessions_held, t0, t1, sessions_s),
        pairs: per_item(pairs, pairs_held, t1, t2, pairs_s),
        allocations: per_item(counts.allocations, allocated, t2, t3, allocations_s),
        allocation_failures: failures,
        rss_mib: t3.rss_kib as f64 / 1024.0,
        descriptors: t3.descriptors,
        map_mib: map_bytes as f64 / (1024.0 * 1024.0),
        cpu_at_rest_ms_per_sec: at_rest_ms,
    })
}
