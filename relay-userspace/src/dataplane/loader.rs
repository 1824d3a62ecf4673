//! Loading the XDP object with its maps pinned, and attaching programs to interfaces.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, ProgramArray},
    programs::{Xdp, XdpMode, links::FdLink},
};
use relay_common::{maps as names, turn};

use super::{RelayMaps, bpffs, object};

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory where every map is pinned by name (created if missing). Maps already
    /// pinned there are reused, which is how a restarted daemon keeps its sessions.
    pub pin_dir: PathBuf,
    /// Capacity of the session map and of the per-slot counter arrays.
    pub max_sessions: u32,
    /// Capacity of the TURN allocation maps (their binding maps get four entries each).
    pub max_allocations: u32,
    /// Entries of the per-CPU next-hop cache (a power of two).
    pub nexthop_cache_entries: u32,
    /// Take the session, config, redirect and metadata maps from this other pin directory
    /// instead (a private copy of the program over a running relay's state: `relay explain`).
    pub shared_from: Option<PathBuf>,
}

/// The maps a copy of the program shares with the relay it inspects: what decides a verdict.
/// Counters stay private, so inspecting never changes the live numbers.
pub const SHARED_MAPS: [&str; 12] = [
    names::SESSION_SLOTS,
    names::SESSIONS,
    names::CONFIG,
    names::REDIRECT,
    names::SESSION_META,
    turn::PORT_OWNERS,
    turn::TURN_ALLOCATIONS,
    turn::TURN_ALLOCATION_META,
    turn::TURN_CHANNELS,
    turn::TURN_PEERS,
    turn::TURN_PERMISSIONS,
    relay_common::wireguard::WIREGUARD_PAIRS,
];

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
        super::compat::check_pinned(
            &options.pin_dir,
            options.max_sessions,
            options.max_allocations,
        )?;
        let mut loader = EbpfLoader::new();
        if let Some(shared) = &options.shared_from {
            for name in SHARED_MAPS {
                let path = shared.join(name);
                if !path.exists() {
                    anyhow::bail!(
                        "no relay maps pinned in {} ({name} missing)",
                        shared.display()
                    );
                }
                loader.map_pin_path(name, path);
            }
        }
        let bindings = super::turn_maps::binding_capacity(options.max_allocations);
        let mut ebpf = loader
            .default_map_pin_directory(&options.pin_dir)
            .map_max_entries(names::SESSION_SLOTS, options.max_sessions)
            .map_max_entries(names::SESSIONS, options.max_sessions)
            .map_max_entries(names::SESSION_STATS, options.max_sessions)
            .map_max_entries(names::USERSPACE_STATS, options.max_sessions)
            .map_max_entries(names::SESSION_META, options.max_sessions)
            .map_max_entries(
                relay_common::wireguard::WIREGUARD_PAIRS,
                options.max_sessions,
            )
            .map_max_entries(names::NEXTHOP_CACHE, options.nexthop_cache_entries)
            .map_max_entries(turn::TURN_ALLOCATIONS, options.max_allocations)
            .map_max_entries(turn::TURN_ALLOCATION_META, options.max_allocations)
            .map_max_entries(turn::TURN_STATS, options.max_allocations)
            .map_max_entries(turn::TURN_USERSPACE_STATS, options.max_allocations)
            .map_max_entries(turn::TURN_CHANNELS, bindings)
            .map_max_entries(turn::TURN_PEERS, bindings)
            .map_max_entries(turn::TURN_PERMISSIONS, bindings)
            .load(object::bytes())
            .context("loading the XDP object")?;
        let mut maps = RelayMaps::take_from(&mut ebpf)?;
        if options.shared_from.is_none() {
            let mut pairs: aya::maps::Array<_, relay_common::wireguard::WireGuardPair> = ebpf
                .map_mut(relay_common::wireguard::WIREGUARD_PAIRS)
                .context("the XDP object has no WireGuard pair map")?
                .try_into()?;
            let moved = super::legacy::migrate(&options.pin_dir, &mut maps, &mut pairs)?;
            if moved != super::legacy::Migrated::default() {
                tracing::info!(
                    ports = moved.ports,
                    allocations = moved.allocations,
                    pairs = moved.pairs,
                    "moved the state an earlier build pinned into this build's maps"
                );
            }
        }
        let mut dataplane = Dataplane {
            ebpf,
            maps,
            pin_dir: options.pin_dir.clone(),
        };
        dataplane.program(object::PROGRAM_RELAY)?;
        dataplane.install_fronts()?;
        Ok(dataplane)
    }

    /// Loads the fronts' programs and puts them where an earlier build's relay program, still
    /// attached while an upgrade replaces it, tail-calls them (this build's runs TURN inline).
    fn install_fronts(&mut self) -> Result<()> {
        let fd = self
            .program(object::PROGRAM_TURN)?
            .fd()
            .context("TURN program descriptor")?
            .try_clone()
            .context("duplicating the TURN program descriptor")?;
        let map = self
            .ebpf
            .map_mut(names::FRONT_PROGRAMS)
            .context("no front program map in the XDP object")?;
        let mut fronts: ProgramArray<&mut MapData> =
            ProgramArray::try_from(map).context("the front program map")?;
        fronts
            .set(names::FRONT_PROGRAM_TURN, &fd, 0)
            .context("installing the TURN program")?;
        Ok(())
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
            // The kernel gives up verifying with EAGAIN when a signal arrives meanwhile (a
            // child's SIGCHLD, in a process that runs commands on other threads), and the
            // relay's program takes the verifier a few hundred milliseconds: try again, as
            // libbpf does.
            let mut attempts = 0;
            loop {
                match program.load() {
                    Ok(()) => break,
                    Err(aya::programs::ProgramError::LoadError { io_error, .. })
                        if io_error.raw_os_error() == Some(nix::errno::Errno::EAGAIN as i32)
                            && attempts < 5 =>
                    {
                        attempts += 1;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("verifier rejected program `{name}`"));
                    }
                }
            }
        }
        Ok(program)
    }

    /// The relay's forwarding program.
    pub fn relay_program(&mut self) -> Result<&mut Xdp> {
        self.program(object::PROGRAM_RELAY)
    }

    /// The reader of the program's aya-log records, delivering them to `logger` (the daemon
    /// passes the `log` facade, which tracing picks up). `None` when the object logs nothing.
    pub fn logger<T: log::Log>(&mut self, logger: T) -> Option<aya_log::EbpfLogger<T>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).ok()
    }

    /// Measures how the kernel's jiffies (the maps' timestamps) relate to this process's clock.
    pub fn clock(&mut self) -> Result<super::clock::JiffiesClock> {
        super::clock::JiffiesClock::calibrate(self.program(object::PROGRAM_CLOCK_PROBE)?)
    }

    /// Pins the clock probe next to the maps (replacing a previous daemon's), so the CLI can
    /// read the kernel's clock without loading anything.
    pub fn pin_clock_probe(&mut self) -> Result<()> {
        let path = self.pin_dir.join(names::CLOCK_PROBE_PIN);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        self.program(object::PROGRAM_CLOCK_PROBE)?
            .pin(&path)
            .with_context(|| format!("pinning {}", path.display()))
    }

    /// Attaches `program` (the relay's, in production) to `interface` through a BPF link pinned in the pin
    /// directory, so the attachment outlives this process: a restarted daemon, and the CLI, find
    /// it there, and removing the pin detaches the program. Returns the pin's path.
    pub fn attach_pinned(
        &mut self,
        program: &str,
        interface: &str,
        mode: XdpMode,
    ) -> Result<PathBuf> {
        let path = link_pin_path(&self.pin_dir, interface);
        if path.exists() {
            anyhow::bail!(
                "{interface} already has a pinned relay link at {} (another relay instance?)",
                path.display()
            );
        }
        let name = program;
        let program = self.program(name)?;
        let id = program
            .attach(interface, mode)
            .with_context(|| format!("attaching `{name}` to {interface} ({mode:?})"))?;
        let link: FdLink = program
            .take_link(id)?
            .try_into()
            .context("the kernel attached XDP without a BPF link (kernel older than 5.9?)")?;
        link.pin(&path)
            .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
        Ok(path)
    }

    /// Attaches program `name` to `interface` in `mode`; it stays attached while `self` lives.
    pub fn attach(&mut self, name: &str, interface: &str, mode: XdpMode) -> Result<()> {
        self.program(name)?
            .attach(interface, mode)
            .with_context(|| format!("attaching `{name}` to {interface} in {mode:?} mode"))?;
        Ok(())
    }
}

/// Path of the pinned XDP link for `interface` in `pin_dir`.
pub fn link_pin_path(pin_dir: &Path, interface: &str) -> PathBuf {
    pin_dir.join(format!("{}{interface}", names::LINK_PREFIX))
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
