//! The program's maps. Names, layouts and default capacities come from `relay_common::maps`;
//! userspace sets the real capacities at load time. Every map is pinned by name so the CLI and a
//! restarted daemon reopen the same state.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray, ProgramArray},
};
use relay_common::{
    maps::{
        BuildInfo, DEFAULT_MAX_SESSIONS, DEFAULT_NEXTHOP_CACHE_ENTRIES, FleetState,
        MAX_REDIRECT_INTERFACES, NextHopEntry, RelayConfig, Session, SessionMeta, SessionStats,
        SlotSession,
    },
    turn::{
        ChannelBinding, ChannelKey, DEFAULT_MAX_ALLOCATIONS, DEFAULT_MAX_TURN_BINDINGS,
        PORT_OWNER_ENTRIES, PeerChannel, PeerKey, Permission, PermissionKey, RelayPort,
        TurnAllocation, TurnAllocationMeta, TurnKeys,
    },
    verdict::{Reason, VerdictCounter},
    wireguard::WireGuardPair,
};

/// Session slot → the session whose VNI names it. Written only by userspace. Mmapable: its
/// values then start on a page boundary, so each 64-byte entry is one cache line.
#[map(name = "session_slots")]
pub static SESSION_SLOTS: Array<SlotSession> =
    Array::pinned(DEFAULT_MAX_SESSIONS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// VNI → session, for sessions whose VNI does not name their slot (adopted from an earlier
/// build). Written only by userspace.
///
/// Not preallocated: after an upgrade it holds only the sessions adopted from the earlier build
/// (and empties as they end), so it should not cost the memory of a full table.
#[map(name = "sessions")]
pub static SESSIONS: HashMap<u32, Session> =
    HashMap::pinned(DEFAULT_MAX_SESSIONS, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Session slot → per-CPU counters of the fast path.
#[map(name = "session_stats")]
pub static SESSION_STATS: PerCpuArray<SessionStats> = PerCpuArray::pinned(DEFAULT_MAX_SESSIONS, 0);

/// Session slot → counters of the userspace forwarder (written by the daemon only; declared here
/// so one loader creates and pins every map).
#[map(name = "user_stats")]
pub static USERSPACE_STATS: Array<SessionStats> = Array::pinned(DEFAULT_MAX_SESSIONS, 0);

/// Reason → per-CPU packet and byte counts.
#[map(name = "verdicts")]
pub static VERDICTS: PerCpuArray<VerdictCounter> = PerCpuArray::pinned(Reason::COUNT, 0);

/// Reason → userspace forwarder counts (written by the daemon only).
#[map(name = "user_verdicts")]
pub static USERSPACE_VERDICTS: Array<VerdictCounter> = Array::pinned(Reason::COUNT, 0);

/// Index 0: the relay's addresses, port and flags.
#[map(name = "relay_config")]
pub static CONFIG: Array<RelayConfig> = Array::pinned(1, 0);

/// Interfaces the program may redirect to, keyed by ifindex.
#[map(name = "redirect_ifs")]
pub static REDIRECT: DevMapHash = DevMapHash::pinned(MAX_REDIRECT_INTERFACES, 0);

/// Per-CPU direct-mapped cache of route lookups (not pinned: it is rebuilt in a second).
#[map(name = "nexthop_cache")]
pub static NEXTHOP_CACHE: PerCpuArray<NextHopEntry> =
    PerCpuArray::with_max_entries(DEFAULT_NEXTHOP_CACHE_ENTRIES, 0);

/// VNI → control-plane record of the session (written and read by userspace only; declared here
/// so one loader creates and pins every map).
#[map(name = "session_meta")]
pub static SESSION_META: HashMap<u32, SessionMeta> = HashMap::pinned(DEFAULT_MAX_SESSIONS, 0);

/// Which object build the pinned links run (written and read by userspace only).
#[map(name = "build_info")]
pub static BUILD_INFO: Array<BuildInfo> = Array::pinned(1, 0);

/// Whether this relay is draining (written and read by userspace only).
#[map(name = "fleet_state")]
pub static FLEET_STATE: Array<FleetState> = Array::pinned(1, 0);

// TURN: written by the daemon (and kept pinned, so a restarted daemon adopts its allocations).
// Declared here so one loader creates and pins every map; the program reads them from issue 17
// on (ChannelData in the kernel).

/// Relay port (raw value) → the front and record that own it.
#[map(name = "port_owners")]
pub static PORT_OWNERS: Array<RelayPort> = Array::pinned(PORT_OWNER_ENTRIES, 0);

/// Allocation slot → the allocation as the fast path sees it.
#[map(name = "turn_slots")]
pub static TURN_ALLOCATIONS: Array<TurnAllocation> = Array::pinned(DEFAULT_MAX_ALLOCATIONS, 0);

/// Allocation slot → the daemon's record of it (userspace only).
#[map(name = "turn_alloc_meta")]
pub static TURN_ALLOCATION_META: HashMap<u32, TurnAllocationMeta> =
    HashMap::pinned(DEFAULT_MAX_ALLOCATIONS, 0);

/// (client, channel) → peer and allocation.
#[map(name = "turn_channels")]
pub static TURN_CHANNELS: HashMap<ChannelKey, ChannelBinding> =
    HashMap::pinned(DEFAULT_MAX_TURN_BINDINGS, 0);

/// (allocation, peer) → channel.
#[map(name = "turn_peers")]
pub static TURN_PEERS: HashMap<PeerKey, PeerChannel> =
    HashMap::pinned(DEFAULT_MAX_TURN_BINDINGS, 0);

/// (allocation, peer IP) → permission.
#[map(name = "turn_perms")]
pub static TURN_PERMISSIONS: HashMap<PermissionKey, Permission> =
    HashMap::pinned(DEFAULT_MAX_TURN_BINDINGS, 0);

/// Allocation slot → per-CPU fast-path counters.
#[map(name = "turn_stats")]
pub static TURN_STATS: PerCpuArray<SessionStats> = PerCpuArray::pinned(DEFAULT_MAX_ALLOCATIONS, 0);

/// Allocation slot → userspace counters (written by the daemon only).
#[map(name = "turn_user_stats")]
pub static TURN_USERSPACE_STATS: Array<SessionStats> = Array::pinned(DEFAULT_MAX_ALLOCATIONS, 0);

/// Secrets that outlive a daemon (userspace only).
#[map(name = "turn_keys")]
pub static TURN_KEYS: Array<TurnKeys> = Array::pinned(1, 0);

// WireGuard pairs: written by the daemon when it learns or moves a pair's legs.

/// Pair slot → the pair as the fast path sees it (a pair's slot is a session slot: its counters
/// are in `SESSION_STATS`).
#[map(name = "wg_slots")]
pub static WIREGUARD_PAIRS: Array<WireGuardPair> = Array::pinned(DEFAULT_MAX_SESSIONS, 0);

/// Per-CPU room for a route lookup's 64-byte request (not pinned: scratch space).
#[map(name = "fib_request")]
pub static FIB_REQUEST: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// The fronts' programs that earlier builds' `relay_xdp` tail-calls (this build's runs TURN
/// inline). Pinned: the kernel empties a program array when its last file descriptor and pin
/// go, and an earlier build's fast path must keep relaying TURN while an upgrade replaces it.
/// Each load installs its own programs.
#[map(name = "front_programs")]
pub static FRONT_PROGRAMS: ProgramArray =
    ProgramArray::pinned(relay_common::maps::FRONT_PROGRAM_COUNT, 0);

/// Per-CPU working memory of the TURN paths (not pinned: scratch space).
#[map(name = "turn_scratch")]
pub static TURN_SCRATCH: PerCpuArray<crate::turn::TurnScratch> =
    PerCpuArray::with_max_entries(1, 0);
