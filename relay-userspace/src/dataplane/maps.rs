//! Typed handles on every relay map, either taken from a freshly loaded object or reopened from
//! the pin directory (the CLI, a restarted daemon).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
};
use relay_common::{
    maps::{
        self as names, BuildInfo, RelayConfig, Session, SessionMeta, SessionStats, SlotSession,
        vni_slot,
    },
    verdict::{Reason, VerdictCounter},
};

/// Why the maps could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map is missing from the pin directory: the relay is not running there.
    #[error(
        "no relay maps pinned in {dir} (map `{map}` missing): is the relay running, and is this \
         its pin directory?"
    )]
    NotPinned {
        /// Pin directory searched.
        dir: PathBuf,
        /// First missing map.
        map: &'static str,
    },
    /// Opening pinned maps needs CAP_BPF (and read access to the directory).
    #[error("permission denied opening {path}: run as root (CAP_BPF)")]
    PermissionDenied {
        /// The pinned file.
        path: PathBuf,
    },
    /// The object lacks a map (a build mismatch).
    #[error("the XDP object has no map `{0}`")]
    MissingInObject(&'static str),
    /// The number of possible CPUs could not be read.
    #[error("reading the number of CPUs: {0}")]
    Cpus(std::io::Error),
    /// A pinned map of an earlier build could not be unpinned after its contents moved.
    #[error("unpinning {path}: {source}")]
    Unpin {
        /// The pinned file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other map error.
    #[error("map `{map}`: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Underlying error.
        source: MapError,
    },
}

/// Reopens map `name` pinned in `dir`.
pub fn pinned_map(dir: &Path, name: &'static str) -> Result<Map, MapsError> {
    let path = dir.join(name);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MapsError::NotPinned {
                dir: dir.to_path_buf(),
                map: name,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(MapsError::PermissionDenied { path });
        }
        _ => {}
    }
    let data = MapData::from_pin(&path).map_err(|source| match &source {
        MapError::SyscallError(e) if e.io_error.kind() == std::io::ErrorKind::PermissionDenied => {
            MapsError::PermissionDenied { path: path.clone() }
        }
        _ => MapsError::Map { map: name, source },
    })?;
    Map::from_map_data(data).map_err(err(name))
}

/// Every map of the relay, typed.
pub struct RelayMaps {
    /// Slot → the session whose VNI names it (write through [`RelayMaps::put_session`]: records
    /// are changed in steps a concurrent reader cannot misread, `slot_writes`).
    pub session_slots: Array<MapData, SlotSession>,
    /// How many low bits of a VNI name a slot of `session_slots`.
    slot_bits: u8,
    /// VNI → session, for sessions whose VNI names no slot (adopted from an earlier build).
    pub sessions: HashMap<MapData, u32, Session>,
    /// Slot → per-CPU fast-path counters.
    pub session_stats: PerCpuArray<MapData, SessionStats>,
    /// Slot → userspace forwarder counters.
    pub user_stats: Array<MapData, SessionStats>,
    /// Reason → per-CPU fast-path verdict counters.
    pub verdicts: PerCpuArray<MapData, VerdictCounter>,
    /// Reason → userspace forwarder verdict counters.
    pub user_verdicts: Array<MapData, VerdictCounter>,
    /// The program's configuration (index 0).
    pub config: Array<MapData, RelayConfig>,
    /// Interfaces the program may redirect to.
    pub redirect: DevMapHash<MapData>,
    /// VNI → the control plane's record of the session.
    pub session_meta: HashMap<MapData, u32, SessionMeta>,
    /// Which build the pinned links run.
    pub build_info: Array<MapData, BuildInfo>,
    /// The TURN front's allocations.
    pub turn: super::turn_maps::TurnMaps,
}

/// Maps a map error to [`MapsError::Map`] naming the map.
fn err(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { map, source }
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(err(name))
}

impl RelayMaps {
    /// Takes the maps out of a loaded object (its programs keep using them).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<RelayMaps, MapsError> {
        Self::assemble(|name| ebpf.take_map(name).ok_or(MapsError::MissingInObject(name)))
    }

    /// Reopens the maps pinned in `dir` by a running (or crashed) daemon.
    pub fn open_pinned(dir: &Path) -> Result<RelayMaps, MapsError> {
        Self::assemble(|name| pinned_map(dir, name))
    }

    /// Builds the typed set from a source of untyped maps by name.
    fn assemble(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<RelayMaps, MapsError> {
        let session_slots: Array<MapData, SlotSession> =
            typed(names::SESSION_SLOTS, get(names::SESSION_SLOTS)?)?;
        let slot_bits = names::session_slot_bits(session_slots.len());
        Ok(RelayMaps {
            session_slots,
            slot_bits,
            sessions: typed(names::SESSIONS, get(names::SESSIONS)?)?,
            session_stats: typed(names::SESSION_STATS, get(names::SESSION_STATS)?)?,
            user_stats: typed(names::USERSPACE_STATS, get(names::USERSPACE_STATS)?)?,
            verdicts: typed(names::VERDICTS, get(names::VERDICTS)?)?,
            user_verdicts: typed(names::USERSPACE_VERDICTS, get(names::USERSPACE_VERDICTS)?)?,
            config: typed(names::CONFIG, get(names::CONFIG)?)?,
            redirect: typed(names::REDIRECT, get(names::REDIRECT)?)?,
            session_meta: typed(names::SESSION_META, get(names::SESSION_META)?)?,
            build_info: typed(names::BUILD_INFO, get(names::BUILD_INFO)?)?,
            turn: super::turn_maps::TurnMaps::assemble(&mut get)?,
        })
    }

    /// Writes the program's configuration (with the session slot bits of these maps, and the
    /// next generation, which retires every cached route looked up under the last one).
    pub fn set_config(&mut self, config: &RelayConfig) -> Result<(), MapsError> {
        let config = RelayConfig {
            session_slot_bits: self.slot_bits,
            generation: self.config()?.generation.wrapping_add(1),
            ..*config
        };
        self.config.set(0, config, 0).map_err(err(names::CONFIG))
    }

    /// How many low bits of a VNI name its slot (what the session table allocates by).
    pub fn session_slot_bits(&self) -> u8 {
        self.slot_bits
    }

    /// Whether session `vni` in `slot` lives in `session_slots` (else in the hash map).
    fn names_slot(&self, vni: u32, slot: u32) -> bool {
        vni != 0 && vni_slot(vni, self.slot_bits) == slot && slot < self.session_slots.len()
    }

    /// The program's configuration.
    pub fn config(&self) -> Result<RelayConfig, MapsError> {
        self.config.get(&0, 0).map_err(err(names::CONFIG))
    }

    /// Fast-path verdict counters summed over CPUs, one per reason in discriminant order.
    pub fn kernel_verdicts(&self) -> Result<Vec<VerdictCounter>, MapsError> {
        Reason::ALL
            .iter()
            .map(|r| {
                let per_cpu = self
                    .verdicts
                    .get(&(*r as u32), 0)
                    .map_err(err(names::VERDICTS))?;
                Ok(per_cpu
                    .iter()
                    .fold(VerdictCounter::default(), |a, c| VerdictCounter {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    }))
            })
            .collect()
    }

    /// Userspace forwarder verdict counters as last flushed by the daemon.
    pub fn userspace_verdicts(&self) -> Result<Vec<VerdictCounter>, MapsError> {
        Reason::ALL
            .iter()
            .map(|r| {
                self.user_verdicts
                    .get(&(*r as u32), 0)
                    .map_err(err(names::USERSPACE_VERDICTS))
            })
            .collect()
    }

    /// Fast-path counters of `slot`, summed over CPUs.
    pub fn kernel_session_stats(&self, slot: u32) -> Result<SessionStats, MapsError> {
        let per_cpu = self
            .session_stats
            .get(&slot, 0)
            .map_err(err(names::SESSION_STATS))?;
        Ok(SessionStats::sum(per_cpu.iter()))
    }

    /// Userspace forwarder counters of `slot`.
    pub fn userspace_session_stats(&self, slot: u32) -> Result<SessionStats, MapsError> {
        self.user_stats
            .get(&slot, 0)
            .map_err(err(names::USERSPACE_STATS))
    }

    /// Writes a session's fast-path entry and its metadata.
    pub fn put_session(
        &mut self,
        vni: u32,
        session: &Session,
        meta: &SessionMeta,
    ) -> Result<(), MapsError> {
        self.session_meta
            .insert(vni, meta, 0)
            .map_err(err(names::SESSION_META))?;
        self.put_session_record(vni, session)
    }

    /// Writes a session's fast-path record: into its slot when its VNI names it (in steps, see
    /// `slot_writes`), else into the hash map.
    pub fn put_session_record(&mut self, vni: u32, session: &Session) -> Result<(), MapsError> {
        let target = Session { vni, ..*session };
        if !self.names_slot(vni, session.slot) {
            return self
                .sessions
                .insert(vni, target, 0)
                .map_err(err(names::SESSIONS));
        }
        let current = self
            .session_slots
            .get(&session.slot, 0)
            .map_err(err(names::SESSION_SLOTS))?
            .session;
        for step in super::slot_writes::slot_writes(&current, &target) {
            self.session_slots
                .set(session.slot, SlotSession::new(step), 0)
                .map_err(err(names::SESSION_SLOTS))?;
        }
        Ok(())
    }

    /// The slot `vni` names and its record, if that record serves `vni`.
    fn slot_record(&self, vni: u32) -> Result<Option<(u32, Session)>, MapsError> {
        let slot = vni_slot(vni, self.slot_bits);
        if vni == 0 || slot >= self.session_slots.len() {
            return Ok(None);
        }
        let record = self
            .session_slots
            .get(&slot, 0)
            .map_err(err(names::SESSION_SLOTS))?
            .session;
        Ok((record.vni == vni).then_some((slot, record)))
    }

    /// Session `vni`'s fast-path record, from its slot or the hash map.
    pub fn session(&self, vni: u32) -> Result<Option<Session>, MapsError> {
        if let Some((_, record)) = self.slot_record(vni)? {
            return Ok(Some(record));
        }
        match self.sessions.get(&vni, 0) {
            Ok(s) => Ok(Some(s)),
            Err(e) if key_absent(&e) => Ok(None),
            Err(source) => Err(MapsError::Map {
                map: names::SESSIONS,
                source,
            }),
        }
    }

    /// Writes the control plane's record of a session that has no entry in the session map (a
    /// WireGuard pair's: its fast-path record is in `wg_slots`).
    pub fn put_meta(&mut self, vni: u32, meta: &SessionMeta) -> Result<(), MapsError> {
        self.session_meta
            .insert(vni, meta, 0)
            .map_err(err(names::SESSION_META))
    }

    /// The control plane's record of session `vni`, if any.
    pub fn meta(&self, vni: u32) -> Result<Option<SessionMeta>, MapsError> {
        match self.session_meta.get(&vni, 0) {
            Ok(m) => Ok(Some(m)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(MapsError::Map {
                map: names::SESSION_META,
                source,
            }),
        }
    }

    /// Removes a session's entries (missing ones are fine).
    pub fn delete_session(&mut self, vni: u32) -> Result<(), MapsError> {
        let gone = |r: Result<(), MapError>, map| match r {
            Ok(()) => Ok(()),
            Err(e) if key_absent(&e) => Ok(()),
            Err(source) => Err(MapsError::Map { map, source }),
        };
        if let Some((slot, record)) = self.slot_record(vni)? {
            // Retired by its VNI alone (one field: no reader can mix it up); the legs stay until
            // the slot's next session overwrites them, matching nothing meanwhile.
            let retired = SlotSession::new(Session { vni: 0, ..record });
            self.session_slots
                .set(slot, retired, 0)
                .map_err(err(names::SESSION_SLOTS))?;
        }
        // From the hash map too, even when the slot held it: a session adopted from an earlier
        // build whose random VNI happens to name its own slot was written there by then, and a
        // hash entry left behind would answer for it once the slot no longer does.
        gone(self.sessions.remove(&vni), names::SESSIONS)?;
        gone(self.session_meta.remove(&vni), names::SESSION_META)
    }

    /// Every session with a fast-path record, with its metadata (if any), sorted by VNI.
    ///
    /// Found through the metadata (one entry per session, pairs included) rather than by
    /// reading every slot, which would cost one system call per slot of capacity; plus any
    /// hash-map record without metadata.
    pub fn all_sessions(&self) -> Result<Vec<(u32, Session, Option<SessionMeta>)>, MapsError> {
        let mut out = Vec::new();
        for entry in self.session_meta.iter() {
            let (vni, meta) = entry.map_err(err(names::SESSION_META))?;
            if let Some(session) = self.session(vni)? {
                out.push((vni, session, Some(meta)));
            }
        }
        let seen: std::collections::HashSet<u32> = out.iter().map(|(vni, ..)| *vni).collect();
        for entry in self.sessions.iter() {
            let (vni, session) = entry.map_err(err(names::SESSIONS))?;
            if !seen.contains(&vni) {
                out.push((vni, session, self.meta(vni)?));
            }
        }
        out.sort_by_key(|(vni, ..)| *vni);
        Ok(out)
    }

    /// Stores the userspace forwarder's counters of `slot`.
    pub fn set_userspace_session_stats(
        &mut self,
        slot: u32,
        stats: &SessionStats,
    ) -> Result<(), MapsError> {
        self.user_stats
            .set(slot, stats, 0)
            .map_err(err(names::USERSPACE_STATS))
    }

    /// Stores the userspace forwarder's verdict counters.
    pub fn set_userspace_verdicts(&mut self, counters: &[VerdictCounter]) -> Result<(), MapsError> {
        for (reason, c) in counters.iter().enumerate() {
            self.user_verdicts
                .set(reason as u32, c, 0)
                .map_err(err(names::USERSPACE_VERDICTS))?;
        }
        Ok(())
    }

    /// Capacity of the session map.
    pub fn session_capacity(&self) -> u32 {
        self.session_slots.len()
    }

    /// Zeroes both counter slots of `slot`, before a new session uses it.
    pub fn reset_slot(&mut self, slot: u32) -> Result<(), MapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
        let zeros =
            PerCpuValues::try_from(vec![SessionStats::default(); cpus]).map_err(MapsError::Cpus)?;
        self.session_stats
            .set(slot, zeros, 0)
            .map_err(err(names::SESSION_STATS))?;
        self.user_stats
            .set(slot, SessionStats::default(), 0)
            .map_err(err(names::USERSPACE_STATS))
    }
}

/// Whether a map operation failed only because its key was not there. aya reports a missing
/// key as `KeyNotFound` from lookups but as the syscall's ENOENT from deletions (a WireGuard
/// pair's deletion warned "bpf_map_delete_elem failed" for the session record a pair never
/// has, until the load harness's churn showed it).
pub(crate) fn key_absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(nix::libc::ENOENT),
        _ => false,
    }
}
