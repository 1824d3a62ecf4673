//! Churn: sessions and WireGuard pairs created and deleted through the API, TURN allocations
//! made, refreshed and deleted by clients, all at a steady rate for a while; the daemon's
//! memory, descriptors, table entries and bound UDP ports sampled as it goes, and their slope
//! per hour — flat when nothing leaks.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::{
    api::Api,
    client::{self, Job, Server},
    process,
};
use crate::nat_lab::{Host, NatLab};

/// Rates and duration.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ChurnOptions {
    /// How long.
    pub seconds: f64,
    /// Sessions created (and deleted) per second.
    pub sessions_per_sec: u32,
    /// WireGuard pairs created (and deleted) per second.
    pub pairs_per_sec: u32,
    /// TURN clients per second, each allocating, relaying one message, refreshing, deleting.
    pub allocations_per_sec: u32,
    /// Sessions and pairs alive at once (each is deleted once this many newer ones exist).
    pub alive: usize,
}

/// One sample.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open descriptors.
    pub descriptors: usize,
    /// Entries of the session table (sessions and pairs) and TURN allocations, as the CLI
    /// reads them from the pinned maps.
    pub sessions: u64,
    /// TURN allocations.
    pub allocations: u64,
    /// UDP sockets bound in the relay's host.
    pub udp_ports: u64,
}

/// What churn showed.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// What ran.
    pub options: ChurnOptions,
    /// Operations done and failed.
    pub sessions_created: u64,
    /// Pairs created.
    pub pairs_created: u64,
    /// TURN clients that allocated, relayed, refreshed and deleted.
    pub allocations_done: u64,
    /// Operations that failed (API errors, TURN clients that did not relay).
    pub failures: u64,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Least-squares slope per hour over the samples after the first quarter (the warm-up):
    /// resident memory (KiB), descriptors, sessions, allocations, UDP ports.
    pub slope_per_hour: [f64; 5],
}

/// Least-squares slope of `(x, y)` per unit of x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// Runs churn against the relay `pid`; `entries` reads (sessions, allocations) from the
/// pinned maps; `jobs` makes TURN client `i`'s job.
pub fn run(
    lab: &NatLab,
    pid: u32,
    server: &Server,
    options: ChurnOptions,
    jobs: impl Fn(u64) -> Job + Send + Sync + 'static,
    entries: impl Fn() -> (u64, u64),
) -> Result<ChurnReport> {
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(options.seconds);
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<ChurnReport> {
        // The API side: sessions and pairs, from the relay host.
        let api_side = {
            let (stop, failures) = (stop.clone(), failures.clone());
            scope.spawn(move || {
                lab.in_host(Host::Relay, move || -> Result<(u64, u64)> {
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(api_churn(options, stop, failures))
                })
            })
        };
        // The TURN side: clients from client A.
        let turn_side = {
            let (stop, failures, server) = (stop.clone(), failures.clone(), server.clone());
            scope.spawn(move || {
                lab.in_host(Host::ClientA, move || -> Result<u64> {
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(turn_churn(options, server, jobs, stop, failures))
                })
            })
        };
        let mut samples = Vec::new();
        while started.elapsed() < duration {
            let (sessions, allocations) = entries();
            samples.push(Sample {
                t: started.elapsed().as_secs_f64(),
                rss_kib: process::rss_kib(pid),
                descriptors: process::descriptors(pid),
                sessions,
                allocations,
                udp_ports: udp_ports(lab),
            });
            std::thread::sleep(Duration::from_secs_f64(
                (options.seconds / 40.0).clamp(0.5, 15.0),
            ));
        }
        stop.store(true, Relaxed);
        let (sessions_created, pairs_created) = api_side.join().expect("no panic")??;
        let allocations_done = turn_side.join().expect("no panic")??;
        let steady: Vec<&Sample> = samples.iter().skip(samples.len() / 4).collect();
        let per_hour = |f: &dyn Fn(&Sample) -> f64| {
            slope(&steady.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>()) * 3600.0
        };
        Ok(ChurnReport {
            options,
            sessions_created,
            pairs_created,
            allocations_done,
            failures: failures.load(Relaxed),
            slope_per_hour: [
                per_hour(&|s| s.rss_kib as f64),
                per_hour(&|s| s.descriptors as f64),
                per_hour(&|s| s.sessions as f64),
                per_hour(&|s| s.allocations as f64),
                per_hour(&|s| s.udp_ports as f64),
            ],
            samples,
        })
    })
}

/// UDP sockets bound in the relay's host (`ss`).
fn udp_ports(lab: &NatLab) -> u64 {
    lab.exec(Host::Relay, "ss", &["-H", "-uan"])
        .map_or(0, |out| out.lines().count() as u64)
}

/// Creates sessions and pairs at their rates, deleting the oldest beyond `alive`; returns how
/// many of each were created.
async fn api_churn(
    options: ChurnOptions,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
) -> Result<(u64, u64)> {
    let api = Api::new(8)?;
    let mut sessions: VecDeque<u32> = VecDeque::new();
    let mut pairs: VecDeque<u32> = VecDeque::new();
    let (mut created_sessions, mut created_pairs) = (0u64, 0u64);
    let tick = Duration::from_millis(100);
    let mut due = (0.0f64, 0.0f64);
    let mut interval = tokio::time::interval(tick);
    // Pair numbers apart from the maxima's.
    let mut pair_index = 1u64 << 40;
    while !stop.load(Relaxed) {
        interval.tick().await;
        due.0 += f64::from(options.sessions_per_sec) * tick.as_secs_f64();
        due.1 += f64::from(options.pairs_per_sec) * tick.as_secs_f64();
        while due.0 >= 1.0 {
            due.0 -= 1.0;
            match api.create_session().await {
                Ok(vni) => {
                    sessions.push_back(vni);
                    created_sessions += 1;
                }
                Err(_) => {
                    failures.fetch_add(1, Relaxed);
                }
            }
            if sessions.len() > options.alive
                && let Some(old) = sessions.pop_front()
                && api.delete_session(old).await.is_err()
            {
                failures.fetch_add(1, Relaxed);
            }
        }
        while due.1 >= 1.0 {
            due.1 -= 1.0;
            pair_index += 1;
            match api.create_pair(pair_index).await {
                Ok(id) => {
                    pairs.push_back(id);
                    created_pairs += 1;
                }
                Err(_) => {
                    failures.fetch_add(1, Relaxed);
                }
            }
            if pairs.len() > options.alive
                && let Some(old) = pairs.pop_front()
                && api.delete_pair(old).await.is_err()
            {
                failures.fetch_add(1, Relaxed);
            }
        }
    }
    // Leave nothing behind: the next part starts from an empty relay.
    for vni in sessions {
        let _ = api.delete_session(vni).await;
    }
    for id in pairs {
        let _ = api.delete_pair(id).await;
    }
    Ok((created_sessions, created_pairs))
}

/// Starts TURN clients at their rate, each released at once (allocate, relay, refresh,
/// delete); returns how many relayed.
async fn turn_churn(
    options: ChurnOptions,
    server: Server,
    jobs: impl Fn(u64) -> Job,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
) -> Result<u64> {
    let (_hold_tx, hold) = watch::channel(true);
    let (ready, mut ready_rx) = mpsc::channel::<()>(1024);
    tokio::spawn(async move { while ready_rx.recv().await.is_some() {} });
    let mut tasks = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / f64::from(options.allocations_per_sec.max(1)));
    let mut interval = tokio::time::interval(gap);
    let mut i = 0u64;
    while !stop.load(Relaxed) {
        interval.tick().await;
        let job = jobs(i);
        i += 1;
        tasks.push(tokio::spawn(client::run(
            server.clone(),
            job,
            ready.clone(),
            hold.clone(),
        )));
    }
    let mut done = 0;
    for t in tasks {
        match t.await {
            Ok(o) if o.error.is_none() => done += 1,
            _ => {
                failures.fetch_add(1, Relaxed);
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_and_of_a_flat_series() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 7.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }
}
