//! `relay drain` and `relay undrain`: take this relay out of its fleet without cutting anything
//! (docs/operations.md, "Running a fleet"). Draining refuses new sessions, pairs and TURN
//! allocations (naming the alternates) while everything already here keeps running; `--wait`
//! returns when nothing is left, for maintenance scripts and Kubernetes' `preStop`.
//!
//! Over the API with an admin token, or `--local`: as root on the relay host (or in its pod),
//! writing the pinned drain state that the daemon follows within a second — no token, no TLS
//! name to match, and it works while the daemon is down.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;

use super::{client::ApiArgs, sessions::PinArgs};
use crate::{
    api::fleet::{DrainState, Occupancy, Readiness},
    fleet, inspect,
};

/// `relay drain` arguments.
#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Then wait until no session, pair or allocation is left (exit 0), or --timeout (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Only show the drain state; change nothing.
    #[arg(long, conflicts_with = "wait")]
    pub status: bool,
    /// Write the pinned drain state directly (root on the relay host; no API, no token).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub pin: PinArgs,
}

/// `relay undrain` arguments.
#[derive(Args, Debug)]
pub struct UndrainArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Write the pinned drain state directly (root on the relay host; no API, no token).
    #[arg(long)]
    pub local: bool,
    #[command(flatten)]
    pub pin: PinArgs,
}

/// The drain state and what is left, read from the pinned maps (`--local`).
fn local_state(pin: &PinArgs) -> Result<DrainState> {
    let dir = &pin.pin_dir;
    let state = fleet::pinned_state(dir).ok_or_else(|| {
        anyhow::anyhow!(
            "no drain state pinned in {} (is the relay running there, with this build?)",
            dir.display()
        )
    })?;
    let snapshot = inspect::snapshot(dir)?;
    let pairs = snapshot
        .sessions
        .iter()
        .filter(|s| s.kind == "wireguard")
        .count() as u64;
    let max = u64::from(snapshot.capacity);
    let readiness = Readiness {
        draining: state.draining != 0,
        sessions: Occupancy {
            used: snapshot.sessions.len() as u64 - pairs,
            max,
        },
        pairs: Occupancy { used: pairs, max },
        allocations: Some(Occupancy {
            used: snapshot.allocations.len() as u64,
            max: u64::from(snapshot.allocation_capacity),
        }),
        ..Readiness::default()
    };
    Ok(DrainState {
        draining: state.draining != 0,
        since: (state.draining != 0).then(|| crate::api::rfc3339(state.since_unix_s * 1000)),
        remaining: readiness.remaining(),
        readiness,
    })
}

fn describe(s: &DrainState) -> String {
    let r = &s.readiness;
    let allocations = r
        .allocations
        .as_ref()
        .map_or(String::new(), |a| format!(", {} TURN allocations", a.used));
    format!(
        "{}: {} sessions, {} WireGuard pairs{allocations} left",
        match (&s.draining, &s.since) {
            (true, Some(since)) => format!("draining since {since}"),
            (true, None) => "draining".to_string(),
            (false, _) => "not draining".to_string(),
        },
        r.sessions.used,
        r.pairs.used,
    )
}

/// Runs `relay drain`.
pub async fn drain(args: DrainArgs) -> Result<ExitCode> {
    let client = if args.local {
        if !args.status {
            fleet::set_pinned(&args.pin.pin_dir, true)?;
        }
        None
    } else {
        Some(args.api.client()?)
    };
    let current = async || match &client {
        Some(c) => c.drain_state().await,
        None => local_state(&args.pin),
    };
    let mut state = match &client {
        Some(c) if !args.status => c.set_draining(true).await?,
        _ => current().await?,
    };
    println!("{}", describe(&state));
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut shown = state.remaining;
    while state.remaining > 0 {
        if tokio::time::Instant::now() >= deadline {
            println!(
                "gave up after {}: {}",
                humantime::format_duration(args.timeout),
                describe(&state)
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        state = current().await?;
        if !state.draining {
            println!("undrained meanwhile: {}", describe(&state));
            return Ok(ExitCode::FAILURE);
        }
        if state.remaining != shown {
            println!("{}", describe(&state));
            shown = state.remaining;
        }
    }
    println!("drained: nothing is left on this relay");
    Ok(ExitCode::SUCCESS)
}

/// Runs `relay undrain`.
pub async fn undrain(args: UndrainArgs) -> Result<()> {
    let state = if args.local {
        fleet::set_pinned(&args.pin.pin_dir, false)?;
        local_state(&args.pin)?
    } else {
        args.api.client()?.set_draining(false).await?
    };
    println!("{}", describe(&state));
    Ok(())
}
