//! A crowd of TURN clients behind one NAT address ([`super::client`]), started over a ramp,
//! all holding their allocations at once while the harness looks at the server, then letting
//! go; and what it shows: who succeeded, how long each waited for its first relayed byte.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::client::{self, Job, Outcome, Server, Transport};
use crate::nat_lab::{Host, NatLab};

/// How long the harness waits for every client to reach its hold (allocated and relayed, or
/// failed) after the ramp.
const READY_LIMIT: Duration = Duration::from_secs(120);

/// Runs `jobs` from `host`, starting them evenly over `ramp`; when all have relayed (or
/// failed), calls `at_hold` — every allocation is live then — and lets them delete their
/// allocations. Returns each client's outcome.
pub fn run(
    lab: &NatLab,
    host: Host,
    server: &Server,
    jobs: Vec<Job>,
    ramp: Duration,
    at_hold: impl FnOnce() + Send,
) -> Result<Vec<Outcome>> {
    let server = server.clone();
    lab.in_host(host, move || -> Result<Vec<Outcome>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let n = jobs.len();
            let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
            let (hold_tx, hold_rx) = watch::channel(false);
            let gap = ramp / (n.max(1) as u32);
            let mut tasks = Vec::with_capacity(n);
            for (i, job) in jobs.into_iter().enumerate() {
                let server = server.clone();
                let ready = ready_tx.clone();
                let hold = hold_rx.clone();
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(gap * i as u32).await;
                    client::run(server, job, ready, hold).await
                }));
            }
            drop(ready_tx);
            let mut arrived = 0;
            let limit = tokio::time::Instant::now() + ramp + READY_LIMIT;
            while arrived < n {
                match tokio::time::timeout_at(limit, ready_rx.recv()).await {
                    Ok(Some(())) => arrived += 1,
                    _ => break,
                }
            }
            at_hold();
            let _ = hold_tx.send(true);
            let mut outcomes = Vec::with_capacity(n);
            for t in tasks {
                outcomes.push(t.await.context("a client task panicked")?);
            }
            Ok(outcomes)
        })
    })?
}

/// Quantiles of a sample, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// How many values.
    pub count: usize,
    /// Median.
    pub median_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// The quantiles of `values`.
    pub fn of(mut values: Vec<Duration>) -> Latency {
        if values.is_empty() {
            return Latency::default();
        }
        values.sort();
        let at = |q: f64| {
            let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
            values[i].as_secs_f64() * 1000.0
        };
        Latency {
            count: values.len(),
            median_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// One server's crowd, summed up.
#[derive(Clone, Debug, Serialize)]
pub struct CrowdSummary {
    /// Which server.
    pub server: String,
    /// Clients started.
    pub clients: usize,
    /// Clients that allocated and got every message echoed.
    pub succeeded: usize,
    /// Messages sent and echoed, all clients.
    pub sent: u64,
    /// Messages echoed.
    pub echoed: u64,
    /// Requests per client, retransmissions included (mean).
    pub requests_per_client: f64,
    /// First Allocate to first relayed byte, all clients and per transport.
    pub first_byte: Latency,
    /// The same per transport.
    pub first_byte_by_transport: BTreeMap<String, Latency>,
    /// Why clients failed, with how many.
    pub failures: BTreeMap<String, usize>,
    /// The server's open descriptors while every client held its allocation, beyond those it
    /// held before the crowd, per allocation.
    pub descriptors_per_allocation: f64,
    /// The server's resident memory while every client held its allocation, MiB.
    pub rss_mib: f64,
    /// The server's CPU time for the whole crowd, seconds.
    pub cpu_seconds: f64,
}

/// Sums up `outcomes` of `server`; `descriptors` before and at the hold, `rss_kib` at the
/// hold, `cpu` the server's CPU seconds.
pub fn summarise(
    server: &str,
    outcomes: &[Outcome],
    descriptors: (usize, usize),
    rss_kib: u64,
    cpu_seconds: f64,
) -> CrowdSummary {
    let succeeded = outcomes.iter().filter(|o| o.error.is_none()).count();
    let allocated = outcomes.iter().filter(|o| o.allocated).count();
    let failures = failure_kinds(outcomes);
    let mut by_transport = BTreeMap::new();
    for t in Transport::ALL {
        let values: Vec<Duration> = outcomes
            .iter()
            .filter(|o| o.transport == Some(t))
            .filter_map(|o| o.first_byte)
            .collect();
        if !values.is_empty() {
            by_transport.insert(t.name().to_string(), Latency::of(values));
        }
    }
    CrowdSummary {
        server: server.to_string(),
        clients: outcomes.len(),
        succeeded,
        sent: outcomes.iter().map(|o| u64::from(o.sent)).sum(),
        echoed: outcomes.iter().map(|o| u64::from(o.echoed)).sum(),
        requests_per_client: outcomes.iter().map(|o| f64::from(o.requests)).sum::<f64>()
            / outcomes.len().max(1) as f64,
        first_byte: Latency::of(outcomes.iter().filter_map(|o| o.first_byte).collect()),
        first_byte_by_transport: by_transport,
        failures,
        descriptors_per_allocation: descriptors.1.saturating_sub(descriptors.0) as f64
            / allocated.max(1) as f64,
        rss_mib: rss_kib as f64 / 1024.0,
        cpu_seconds,
    }
}

/// Why clients failed, with how many: each error's first line, its long numbers (indices,
/// counts of messages) blanked so that like failures group while error codes stay.
pub fn failure_kinds(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut failures = BTreeMap::new();
    for o in outcomes {
        if let Some(e) = &o.error {
            let mut kind = String::new();
            let mut digits = String::new();
            for c in e
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .chain(std::iter::once(' '))
            {
                if c.is_ascii_digit() {
                    digits.push(c);
                    continue;
                }
                kind.push_str(if digits.len() > 3 { "…" } else { &digits });
                digits.clear();
                kind.push(c);
            }
            *failures.entry(kind.trim_end().to_string()).or_default() += 1;
        }
    }
    failures
}

/// A slot the hold callback fills from another thread.
pub type Sample<T> = Arc<Mutex<Option<T>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_group_by_kind_and_keep_error_codes() {
        let failed = |e: &str| Outcome {
            error: Some(e.to_string()),
            ..Outcome::default()
        };
        let kinds = failure_kinds(&[
            failed("Allocate (after the challenge): error 508"),
            failed("Allocate (after the challenge): error 508"),
            failed("3 of 5 messages echoed"),
            failed("ChannelBind: no answer after 7 tries\ncaused by 1234567"),
        ]);
        assert_eq!(kinds["Allocate (after the challenge): error 508"], 2);
        assert_eq!(kinds["3 of 5 messages echoed"], 1);
        assert_eq!(kinds["ChannelBind: no answer after 7 tries"], 1);
    }

    #[test]
    fn quantiles_pick_the_sample_at_or_above() {
        let l = Latency::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!((l.median_ms, l.p99_ms, l.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(Latency::of(Vec::new()).count, 0);
        let one = Latency::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.median_ms, one.p99_ms), (7.0, 7.0));
    }
}
