use anyhow::Result;
use clap::Parser;

/// A kernel-bypass UDP relay for peers behind hard NAT.
#[derive(Parser)]
#[command(name = "relay", version, about)]
struct Cli {}

fn main() -> Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
