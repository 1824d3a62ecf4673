use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use relay_userspace::{
    cli::{
        check::{self, CheckArgs},
        client::{self, ClientCommand},
        down::{self, DownArgs},
        drain::{self, DrainArgs, UndrainArgs},
        explain::{self, ExplainArgs},
        sessions::{self, SessionsArgs},
        stats::{self, StatsArgs},
        top::{self, TopArgs},
        turn::{self, TurnCommand},
    },
    config::{Config, LogFormat},
    daemon, logging,
};

/// The static (musl) build that the packages ship: musl's own allocator serialises threads.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A kernel-bypass UDP relay for peers behind hard NAT.
#[derive(Parser)]
#[command(name = "relay", version = relay_userspace::VERSION, about)]
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
        /// Take new work at start even if a previous daemon left this relay draining (in
        /// Kubernetes the preStop hook of the pod this one replaces drained it).
        #[arg(long)]
        clear_drain: bool,
    },
    /// Preflight: can this host run the relay, natively and fast? (non-zero exit on a failure)
    Check(CheckArgs),
    /// Remove the relay from this host: detach XDP, unpin every map (drops all sessions).
    Down(DownArgs),
    /// Take this relay out of its fleet: refuse new sessions, pairs and TURN allocations
    /// (naming the alternates) while what runs keeps running (an admin token).
    Drain(DrainArgs),
    /// Take new sessions, pairs and allocations again (an admin token).
    Undrain(UndrainArgs),
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
    /// Ask a running daemon to re-read its configuration (SIGHUP): what `systemctl reload relay`
    /// runs, so the unit needs no /bin/kill (minimal systems lack procps).
    Reload {
        /// The daemon's process id (systemd passes $MAINPID; 0, 1 and groups are refused).
        #[arg(long, value_parser = clap::value_parser!(i32).range(2..))]
        pid: i32,
    },
    /// Write a man page per command (relay.1, relay-serve.1, …) into a directory (packaging).
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Command::Manpages { out } = &cli.command {
        write_manpages(out)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
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
            clear_drain,
        } => {
            let path = config;
            let config = Config::load(&path)?;
            logging::init(&config.log.level, config.log.format);
            let options = daemon::serve::Options {
                detach_on_exit,
                clear_drain,
            };
            runtime.block_on(daemon::serve::run(&path, config, options))?;
            Ok(ok)
        }
        Command::Down(args) => down::run(args).map(|()| ok),
        Command::Drain(args) => {
            logging::init("warn", LogFormat::Text);
            runtime.block_on(drain::drain(args))
        }
        Command::Undrain(args) => {
            logging::init("warn", LogFormat::Text);
            runtime.block_on(drain::undrain(args)).map(|()| ok)
        }
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
        Command::Reload { pid } => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP)
                .map_err(|e| anyhow::anyhow!("signalling process {pid}: {e}"))?;
            Ok(ok)
        }
        Command::Check(_) | Command::Manpages { .. } => unreachable!("handled above"),
    }
}

/// One page for `relay` and one per visible subcommand, at any depth (`relay-client-join.1`).
fn write_manpages(out: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out)?;
    fn write(command: clap::Command, name: String, out: &std::path::Path) -> Result<()> {
        // clap wants a 'static name; this process writes a few dozen pages and exits.
        let command = command.name(&*Box::leak(name.clone().into_boxed_str()));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        std::fs::write(out.join(format!("{name}.1")), page)?;
        for sub in command
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            write(sub.clone(), format!("{name}-{}", sub.get_name()), out)?;
        }
        Ok(())
    }
    let mut command = Cli::command();
    command.build();
    write(command, "relay".into(), out)
}
