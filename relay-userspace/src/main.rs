use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use relay_userspace::{
    cli::{
        check::{self, CheckArgs},
        client::{self, ClientCommand},
        down::{self, DownArgs},
        explain::{self, ExplainArgs},
        sessions::{self, SessionsArgs},
        stats::{self, StatsArgs},
        top::{self, TopArgs},
        turn::{self, TurnCommand},
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
        /// On exit, detach XDP from the interfaces (nothing is relayed until a daemon runs
        /// again; sessions stay pinned for it). Default: leave the fast path running, so a
        /// restart or upgrade loses nothing.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Preflight: can this host run the relay, natively and fast? (non-zero exit on a failure)
    Check(CheckArgs),
    /// Remove the relay from this host: detach XDP, unpin every map (drops all sessions).
    Down(DownArgs),
    /// Allocate, inspect and join sessions as a client.
    #[command(subcommand)]
    Client(ClientCommand),
    /// The session table, read from the pinned maps (works while the daemon is down).
    Sessions(SessionsArgs),
    /// Verdict counters of both forwarders, XDP mode per interface, map occupancy.
    Stats(StatsArgs),
    /// A live view of the busiest sessions and the relay's rates (q to quit).
    Top(TopArgs),
    /// TURN helpers (mint REST credentials).
    #[command(subcommand)]
    Turn(TurnCommand),
    /// Why a frame is forwarded, passed or dropped: runs it through the live program, sends
    /// nothing, changes no counter.
    Explain(ExplainArgs),
}

fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Command::Check(args) = cli.command {
        return check::run(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Serve {
            config,
            detach_on_exit,
        } => {
            let path = config;
            let config = Config::load(&path)?;
            logging::init(&config.log.level, config.log.format);
            runtime.block_on(daemon::serve::run(&path, config, detach_on_exit))?;
            Ok(ok)
        }
        Command::Down(args) => down::run(args).map(|()| ok),
        Command::Client(command) => {
            logging::init("info", LogFormat::Text);
            runtime.block_on(client::run(command))?;
            Ok(ok)
        }
        Command::Sessions(args) => sessions::run(args).map(|()| ok),
        Command::Stats(args) => stats::run(args).map(|()| ok),
        Command::Explain(args) => explain::run(args).map(|()| ok),
        Command::Top(args) => top::run(args).map(|()| ok),
        Command::Turn(command) => turn::run(command).map(|()| ok),
        Command::Check(_) => unreachable!("handled above"),
    }
}
