use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use relay_userspace::{
    cli::{
        client::{self, ClientCommand},
        explain::{self, ExplainArgs},
        sessions::{self, SessionsArgs},
        stats::{self, StatsArgs},
        top::{self, TopArgs},
    },
    config::{Config, LogFormat},
    daemon, logging,
};

/// A kernel-bypass UDP relay for peers behind hard NAT.
#[derive(Parser)]
#[command(name = "relay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay daemon.
    Serve {
        /// Configuration file (see deploy/relay.example.yaml).
        #[arg(long, short, default_value = "/etc/relay/relay.yaml")]
        config: PathBuf,
    },
    /// Allocate, inspect and join sessions as a client.
    #[command(subcommand)]
    Client(ClientCommand),
    /// The session table, read from the pinned maps (works while the daemon is down).
    Sessions(SessionsArgs),
    /// Verdict counters of both forwarders, XDP mode per interface, map occupancy.
    Stats(StatsArgs),
    /// A live view of the busiest sessions and the relay's rates (q to quit).
    Top(TopArgs),
    /// Why a frame is forwarded, passed or dropped: runs it through the live program, sends
    /// nothing, changes no counter.
    Explain(ExplainArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            logging::init(&config.log.level, config.log.format);
            runtime.block_on(daemon::serve::run(config))
        }
        Command::Client(command) => {
            logging::init("info", LogFormat::Text);
            runtime.block_on(client::run(command))
        }
        Command::Sessions(args) => sessions::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Top(args) => top::run(args),
    }
}
