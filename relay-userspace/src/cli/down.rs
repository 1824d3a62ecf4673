//! `relay down`: removes the relay from the host — detaches XDP from every interface and unpins
//! every map, dropping all sessions. The clean opposite of the zero-downtime restart, for
//! uninstalling or starting over. Stop the daemon first.

use anyhow::Result;
use clap::Args;

use super::sessions::PinArgs;
use crate::dataplane::{attachment::pinned_interfaces, loader::remove_pins};

/// `relay down` arguments.
#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub pin: PinArgs,
}

/// Runs `relay down`.
pub fn run(args: DownArgs) -> Result<()> {
    let dir = &args.pin.pin_dir;
    if !dir.exists() {
        println!(
            "nothing pinned in {}: the relay is not installed there",
            dir.display()
        );
        return Ok(());
    }
    let interfaces = pinned_interfaces(dir);
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
