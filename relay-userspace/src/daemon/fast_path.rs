//! The daemon's data plane: the relay's addresses, and the XDP fast path loaded, configured,
//! attached to the interfaces and pinned (or, with `xdp.mode: off`, its maps alone).

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use super::{
    attach::{self, AttachedMode},
    host,
};
use crate::{
    config::{Config, XdpMode},
    control::plane::KernelState,
    dataplane::{Dataplane, LoadOptions, settings::FastPathSettings},
};

/// The local addresses to listen on: configured, or the interfaces' own.
pub fn listen_addresses(config: &Config) -> Result<Vec<IpAddr>> {
    if !config.relay.listen.is_empty() {
        return Ok(config.relay.listen.clone());
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for interface in &config.interfaces {
        for ip in host::interface_addresses(interface)? {
            if !out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
                out.push(ip);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no address found on {:?}: set relay.listen",
            config.interfaces
        );
    }
    Ok(out)
}

/// The fast path's settings for the relay's addresses `listen` (the first of each family).
pub fn settings(config: &Config, listen: &[IpAddr]) -> FastPathSettings {
    let v4 = listen.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    });
    let v6 = listen.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        _ => None,
    });
    let mut settings = FastPathSettings::new(v4, v6, config.relay.port);
    settings.nexthop_ttl = config.xdp.nexthop_cache_ttl;
    settings.nexthop_cache_entries = config.xdp.nexthop_cache_entries;
    settings
}

/// The kernel side and the mode each interface runs in.
pub type KernelSetup = (Option<KernelState>, Vec<(String, AttachedMode)>);

/// Loads the XDP object, configures and attaches it (unless `xdp.mode: off`, where only the
/// maps are used, and only if they can be).
pub fn start(config: &Config, settings: &FastPathSettings) -> Result<KernelSetup> {
    let options = LoadOptions {
        pin_dir: config.pin_dir.clone(),
        max_sessions: config.sessions.max_sessions,
        max_allocations: config
            .turn
            .as_ref()
            .map_or(relay_common::turn::DEFAULT_MAX_ALLOCATIONS, |t| {
                t.max_allocations
            }),
        nexthop_cache_entries: settings.cache_entries(),
        shared_from: None,
    };
    let mut dataplane = match Dataplane::load(&options) {
        Ok(d) => d,
        Err(e) if config.xdp.mode == XdpMode::Off => {
            warn!(
                error = format!("{e:#}"),
                "xdp.mode is off and the BPF maps are unavailable: sessions live in memory only \
                 (the CLI cannot show them, a restart drops them)"
            );
            return Ok((None, Vec::new()));
        }
        Err(e) => {
            return Err(e.context("loading the XDP fast path (xdp.mode: off runs without it)"));
        }
    };
    // The program's rare warnings (rate-limited in the kernel) join the daemon's logs.
    if let Some(reader) = dataplane.logger(log::logger()) {
        spawn_kernel_log_reader(reader);
    }
    let clock = dataplane.clock().context("calibrating the kernel clock")?;
    dataplane.pin_clock_probe()?;
    let mut attached = Vec::new();
    if config.xdp.mode == XdpMode::Off {
        // Maps only (sessions survive a later switch back); no program on any interface.
        dataplane.maps.set_config(&Default::default())?;
        attach::detach_all(&dataplane)?;
    } else {
        dataplane.maps.set_config(&settings.to_map_value(&clock))?;
        for interface in &config.interfaces {
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str())
                .with_context(|| format!("interface {interface} not found"))?;
            dataplane
                .maps
                .redirect
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("adding {interface} to the redirect map"))?;
            if config.xdp.manage_forwarding
                && let Err(e) = host::enable_forwarding(interface)
            {
                // Still a working relay, only slower: every packet takes the userspace path
                // (counted as passed_fib_forwarding_disabled, and logged by the program).
                warn!(
                    interface,
                    error = format!("{e:#}"),
                    "could not enable IP forwarding: the fast path will hand every packet to userspace"
                );
            }
            let mode = attach::attach(&mut dataplane, interface, config.xdp.mode)?;
            info!(interface, %mode, "XDP fast path attached");
            attached.push((interface.clone(), mode));
        }
        attach::record_build(&mut dataplane)?;
    }
    Ok((Some(KernelState { dataplane, clock }), attached))
}

/// Forwards aya-log records from the XDP program to the `log` facade (and so to tracing)
/// whenever its ring buffer has data.
fn spawn_kernel_log_reader(reader: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's file descriptor, which stays open and unchanged
    // for as long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        warn!("cannot poll the XDP program's log buffer; its warnings will not be shown");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                break;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
