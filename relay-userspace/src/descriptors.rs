//! File descriptors: what a configuration can hold open at once, and the process's limit.
//!
//! Every relayed port is a socket for as long as its allocation or pair lives (so no other
//! process can take it), and every TCP or TLS client is a connection: a relay holding its
//! configured maxima holds tens of thousands of descriptors. systemd gives a service a soft
//! `RLIMIT_NOFILE` of 1024 unless told otherwise, so the daemon raises its soft limit to the
//! hard one at start, the unit sets `LimitNOFILE`, and `relay check` compares the hard limit
//! with what the configuration can need — so an operator learns it before clients get 508s.

use std::fmt;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::config::Config;

/// Descriptors besides the per-allocation, per-pair and per-connection ones: the API and
/// metrics listeners and their clients, BPF maps, programs and links, the runtime's epoll and
/// event descriptors, logs, the child processes `relay check` runs.
pub const BASE: u64 = 512;

/// The process's open-files limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What `open`, `socket` and `accept` are held to.
    pub soft: u64,
    /// How far the process may raise `soft` itself.
    pub hard: u64,
}

impl Limit {
    /// The limit in force now (`0, 0` if it cannot be read).
    pub fn current() -> Limit {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
        Limit { soft, hard }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "soft {}, hard {}", self.soft, self.hard)
    }
}

/// Raises the soft limit to the hard one (no privilege needed); returns the limit before and
/// after.
pub fn raise_soft_limit() -> nix::Result<(Limit, Limit)> {
    let before = Limit::current();
    if before.soft < before.hard {
        setrlimit(Resource::RLIMIT_NOFILE, before.hard, before.hard)?;
    }
    Ok((before, Limit::current()))
}

/// What a configuration can hold open at once, part by part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Each part: what it is (named by the keys that size it) and its descriptors.
    pub parts: Vec<(String, u64)>,
}

impl Needs {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.parts.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        write!(f, "{} ({})", self.total(), parts.join(" + "))
    }
}

/// What `config` can need when the relay listens on `families` address families (1 or 2)
/// with `workers` forwarder threads per port and family.
pub fn needed(config: &Config, families: u64, workers: u64) -> Needs {
    let mut parts = vec![(
        "session port (relay.workers × families)".to_string(),
        workers * families,
    )];
    if let Some(turn) = &config.turn {
        // A dual-stack allocation holds a socket per family; EVEN-PORT reservations hold the
        // next port for 30 s on top (rare; the base covers a few hundred).
        parts.push((
            "turn.max_allocations × families".into(),
            u64::from(turn.max_allocations) * families,
        ));
        parts.push((
            "turn.max_connections".into(),
            u64::from(turn.max_connections),
        ));
        let tls_ports = turn.tls.as_ref().map_or(0, |t| t.ports.len() as u64);
        parts.push((
            "TURN port (workers + TCP + TLS listeners, × families)".into(),
            (workers + 1 + tls_ports) * families,
        ));
    }
    if let Some(w) = &config.wireguard {
        let ports = u64::from(w.relay_ports.last - w.relay_ports.first) + 1;
        let pairs = (ports / 2).min(u64::from(config.sessions.max_sessions));
        parts.push((
            "WireGuard pairs (2 ports × families each)".into(),
            pairs * 2 * families,
        ));
    }
    parts.push(("API, metrics, BPF, runtime".into(), BASE));
    Needs { parts }
}

/// The families a relay listening on the configured `relay.listen` addresses serves; both
/// when they come from the interfaces (not known before the daemon looks).
pub fn configured_families(config: &Config) -> u64 {
    match config.relay.listen.len() {
        0 => 2,
        n => n as u64,
    }
}

/// Forwarder threads per port and family, as the daemon starts them.
pub fn configured_workers(config: &Config) -> u64 {
    match config.relay.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        n => n as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "interfaces: [eth0]\napi:\n  tokens:\n    - name: t\n      token: \
             0123456789abcdef0123\n{extra}"
        );
        Config::parse(&text, "relay.yaml").unwrap()
    }

    #[test]
    fn the_defaults_need_what_each_front_can_hold() {
        let c = config("turn:\n  realm: r.test\n  secrets: [0123456789abcdef01]\nwireguard: {}\n");
        let needs = needed(&c, 2, 2);
        // 16384 allocations × 2 families, 16384 connections, 2000 pairs × 2 ports × 2.
        assert_eq!(
            needs.total(),
            2 * 2 + 16_384 * 2 + 16_384 + (2 + 1) * 2 + 2000 * 4 + BASE
        );
        assert!(needs.to_string().contains("turn.max_connections 16384"));
        // Far above systemd's default soft limit of 1024: the unit must set LimitNOFILE.
        assert!(needs.total() > 1024);
        let plain = needed(&config(""), 1, 4);
        assert_eq!(plain.total(), 4 + BASE);
    }

    #[test]
    fn raising_the_soft_limit_reaches_the_hard_one() {
        let (_, after) = raise_soft_limit().unwrap();
        assert_eq!(after.soft, after.hard);
    }
}
