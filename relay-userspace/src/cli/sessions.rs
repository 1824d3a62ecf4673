//! `relay sessions`: the session table, read from the pinned maps.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::inspect::{self, SessionView, Snapshot};

/// Where the relay's state is pinned.
#[derive(Args, Clone, Debug)]
pub struct PinArgs {
    /// The relay's pin directory (its config's `pin_dir`).
    #[arg(long, global = true, env = "RELAY_PIN_DIR", default_value = relay_common::maps::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Sort order of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// Session id.
    Vni,
    /// Bytes, both directions, largest first.
    Bytes,
    /// Packets, both directions, largest first.
    Packets,
    /// Most recently active first.
    LastSeen,
}

/// `relay sessions` arguments.
#[derive(Args, Debug)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Sort order.
    #[arg(long, value_enum, default_value = "vni")]
    pub sort: SortBy,
    /// Only sessions in this state (allocated, half_bound, bound).
    #[arg(long)]
    pub state: Option<String>,
    /// Only sessions with a leg label containing this text.
    #[arg(long)]
    pub label: Option<String>,
    /// Only sessions of this token.
    #[arg(long)]
    pub token: Option<String>,
    /// Print JSON (of the sessions, or of the TURN allocations with `--front turn`).
    #[arg(long)]
    pub json: bool,
    /// Which front's records: the session protocol's sessions, TURN allocations, or both (the
    /// text table's default).
    #[arg(long, value_enum)]
    pub front: Option<FrontFilter>,
    /// Measure current rates over this interval (0: skip them and answer at once).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[command(subcommand)]
    pub command: Option<SessionsCommand>,
}

/// Which front's records `relay sessions` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FrontFilter {
    /// Sessions of the session protocol (`relay client`) and stock WireGuard pairs.
    Sessions,
    /// TURN allocations.
    Turn,
}

/// `relay sessions show`.
#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// One session in detail.
    Show {
        /// Session id.
        vni: u32,
    },
}

/// A byte count for humans.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An age for humans.
pub fn human_age(d: Option<Duration>) -> String {
    match d {
        None => "never".into(),
        Some(d) if d.as_secs() < 1 => "now".into(),
        Some(d) if d.as_secs() < 120 => format!("{}s ago", d.as_secs()),
        Some(d) if d.as_secs() < 7200 => format!("{}m ago", d.as_secs() / 60),
        Some(d) => format!("{}h ago", d.as_secs() / 3600),
    }
}

fn leg_text(s: &SessionView, leg: usize) -> String {
    let l = &s.legs[leg];
    let label = l.label.as_deref().unwrap_or("-");
    match l.bound {
        Some(a) => format!("{label} {a}"),
        None => format!("{label} (unbound)"),
    }
}

/// Filters and sorts a snapshot's sessions as the arguments ask.
pub fn select<'a>(snapshot: &'a Snapshot, args: &SessionsArgs) -> Vec<&'a SessionView> {
    let mut rows: Vec<&SessionView> = snapshot
        .sessions
        .iter()
        .filter(|s| args.state.as_deref().is_none_or(|st| s.state == st))
        .filter(|s| {
            args.token
                .as_deref()
                .is_none_or(|t| s.token.as_deref() == Some(t))
        })
        .filter(|s| {
            args.label.as_deref().is_none_or(|needle| {
                s.legs
                    .iter()
                    .any(|l| l.label.as_deref().is_some_and(|l| l.contains(needle)))
            })
        })
        .collect();
    let total = |s: &SessionView, f: fn(&inspect::DirectionCounters) -> u64| {
        s.directions.iter().map(f).sum::<u64>()
    };
    match args.sort {
        SortBy::Vni => rows.sort_by_key(|s| s.vni),
        SortBy::Bytes => rows.sort_by_key(|s| std::cmp::Reverse(total(s, |d| d.bytes()))),
        SortBy::Packets => rows.sort_by_key(|s| std::cmp::Reverse(total(s, |d| d.packets()))),
        SortBy::LastSeen => rows.sort_by_key(|s| {
            s.directions
                .iter()
                .filter_map(|d| d.last_seen)
                .min()
                .unwrap_or(Duration::MAX)
        }),
    }
    rows
}

/// The session table as text.
pub fn table(rows: &[&SessionView]) -> String {
    let mut out = String::new();
    let with_rates = rows.iter().any(|s| s.rates.is_some());
    let _ = write!(
        out,
        "{:<9} {:<9} {:<10} {:<36} {:<36} {:>20} {:>20} {:<9} {:<9}",
        "VNI", "KIND", "STATE", "LEG A", "LEG B", "A→B", "B→A", "PATH", "SEEN"
    );
    if with_rates {
        let _ = write!(out, " {:<24} {:<24}", "RATE A→B", "RATE B→A");
    }
    let _ = writeln!(out);
    for s in rows {
        let dir = |i: usize| {
            let d = &s.directions[i];
            format!("{} pkt {}", d.packets(), human_bytes(d.bytes()))
        };
        let seen = s.directions.iter().filter_map(|d| d.last_seen).min();
        let _ = write!(
            out,
            "{:<9} {:<9} {:<10} {:<36} {:<36} {:>20} {:>20} {:<9} {:<9}",
            s.vni,
            s.kind,
            s.state,
            leg_text(s, 0),
            leg_text(s, 1),
            dir(0),
            dir(1),
            s.path.name(),
            human_age(seen)
        );
        if let Some(r) = &s.rates {
            let _ = write!(out, " {:<24} {:<24}", human_rate(&r[0]), human_rate(&r[1]));
        }
        let _ = writeln!(out);
    }
    out
}

fn detail(s: &SessionView) -> String {
    let mut out = String::new();
    match s.ports {
        Some([a, b]) => {
            let _ = writeln!(out, "wireguard pair {} ({})", s.vni, s.state);
            let _ = writeln!(out, "  ports    a {a}, b {b}");
        }
        None => {
            let _ = writeln!(out, "session {} ({})", s.vni, s.state);
        }
    }
    let _ = writeln!(out, "  token    {}", s.token.as_deref().unwrap_or("-"));
    if let Some(ms) = s.created_unix_ms {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let _ = writeln!(out, "  created  {}", humantime::format_rfc3339_seconds(t));
    }
    if let (Some(b), Some(i)) = (s.bind_lifetime_s, s.idle_lifetime_s) {
        let _ = writeln!(out, "  lifetimes bind {b}s, idle {i}s");
    }
    let _ = writeln!(out, "  path     {}", s.path.name());
    if let Some(r) = &s.rates {
        let _ = writeln!(
            out,
            "  rate     a→b {}, b→a {}",
            human_rate(&r[0]),
            human_rate(&r[1])
        );
    }
    for (i, name) in ["a", "b"].iter().enumerate() {
        let d = &s.directions[i];
        let _ = writeln!(out, "  leg {name}    {}", leg_text(s, i));
        let _ = writeln!(
            out,
            "    sent   kernel {} pkt / {}, userspace {} pkt / {}, last {}",
            d.kernel_packets,
            human_bytes(d.kernel_bytes),
            d.userspace_packets,
            human_bytes(d.userspace_bytes),
            human_age(d.last_seen)
        );
    }
    out
}

/// The TURN allocation table as text.
pub fn allocation_table(rows: &[inspect::AllocationView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<30} {:<5} {:<11} {:<24} {:>5} {:>5} {:>20} {:>20} {:<9} {:<9}",
        "SLOT",
        "CLIENT",
        "VIA",
        "RELAYED",
        "USER",
        "PERMS",
        "CHANS",
        "TO PEER",
        "TO CLIENT",
        "PATH",
        "EXPIRES"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for a in rows {
        let dir = |i: usize| {
            let d = &a.directions[i];
            format!("{} pkt {}", d.packets(), human_bytes(d.bytes()))
        };
        let user = crate::fronts::turn::auth::quota_user(&a.username);
        let _ = writeln!(
            out,
            "{:<6} {:<30} {:<5} {:<11} {:<24} {:>5} {:>5} {:>20} {:>20} {:<9} {:<9}",
            a.slot,
            a.client.map_or("-".into(), |c| c.to_string()),
            a.transport,
            format!("{} {}", a.relayed_port, a.families.join("+")),
            user,
            a.permissions.len(),
            a.channels.len(),
            dir(0),
            dir(1),
            a.path.name(),
            format!("{}s", a.expires_unix_ms.saturating_sub(now_ms) / 1000),
        );
    }
    out
}

/// A rate for humans.
pub fn human_rate(r: &inspect::Rate) -> String {
    let (v, unit) = match r.bits_per_sec {
        b if b >= 1e9 => (b / 1e9, "Gbit/s"),
        b if b >= 1e6 => (b / 1e6, "Mbit/s"),
        b if b >= 1e3 => (b / 1e3, "kbit/s"),
        b => (b, "bit/s"),
    };
    format!("{:.0} pps {v:.1} {unit}", r.packets_per_sec)
}

/// Runs `relay sessions`.
pub fn run(args: SessionsArgs) -> Result<()> {
    let mut snapshot = inspect::snapshot(&args.pin.pin_dir)?;
    if !args.interval.is_zero() {
        std::thread::sleep(args.interval);
        let before = snapshot;
        snapshot = inspect::snapshot(&args.pin.pin_dir)?;
        inspect::with_rates(&mut snapshot, &before);
    }
    if let Some(SessionsCommand::Show { vni }) = args.command {
        let s = snapshot
            .sessions
            .iter()
            .find(|s| s.vni == vni)
            .with_context(|| format!("no session {vni} in {}", args.pin.pin_dir.display()))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(s)?);
        } else {
            print!("{}", detail(s));
        }
        return Ok(());
    }
    let rows = select(&snapshot, &args);
    match (args.json, args.front) {
        (true, Some(FrontFilter::Turn)) => {
            println!("{}", serde_json::to_string_pretty(&snapshot.allocations)?);
        }
        (true, _) => println!("{}", serde_json::to_string_pretty(&rows)?),
        (false, front) => {
            if front != Some(FrontFilter::Turn) {
                print!("{}", table(&rows));
                println!(
                    "{} of {} sessions shown; map capacity {}",
                    rows.len(),
                    snapshot.sessions.len(),
                    snapshot.capacity
                );
            }
            let turn = front == Some(FrontFilter::Turn) || !snapshot.allocations.is_empty();
            if turn && front != Some(FrontFilter::Sessions) {
                if front != Some(FrontFilter::Turn) {
                    println!();
                }
                print!("{}", allocation_table(&snapshot.allocations));
                println!(
                    "{} TURN allocations; map capacity {}",
                    snapshot.allocations.len(),
                    snapshot.allocation_capacity
                );
            }
        }
    }
    Ok(())
}
