//! Prometheus metrics, computed at scrape time from the same sources the CLI reads: the pinned
//! maps (fast-path counters), the userspace forwarder's counters and the control plane's.
//!
//! Cardinality is bounded: labels are verdict reasons, paths, families, states, results, API
//! endpoints (route templates) and status codes, and interfaces. Per-session series exist only
//! when `metrics.top_sessions` is set, and then for at most that many sessions (the busiest by
//! bytes) — per-user labels with ephemeral values are what leaked memory in coturn's exporter.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use relay_common::verdict::{Outcome, Reason, VerdictCounter};

use crate::{
    control::plane::SharedPlane,
    control::session::SessionState,
    dataplane::{RelayMaps, attachment},
    forwarder::counters::UserCounters,
};

/// API requests by endpoint (route template), method and status.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    counts: Mutex<HashMap<(String, String, u16), u64>>,
}

impl ApiMetrics {
    /// Counts one request to `endpoint`, a route template (or "other": bounded either way).
    pub fn record(&self, endpoint: &str, method: &str, status: u16) {
        let method = match method {
            "GET" | "POST" | "DELETE" => method,
            _ => "other",
        };
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint.to_string(), method.to_string(), status))
            .or_default() += 1;
    }

    /// Every count, sorted.
    pub fn snapshot(&self) -> Vec<((String, String, u16), u64)> {
        let mut v: Vec<_> = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }
}

/// The metric families a protocol front adds to each scrape (the shared ones — verdicts,
/// sessions, API, XDP mode — are the collector's).
pub trait FrontMetrics: Send + Sync {
    /// Encodes the front's families.
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result;
}

/// Produces every metric on each scrape.
pub struct RelayCollector {
    /// The control plane.
    pub plane: SharedPlane,
    /// Where the fast path's maps are pinned (None: XDP off without maps).
    pub pin_dir: Option<std::path::PathBuf>,
    /// Userspace forwarder counters.
    pub counters: Arc<UserCounters>,
    /// API request counts.
    pub api: Arc<ApiMetrics>,
    /// Interfaces the XDP program should run on.
    pub interfaces: Vec<String>,
    /// Per-session series for this many of the busiest sessions (0: none).
    pub top_sessions: usize,
    /// The protocol fronts' own series.
    pub fronts: Vec<Arc<dyn FrontMetrics>>,
    /// Draining or not.
    pub fleet: Arc<crate::fleet::Fleet>,
}

impl fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayCollector").finish_non_exhaustive()
    }
}

/// The front and the family (sessions) or direction (TURN) of a forwarding reason.
fn front_and_family(r: Reason) -> (&'static str, &'static str) {
    match r {
        Reason::ForwardedV4 => ("sessions", "v4"),
        Reason::ForwardedV6 => ("sessions", "v6"),
        Reason::ForwardedV4ToV6 => ("sessions", "v4_to_v6"),
        Reason::ForwardedTurnToPeer => ("turn", "to_peer"),
        Reason::ForwardedTurnToClient => ("turn", "to_client"),
        Reason::ForwardedTurnBetweenClients => ("turn", "between_clients"),
        Reason::ForwardedWireGuard => ("wireguard", "between_peers"),
        _ => ("sessions", "v6_to_v4"),
    }
}

/// A series' labels.
pub type Labels = Vec<(&'static str, String)>;

/// Encodes one counter family.
pub fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one gauge family.
pub fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let maps = self
            .pin_dir
            .as_ref()
            .and_then(|d| RelayMaps::open_pinned(d).ok());
        let kernel: Vec<VerdictCounter> = maps
            .as_ref()
            .and_then(|m| m.kernel_verdicts().ok())
            .unwrap_or_else(|| vec![VerdictCounter::default(); Reason::COUNT as usize]);
        let user = self.counters.verdicts();
        let paths = [("kernel", &kernel), ("userspace", &user)];

        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut fwd_packets = Vec::new();
        let mut fwd_bytes = Vec::new();
        for (path, v) in paths {
            for r in Reason::ALL {
                let c = v[*r as usize];
                let labels = vec![("path", path.to_string()), ("reason", r.name().to_string())];
                packets.push((labels.clone(), c.packets));
                bytes.push((labels, c.bytes));
                if r.outcome() == Outcome::Forwarded {
                    let (front, family) = front_and_family(*r);
                    let labels = vec![
                        ("path", path.to_string()),
                        ("front", front.to_string()),
                        ("family", family.to_string()),
                    ];
                    fwd_packets.push((labels.clone(), c.packets));
                    fwd_bytes.push((labels, c.bytes));
                }
            }
        }
        counters(
            &mut encoder,
            "relay_forwarded_packets",
            "Packets forwarded, by path, front and address family (sessions) or direction (TURN).",
            &fwd_packets,
        )?;
        counters(
            &mut encoder,
            "relay_forwarded_bytes",
            "Frame bytes forwarded, by path, front and address family (sessions) or direction (TURN).",
            &fwd_bytes,
        )?;
        counters(
            &mut encoder,
            "relay_verdict_packets",
            "Packets by verdict reason and path.",
            &packets,
        )?;
        counters(
            &mut encoder,
            "relay_verdict_bytes",
            "Frame bytes by verdict reason and path.",
            &bytes,
        )?;

        let (states, capacity, expired, allocated, deleted) = {
            let plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
            let table = plane.table();
            let states: Vec<(Labels, i64)> = ["geneve", "wireguard"]
                .into_iter()
                .flat_map(|kind| SessionState::ALL.iter().map(move |st| (kind, st)))
                .map(|(kind, st)| {
                    let n = table
                        .iter()
                        .filter(|s| s.state() == *st)
                        .filter(|s| (s.wireguard().is_some()) == (kind == "wireguard"))
                        .count();
                    let labels = vec![("kind", kind.to_string()), ("state", st.name().to_string())];
                    (labels, n as i64)
                })
                .collect();
            let mut expired: Vec<(Labels, u64)> = plane
                .stats
                .expired
                .iter()
                .map(|(k, v)| (vec![("reason", k.to_string())], *v))
                .collect();
            expired.sort();
            (
                states,
                table.settings().max_sessions,
                expired,
                plane.stats.allocated,
                plane.stats.deleted,
            )
        };
        gauges(
            &mut encoder,
            "relay_sessions",
            "Sessions by kind (geneve: the session protocol's; wireguard: stock WireGuard pairs) and state.",
            &states,
        )?;
        gauges(
            &mut encoder,
            "relay_sessions_capacity",
            "Sessions the relay can hold.",
            &[(vec![], capacity as i64)],
        )?;
        gauges(
            &mut encoder,
            "relay_draining",
            "1 while the relay drains: no new sessions, pairs or TURN allocations (relay drain).",
            &[(vec![], i64::from(self.fleet.draining()))],
        )?;
        counters(
            &mut encoder,
            "relay_sessions_allocated",
            "Sessions allocated through the API.",
            &[(vec![], allocated)],
        )?;
        counters(
            &mut encoder,
            "relay_sessions_deleted",
            "Sessions deleted through the API.",
            &[(vec![], deleted)],
        )?;
        counters(
            &mut encoder,
            "relay_sessions_expired",
            "Sessions expired, by reason.",
            &expired,
        )?;
        for front in &self.fronts {
            front.encode(&mut encoder)?;
        }

        let api: Vec<(Labels, u64)> = self
            .api
            .snapshot()
            .into_iter()
            .map(|((endpoint, method, status), v)| {
                (
                    vec![
                        ("endpoint", endpoint),
                        ("method", method),
                        ("status", status.to_string()),
                    ],
                    v,
                )
            })
            .collect();
        counters(
            &mut encoder,
            "relay_api_requests",
            "API requests by endpoint, method and status.",
            &api,
        )?;

        let xdp: Vec<(Labels, i64)> = self
            .interfaces
            .iter()
            .map(|i| {
                let mode = attachment::attachment(i).map_or("unknown", |a| a.mode.name());
                (
                    vec![("interface", i.clone()), ("mode", mode.to_string())],
                    1,
                )
            })
            .collect();
        gauges(
            &mut encoder,
            "relay_xdp_attached",
            "The XDP attach mode in effect per interface (1 = this mode).",
            &xdp,
        )?;

        if self.top_sessions > 0
            && let Some(dir) = &self.pin_dir
            && let Ok(snapshot) = crate::inspect::snapshot(dir)
        {
            let mut sessions = snapshot.sessions;
            sessions.sort_by_key(|s| {
                std::cmp::Reverse(s.directions[0].bytes() + s.directions[1].bytes())
            });
            let mut series = Vec::new();
            for s in sessions.iter().take(self.top_sessions) {
                for (i, dir) in ["a_to_b", "b_to_a"].iter().enumerate() {
                    series.push((
                        vec![("vni", s.vni.to_string()), ("direction", dir.to_string())],
                        s.directions[i].bytes(),
                    ));
                }
            }
            counters(
                &mut encoder,
                "relay_session_bytes",
                "Bytes of the busiest sessions (metrics.top_sessions).",
                &series,
            )?;
        }
        Ok(())
    }
}

/// The exposition text for one scrape.
pub fn render(collector: RelayCollector) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod dashboard_tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        control::plane::Plane,
        fronts::geneve::{SessionControl, bind_service::BindService},
    };

    fn exported_names() -> Vec<String> {
        let plane = Plane::in_memory(4, Default::default());
        let counters = plane.counters();
        let plane = Arc::new(Mutex::new(plane));
        let api = Arc::new(ApiMetrics::default());
        api.record("/v1/sessions", "POST", 201);
        let sessions = SessionControl::new(
            BindService::new(std::time::Duration::from_secs(120), 0),
            plane.clone(),
        );
        let text = render(RelayCollector {
            plane,
            pin_dir: None,
            counters,
            api,
            interfaces: vec![],
            top_sessions: 0,
            fronts: vec![Arc::new(sessions)],
            fleet: Arc::new(crate::fleet::Fleet::unpinned(Default::default())),
        })
        .unwrap();
        text.lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| {
                let name = l.split_whitespace().nth(2).unwrap();
                if l.ends_with("counter") {
                    format!("{name}_total")
                } else {
                    name.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn every_metric_the_alert_rules_use_is_exported() {
        let exported = exported_names();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/prometheus-alerts.yaml"
        );
        let rules: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut used = 0;
        for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some() && rule["expr"].as_str().is_some());
            for word in rule["expr"]
                .as_str()
                .unwrap()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            {
                if word.starts_with("relay_") {
                    used += 1;
                    assert!(
                        exported.iter().any(|e| e == word),
                        "alert uses {word}, not exported"
                    );
                }
            }
        }
        assert!(used >= 6);
    }

    #[test]
    fn every_metric_the_dashboard_queries_is_exported() {
        let exported = exported_names();
        assert!(
            exported.contains(&"relay_forwarded_packets_total".to_string()),
            "{exported:?}"
        );
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana-dashboard.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("relay_") {
                        queried += 1;
                        // relay_xdp_attached and relay_session_bytes appear only with interfaces
                        // or top_sessions configured; they are checked by the lab test.
                        if word != "relay_xdp_attached" {
                            assert!(
                                exported.iter().any(|e| e == word),
                                "dashboard queries {word}, not exported"
                            );
                        }
                    }
                }
            }
        }
        assert!(queried >= 12);
    }
}
