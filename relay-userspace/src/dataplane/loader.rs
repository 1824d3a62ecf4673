//! Loading the XDP object with its maps pinned, and attaching programs to interfaces.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode},
};
use relay_common::maps as names;

use super::{RelayMaps, bpffs, object};

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory where every map is pinned by name (created if missing). Maps already
    /// pinned there are reused, which is how a restarted daemon keeps its sessions.
    pub pin_dir: PathBuf,
    /// Capacity of the session map and of the per-slot counter arrays.
    pub max_sessions: u32,
}

/// The loaded XDP object: its programs and typed maps.
pub struct Dataplane {
    ebpf: Ebpf,
    /// Every relay map.
    pub maps: RelayMaps,
    pin_dir: PathBuf,
}

impl Dataplane {
    /// Loads the embedded object, creating or reusing the pinned maps, and loads the relay
    /// program into the kernel (not attached anywhere yet).
    pub fn load(options: &LoadOptions) -> Result<Dataplane> {
        bpffs::ensure_pin_dir(&options.pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&options.pin_dir)
            .map_max_entries(names::SESSIONS, options.max_sessions)
            .map_max_entries(names::SESSION_STATS, options.max_sessions)
            .map_max_entries(names::USERSPACE_STATS, options.max_sessions)
            .load(object::bytes())
            .context("loading the XDP object")?;
        let maps = RelayMaps::take_from(&mut ebpf)?;
        let mut dataplane = Dataplane {
            ebpf,
            maps,
            pin_dir: options.pin_dir.clone(),
        };
        dataplane.program(object::PROGRAM_RELAY)?;
        Ok(dataplane)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Program `name` of the object, loaded into the kernel on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program `{name}` in the XDP object"))?
            .try_into()
            .with_context(|| format!("program `{name}` is not an XDP program"))?;
        if program.fd().is_err() {
            program
                .load()
                .with_context(|| format!("verifier rejected program `{name}`"))?;
        }
        Ok(program)
    }

    /// The relay's forwarding program.
    pub fn relay_program(&mut self) -> Result<&mut Xdp> {
        self.program(object::PROGRAM_RELAY)
    }

    /// Attaches program `name` to `interface` in `mode`; it stays attached while `self` lives.
    pub fn attach(&mut self, name: &str, interface: &str, mode: XdpMode) -> Result<()> {
        self.program(name)?
            .attach(interface, mode)
            .with_context(|| format!("attaching `{name}` to {interface} in {mode:?} mode"))?;
        Ok(())
    }
}

/// Removes every pinned file in `dir` and the directory itself (a clean `relay down`, tests).
pub fn remove_pins(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}
