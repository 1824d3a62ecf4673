//! Which interfaces run the relay program, and in which mode the kernel actually runs it. The
//! daemon asks for native mode and may fall back to generic (`xdp.mode: auto`), and a generic
//! attachment forwards several times slower: operators must be able to see it.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use relay_common::maps::LINK_PREFIX;
use serde::Serialize;

/// How the kernel runs an XDP program on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// In the network stack (slower; what `auto` falls back to).
    Generic,
    /// On the NIC.
    Offload,
    /// Several programs.
    Multiple,
    /// Nothing attached.
    None,
}

impl AttachMode {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
            AttachMode::Multiple => "multiple",
            AttachMode::None => "none",
        }
    }

    /// From the kernel's `IFLA_XDP_ATTACHED` value (as `ip -j -d link` prints it).
    pub fn from_kernel(v: u64) -> AttachMode {
        match v {
            1 => AttachMode::Native,
            2 => AttachMode::Generic,
            3 => AttachMode::Offload,
            4 => AttachMode::Multiple,
            _ => AttachMode::None,
        }
    }
}

/// One interface's XDP state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// Interface name.
    pub interface: String,
    /// Mode in effect.
    pub mode: AttachMode,
    /// Name of the attached program.
    pub program: Option<String>,
    /// Its kernel id.
    pub program_id: Option<u64>,
}

/// The interfaces with a relay link pinned in `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_PREFIX))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// What the kernel runs on `interface` (in the caller's network namespace).
pub fn attachment(interface: &str) -> Result<Attachment> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", interface])
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        anyhow::bail!(
            "interface {interface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip's JSON")?;
    let xdp = &v[0]["xdp"];
    Ok(Attachment {
        interface: interface.to_string(),
        mode: xdp["mode"]
            .as_u64()
            .map_or(AttachMode::None, AttachMode::from_kernel),
        program: xdp["prog"]["name"].as_str().map(str::to_string),
        program_id: xdp["prog"]["id"].as_u64(),
    })
}

/// The attachments of every interface with a pinned relay link.
pub fn attachments(pin_dir: &Path) -> Vec<Result<Attachment>> {
    pinned_interfaces(pin_dir)
        .iter()
        .map(|i| attachment(i))
        .collect()
}
