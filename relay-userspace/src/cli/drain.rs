//! `relay drain` and `relay undrain`: take this relay out of its fleet without cutting anything
//! (docs/operations.md, "Running a fleet"). Draining refuses new sessions, pairs and TURN
//! allocations (naming the alternates) while everything already here keeps running; `--wait`
//! returns when nothing is left, for maintenance scripts and Kubernetes' `preStop`.

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;

use super::client::ApiArgs;
use crate::api::fleet::DrainState;

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
    let client = args.api.client()?;
    let mut state = if args.status {
        client.drain_state().await?
    } else {
        client.set_draining(true).await?
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
        state = client.drain_state().await?;
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
pub async fn undrain(args: ApiArgs) -> Result<()> {
    let state = args.client()?.set_draining(false).await?;
    println!("{}", describe(&state));
    Ok(())
}
