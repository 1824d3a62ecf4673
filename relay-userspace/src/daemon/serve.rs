//! `relay serve`'s process loop: start the daemon, tell systemd, reload on SIGHUP, stop on
//! SIGTERM or SIGINT.

use anyhow::Result;
use tokio::signal::unix::SignalKind;
use tracing::{error, info, warn};

use super::Daemon;
use crate::config::Config;

/// How `relay serve` was asked to start and stop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Detach XDP on exit (see [`Daemon::stop`]).
    pub detach_on_exit: bool,
    /// End a drain a previous daemon left pinned.
    pub clear_drain: bool,
}

/// Runs the daemon until SIGTERM or SIGINT. SIGHUP re-reads the configuration at `path` and
/// applies what can be applied in place.
pub async fn run(path: &std::path::Path, config: Config, options: Options) -> Result<()> {
    // Handlers first: a stop request that arrives the moment we report ready must still stop
    // us gracefully (leaving the fast path running), not kill us.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut daemon = Daemon::start(&config).await?;
    if options.clear_drain && daemon.fleet().set_draining(false)? {
        info!("--clear-drain: the drain a previous daemon left pinned is over");
    }
    let status = format!(
        "relaying on {:?}, {} sessions adopted",
        daemon.started.relay, daemon.started.adopted
    );
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    );
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = int.recv() => { info!("SIGINT: stopping"); break }
            _ = hup.recv() => reload(&mut daemon, path),
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.stop(options.detach_on_exit).await;
    Ok(())
}

/// SIGHUP: re-reads and applies the configuration, telling systemd (`systemctl reload`) when
/// done. A file that does not load leaves everything as it runs.
fn reload(daemon: &mut Daemon, path: &std::path::Path) {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    states.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(false, &states);
    let outcome = Config::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|config| daemon.reload(config));
    match outcome {
        Ok(r) => {
            info!(
                tokens = r.tokens,
                certificate = r.certificate,
                "SIGHUP: configuration reloaded"
            );
            if !r.restart_needed.is_empty() {
                warn!(
                    keys = ?r.restart_needed,
                    "SIGHUP: these changes take effect at the next restart"
                );
            }
        }
        Err(e) => error!(
            error = format!("{e:#}"),
            "SIGHUP: reload refused; the running configuration stays"
        ),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}
