//! Attaching the relay program to the configured interfaces in the configured mode, through
//! pinned links. A link left pinned by a previous daemon is updated in place (atomically, the
//! kernel swaps the program under it), so restarting never leaves an interface without XDP.

use std::fmt;

use anyhow::{Context, Result, bail};
use aya::programs::{XdpMode as AyaMode, links::PinnedLink, xdp::XdpLink};
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    dataplane::{Dataplane, loader::link_pin_path, object::PROGRAM_RELAY},
};

/// The mode an interface actually runs the program in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver.
    Native,
    /// In the network stack.
    Generic,
    /// Kept from a previous daemon (updated in place; its mode is whatever it was).
    Kept,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Kept => "kept",
        })
    }
}

/// Attaches (or re-attaches) the relay program on `interface`.
pub fn attach(dataplane: &mut Dataplane, interface: &str, mode: XdpMode) -> Result<AttachedMode> {
    let pin = link_pin_path(dataplane.pin_dir(), interface);
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?;
        let link = XdpLink::try_from(aya::programs::links::FdLink::from(pinned))
            .context("the pinned link is not an XDP link")?;
        dataplane
            .relay_program()?
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {interface}"))?;
        info!(interface, "updated the pinned XDP link in place");
        return Ok(AttachedMode::Kept);
    }
    match mode {
        XdpMode::Native => {
            dataplane.attach_pinned(PROGRAM_RELAY, interface, AyaMode::Driver)?;
            Ok(AttachedMode::Native)
        }
        XdpMode::Generic => {
            dataplane.attach_pinned(PROGRAM_RELAY, interface, AyaMode::Skb)?;
            Ok(AttachedMode::Generic)
        }
        XdpMode::Auto => match dataplane.attach_pinned(PROGRAM_RELAY, interface, AyaMode::Driver) {
            Ok(_) => Ok(AttachedMode::Native),
            Err(e) => {
                warn!(
                    interface,
                    error = format!("{e:#}"),
                    "native XDP failed; falling back to generic mode (slower)"
                );
                dataplane.attach_pinned(PROGRAM_RELAY, interface, AyaMode::Skb)?;
                Ok(AttachedMode::Generic)
            }
        },
        XdpMode::Off => bail!("attach called with xdp.mode: off"),
    }
}
