//! Attaching the relay program to the configured interfaces in the configured mode, through
//! pinned links. A link left pinned by a previous daemon is kept when it runs this build, and
//! otherwise updated in place (the kernel swaps the program under the link atomically), so
//! neither a restart nor an upgrade leaves an interface without XDP for a single packet. A link
//! in another mode than the configured one (the operator changed `xdp.mode`) is replaced: there
//! is no atomic switch between native and generic, so for that moment packets take the userspace
//! path, which carries them under the same rules.

use std::fmt;

use anyhow::{Context, Result, bail};
use aya::programs::{XdpMode as AyaMode, links::PinnedLink, xdp::XdpLink};
use relay_common::maps::BuildInfo;
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    dataplane::{
        Dataplane,
        attachment::{self, AttachMode},
        loader::link_pin_path,
        object::{self, PROGRAM_RELAY},
    },
};

/// What attaching did on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Attached in the driver.
    Native,
    /// Attached in the network stack.
    Generic,
    /// A previous daemon's link runs the same build: left untouched.
    Kept,
    /// A previous daemon's link ran another build: the program was swapped under the link
    /// atomically (no packet meets an interface without XDP).
    Replaced,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Kept => "kept (same build)",
            AttachedMode::Replaced => "replaced in place (new build)",
        })
    }
}

/// Whether an attachment the kernel runs in `current` mode is what `configured` asks for.
pub fn satisfies(configured: XdpMode, current: AttachMode) -> bool {
    match configured {
        XdpMode::Native => current == AttachMode::Native,
        XdpMode::Generic => current == AttachMode::Generic,
        XdpMode::Auto => matches!(current, AttachMode::Native | AttachMode::Generic),
        XdpMode::Off => false,
    }
}

/// Detaches the relay program from every interface with a pinned link (`xdp.mode: off`: the
/// operator asked for no XDP at all). Sessions stay pinned.
pub fn detach_all(dataplane: &Dataplane) -> Result<()> {
    for interface in attachment::pinned_interfaces(dataplane.pin_dir()) {
        unpin_and_wait(&link_pin_path(dataplane.pin_dir(), &interface), &interface)?;
        info!(interface, "xdp.mode is off: detached the relay program");
    }
    Ok(())
}

/// How long an unpinned link may take to leave its interface.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes the link pinned at `pin` and waits (bounded) until `interface` runs no XDP program:
/// bpffs drops its reference to a link from a workqueue, so the link can still be attached for
/// a moment after the unlink — and a native attach while a generic one remains fails with
/// "File exists".
fn unpin_and_wait(pin: &std::path::Path, interface: &str) -> Result<()> {
    std::fs::remove_file(pin).with_context(|| format!("unpinning {}", pin.display()))?;
    let deadline = std::time::Instant::now() + RELEASE_WAIT;
    while attachment::attachment(interface).is_ok_and(|a| a.mode != AttachMode::None) {
        if std::time::Instant::now() >= deadline {
            warn!(
                interface,
                "the unpinned XDP link is still attached after 2 s"
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// Attaches (or re-attaches) the relay program on `interface`.
pub fn attach(dataplane: &mut Dataplane, interface: &str, mode: XdpMode) -> Result<AttachedMode> {
    let pin = link_pin_path(dataplane.pin_dir(), interface);
    let ours = BuildInfo {
        object_sha256: object::sha256(),
    };
    let running = dataplane.maps.build_info.get(&0, 0).ok();
    if pin.exists() {
        match attachment::attachment(interface) {
            Ok(a) if !satisfies(mode, a.mode) => {
                warn!(
                    interface,
                    pinned = a.mode.name(),
                    configured = %mode,
                    "the pinned XDP link runs in another mode: re-attaching (the userspace path \
                     carries packets meanwhile)"
                );
                unpin_and_wait(&pin, interface)?;
            }
            Ok(_) => {}
            Err(e) => warn!(
                interface,
                error = format!("{e:#}"),
                "cannot tell the pinned link's mode; keeping it"
            ),
        }
    }
    if pin.exists() && running == Some(ours) {
        info!(interface, "the pinned XDP link runs this build: kept");
        return Ok(AttachedMode::Kept);
    }
    if pin.exists() {
        let pinned = PinnedLink::from_pin(&pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?;
        let link = XdpLink::try_from(aya::programs::links::FdLink::from(pinned))
            .context("the pinned link is not an XDP link")?;
        dataplane
            .relay_program()?
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {interface}"))?;
        info!(
            interface,
            "swapped the program under the pinned XDP link (new build)"
        );
        return Ok(AttachedMode::Replaced);
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

/// Records that the pinned links now run this build.
pub fn record_build(dataplane: &mut Dataplane) -> Result<()> {
    let ours = BuildInfo {
        object_sha256: object::sha256(),
    };
    dataplane
        .maps
        .build_info
        .set(0, ours, 0)
        .context("writing build_info")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_link_is_kept_only_in_the_configured_mode() {
        use AttachMode::*;
        assert!(satisfies(XdpMode::Native, Native));
        assert!(!satisfies(XdpMode::Native, Generic));
        assert!(satisfies(XdpMode::Generic, Generic));
        assert!(!satisfies(XdpMode::Generic, Native));
        assert!(satisfies(XdpMode::Auto, Native) && satisfies(XdpMode::Auto, Generic));
        // A link whose interface lost its program (deleted and re-created) is re-attached.
        for mode in [XdpMode::Native, XdpMode::Generic, XdpMode::Auto] {
            assert!(!satisfies(mode, None));
        }
    }
}
