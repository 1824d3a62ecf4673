//! `relay down`: removes the relay from the host — detaches XDP from every interface and unpins
//! every map, dropping all sessions. The clean opposite of the zero-downtime restart, for
//! uninstalling or starting over. Stop the daemon first.
//!
//! `relay down --detach-only` detaches XDP but keeps the sessions pinned (until a reboot), so a
//! relay installed again adopts them: what removing the package (not purging it) does.

use anyhow::{Context, Result};
use clap::Args;

use super::sessions::PinArgs;
use crate::dataplane::{
    attachment::pinned_interfaces,
    loader::{link_pin_path, remove_pins},
};

/// `relay down` arguments.
#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Only detach XDP (unpin the links); keep the sessions pinned for the next daemon.
    #[arg(long)]
    pub detach_only: bool,
    /// Take the pin directory from this configuration file instead (what the packages'
    /// removal scripts do, so a changed `pin_dir` is honoured). A file that does not load is
    /// an error: nothing is removed on a guess.
    #[arg(long, conflicts_with = "pin_dir")]
    pub config: Option<std::path::PathBuf>,
    /// Write the pin directory acted on to this file: a removal script keeps it (in /run,
    /// which lives as long as the pins) for a later purge, when the configuration is gone.
    #[arg(long, value_name = "FILE")]
    pub record_pin_dir: Option<std::path::PathBuf>,
}

/// Runs `relay down`.
pub fn run(args: DownArgs) -> Result<()> {
    let dir = &match &args.config {
        Some(path) => crate::config::Config::load(path)?.pin_dir,
        None => args.pin.pin_dir.clone(),
    };
    if let Some(file) = &args.record_pin_dir {
        std::fs::write(file, format!("{}\n", dir.display()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if !dir.exists() {
        println!(
            "nothing pinned in {}: the relay is not installed there",
            dir.display()
        );
        return Ok(());
    }
    let interfaces = pinned_interfaces(dir);
    if args.detach_only {
        for i in &interfaces {
            let link = link_pin_path(dir, i);
            std::fs::remove_file(&link).with_context(|| format!("unpinning {}", link.display()))?;
            println!("detached XDP from {i}");
        }
        println!(
            "sessions stay pinned in {} for the next daemon (`relay down` removes them)",
            dir.display()
        );
        return Ok(());
    }
    let pins = std::fs::read_dir(dir)?.count();
    remove_pins(dir)?;
    for i in &interfaces {
        println!("detached XDP from {i}");
    }
    println!(
        "removed {pins} pinned objects and {}: every session is gone",
        dir.display()
    );
    Ok(())
}
