//! `relay check`: the preflight report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::{
    check::{self, Status},
    config::Config,
};

/// `relay check` arguments.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Check this configuration (its interfaces, ports, endpoints).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Without a configuration: interfaces to check.
    #[arg(long = "interface")]
    pub interfaces: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks; the exit status is non-zero when any fails.
pub fn run(args: CheckArgs) -> Result<std::process::ExitCode> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let lines = check::run(config.as_ref(), &args.interfaces);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        for l in &lines {
            println!("{l}");
        }
    }
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    let warned = lines.iter().filter(|l| l.status == Status::Warn).count();
    if !args.json {
        println!(
            "\n{failed} failed, {warned} warnings, {} passed",
            lines.len() - failed - warned
        );
    }
    Ok(if failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
