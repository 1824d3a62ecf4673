//! The TURN front's metric series: allocations, permissions and channels, request results,
//! credential refusals, and relayed traffic by path and direction.

use std::{collections::HashMap, fmt, time::Instant};

use prometheus_client::encoding::DescriptorEncoder;

use super::core::TurnCore;
use crate::metrics::{self, FrontMetrics, Labels};

impl FrontMetrics for TurnCore {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let (allocations, permissions, channels) = {
            let server = self.server.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let mut by_transport: HashMap<&'static str, i64> = HashMap::new();
            let (mut permissions, mut channels) = (0i64, 0i64);
            for a in server.allocations() {
                *by_transport
                    .entry(a.five_tuple.transport.name())
                    .or_default() += 1;
                permissions += a.permissions.values().filter(|e| **e > now).count() as i64;
                channels += a.channels.values().filter(|c| c.expires > now).count() as i64;
            }
            let allocations: Vec<(Labels, i64)> = ["udp", "tcp", "tls"]
                .iter()
                .map(|t| {
                    (
                        vec![("transport", t.to_string())],
                        by_transport.get(t).copied().unwrap_or(0),
                    )
                })
                .collect();
            (allocations, permissions, channels)
        };
        metrics::gauges(
            encoder,
            "relay_turn_allocations",
            "TURN allocations by client transport.",
            &allocations,
        )?;
        metrics::gauges(
            encoder,
            "relay_turn_permissions",
            "Live TURN permissions.",
            &[(vec![], permissions)],
        )?;
        metrics::gauges(
            encoder,
            "relay_turn_channels",
            "Live TURN channels.",
            &[(vec![], channels)],
        )?;
        metrics::gauges(
            encoder,
            "relay_turn_stream_buffered_bytes",
            "Bytes waiting for TCP and TLS clients, of turn.stream_buffers_mib.",
            &[(vec![], self.stream_budget.held() as i64)],
        )?;
        let mut results: Vec<(Labels, u64)> = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (vec![("result", k.to_string())], *v))
            .collect();
        results.sort();
        let auth: Vec<(Labels, u64)> = results
            .iter()
            .filter(|(l, _)| AUTH_FAILURES.contains(&l[0].1.as_str()))
            .map(|(l, v)| (vec![("reason", l[0].1.clone())], *v))
            .collect();
        metrics::counters(
            encoder,
            "relay_turn_requests",
            "TURN requests by result (answers, error codes, unanswered).",
            &results,
        )?;
        metrics::counters(
            encoder,
            "relay_turn_auth_failures",
            "TURN requests refused for their credentials, by reason.",
            &auth,
        )?;
        // [path][direction]: 0 = kernel, 1 = userspace.
        let (mut packets, mut bytes) = ([[0u64; 2]; 2], [[0u64; 2]; 2]);
        let slots: Vec<u32> = self
            .server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocations()
            .map(|a| a.slot)
            .collect();
        let kernel = self.maps.as_ref().map(|m| {
            let maps = m.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .map(|slot| maps.kernel_stats(*slot).unwrap_or_default())
                .collect::<Vec<_>>()
        });
        for (i, slot) in slots.iter().enumerate() {
            let user = self.counters.slot(*slot);
            let fast = kernel.as_ref().map(|k| k[i]).unwrap_or_default();
            for d in 0..2 {
                packets[0][d] += fast.packets[d];
                bytes[0][d] += fast.bytes[d];
                packets[1][d] += user.packets[d];
                bytes[1][d] += user.bytes[d];
            }
        }
        let series = |v: [[u64; 2]; 2]| -> Vec<(Labels, u64)> {
            let mut out = Vec::new();
            for (p, path) in ["kernel", "userspace"].iter().enumerate() {
                for (d, direction) in ["to_peer", "to_client"].iter().enumerate() {
                    out.push((
                        vec![
                            ("path", path.to_string()),
                            ("direction", direction.to_string()),
                        ],
                        v[p][d],
                    ));
                }
            }
            out
        };
        metrics::counters(
            encoder,
            "relay_turn_relayed_packets",
            "Packets relayed for live TURN allocations, by path and direction.",
            &series(packets),
        )?;
        metrics::counters(
            encoder,
            "relay_turn_relayed_bytes",
            "Application bytes relayed for live TURN allocations, by path and direction.",
            &series(bytes),
        )
    }
}

/// Results that are credential refusals (the auth-failure metric's reasons).
const AUTH_FAILURES: &[&str] = &[
    "error_401",
    "error_438",
    "unknown_user",
    "expired_credential",
    "credential_too_long",
    "username_too_long",
    "wrong_password",
];
