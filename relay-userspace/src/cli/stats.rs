//! `relay stats`: every verdict counter of both forwarders, the XDP mode in effect per interface,
//! and how full the session map is — all from the pinned state.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Args;
use relay_common::verdict::{Outcome, Reason};
use serde::Serialize;

use super::sessions::{PinArgs, human_bytes};
use crate::{
    dataplane::attachment::{self, Attachment},
    inspect::{self, Snapshot},
};

/// `relay stats` arguments.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One verdict reason's counters on both paths.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerdictRow {
    /// Reason name.
    pub reason: &'static str,
    /// forwarded | passed | dropped.
    pub outcome: &'static str,
    /// XDP program: packets.
    pub kernel_packets: u64,
    /// XDP program: bytes.
    pub kernel_bytes: u64,
    /// Userspace forwarder: packets.
    pub userspace_packets: u64,
    /// Userspace forwarder: bytes.
    pub userspace_bytes: u64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct StatsReport {
    /// XDP attachments per interface (errors as text).
    pub xdp: Vec<Result<Attachment, String>>,
    /// Sessions per state.
    pub sessions: Vec<(&'static str, usize)>,
    /// Sessions in total.
    pub session_count: usize,
    /// Session map capacity.
    pub capacity: u32,
    /// Stock WireGuard pairs (counted among the sessions too).
    pub wireguard_pairs: usize,
    /// TURN allocations.
    pub allocations: usize,
    /// TURN allocation map capacity.
    pub allocation_capacity: u32,
    /// Every verdict reason.
    pub verdicts: Vec<VerdictRow>,
    /// Draining since (seconds since the epoch), from the pinned drain state.
    pub draining_since: Option<u64>,
}

/// Builds the report from a snapshot and the attachments.
pub fn report(snapshot: &Snapshot, xdp: Vec<anyhow::Result<Attachment>>) -> StatsReport {
    let verdicts = Reason::ALL
        .iter()
        .map(|r| {
            let k = snapshot.kernel_verdicts[*r as usize];
            let u = snapshot.userspace_verdicts[*r as usize];
            VerdictRow {
                reason: r.name(),
                outcome: match r.outcome() {
                    Outcome::Forwarded => "forwarded",
                    Outcome::Passed => "passed",
                    Outcome::Dropped => "dropped",
                },
                kernel_packets: k.packets,
                kernel_bytes: k.bytes,
                userspace_packets: u.packets,
                userspace_bytes: u.bytes,
            }
        })
        .collect();
    let sessions = ["allocated", "half_bound", "bound"]
        .map(|st| {
            (
                st,
                snapshot.sessions.iter().filter(|s| s.state == st).count(),
            )
        })
        .to_vec();
    StatsReport {
        xdp: xdp
            .into_iter()
            .map(|r| r.map_err(|e| format!("{e:#}")))
            .collect(),
        sessions,
        session_count: snapshot.sessions.len(),
        capacity: snapshot.capacity,
        wireguard_pairs: snapshot
            .sessions
            .iter()
            .filter(|s| s.kind == "wireguard")
            .count(),
        allocations: snapshot.allocations.len(),
        allocation_capacity: snapshot.allocation_capacity,
        verdicts,
        draining_since: None,
    }
}

/// The report as text.
pub fn render(r: &StatsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "XDP");
    if r.xdp.is_empty() {
        let _ = writeln!(
            out,
            "  no interface (xdp.mode: off, or no relay link pinned)"
        );
    }
    for a in &r.xdp {
        match a {
            Ok(a) => {
                let warn = match a.mode {
                    attachment::AttachMode::Native => "",
                    attachment::AttachMode::Generic => {
                        "  ← generic mode: the driver's native XDP is not in use (slower)"
                    }
                    _ => "  ← the relay program is not running here",
                };
                let _ = writeln!(
                    out,
                    "  {:<12} {:<8} {} (id {}){warn}",
                    a.interface,
                    a.mode.name(),
                    a.program.as_deref().unwrap_or("-"),
                    a.program_id.map_or("-".into(), |i| i.to_string())
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {e}");
            }
        }
    }
    if let Some(since) = r.draining_since {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(since);
        let _ = writeln!(
            out,
            "\nDRAINING since {}: no new sessions, pairs or TURN allocations (`relay undrain`)",
            humantime::format_rfc3339_seconds(at)
        );
    }
    let pct = 100.0 * r.session_count as f64 / r.capacity.max(1) as f64;
    let _ = writeln!(
        out,
        "\nSessions {} of {} ({pct:.1} % of the map): {}",
        r.session_count,
        r.capacity,
        r.sessions
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if r.wireguard_pairs > 0 {
        let _ = writeln!(out, "  of which WireGuard pairs {}", r.wireguard_pairs);
    }
    let _ = writeln!(
        out,
        "TURN allocations {} of {}",
        r.allocations, r.allocation_capacity
    );
    let _ = writeln!(
        out,
        "\n{:<32} {:>14} {:>12} {:>14} {:>12}",
        "VERDICT", "KERNEL PKTS", "BYTES", "USERSPACE PKTS", "BYTES"
    );
    for v in &r.verdicts {
        let _ = writeln!(
            out,
            "{:<32} {:>14} {:>12} {:>14} {:>12}",
            v.reason,
            v.kernel_packets,
            human_bytes(v.kernel_bytes),
            v.userspace_packets,
            human_bytes(v.userspace_bytes)
        );
    }
    out
}

/// Runs `relay stats`.
pub fn run(args: StatsArgs) -> Result<()> {
    let snapshot = inspect::snapshot(&args.pin.pin_dir)?;
    let mut r = report(&snapshot, attachment::attachments(&args.pin.pin_dir));
    r.draining_since = crate::fleet::pinned_state(&args.pin.pin_dir)
        .filter(|s| s.draining != 0)
        .map(|s| s.since_unix_s);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render(&r));
    }
    Ok(())
}
