//! Every BPF map the relay uses: names, key and value layouts, default capacities.
//!
//! All maps are declared in the XDP object (so one loader creates them all) and pinned by name
//! under the pin directory (default [`DEFAULT_PIN_DIR`]), which is how the CLI and a restarted
//! daemon find the same state. Map names are the pinned file names and must stay within the
//! kernel's 15-character object name limit.
//!
//! Layouts are `#[repr(C)]` with explicit reserved fields instead of implicit padding: hash keys
//! are compared as raw bytes and every byte of a value is copied between kernel and userspace.

use crate::wire::{IPV4_HLEN, IPV6_HLEN};

/// Default bpffs directory holding the pinned maps and the XDP link.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/relay";

/// `ARRAY` session slot → [`Session`]: every session whose VNI names its slot
/// ([`vni_slot`]; all that this build allocates). The program finds a session by indexing with
/// the VNI's low bits and checking the record's [`Session::vni`] — one bounds check and one
/// cache line where a hash lookup cost more than the rest of the forwarding path (see
/// docs/benchmarks.md). Written only by userspace.
pub const SESSION_SLOTS: &str = "session_slots";
/// `HASH` VNI (`u32`) → [`Session`]: sessions whose VNI does not name their slot — those a
/// daemon of an earlier build allocated (random VNIs) and this one adopted. The program looks
/// here only when [`SESSION_SLOTS`] has no match, so they keep relaying across the upgrade.
/// Written only by userspace.
pub const SESSIONS: &str = "sessions";
/// `PERCPU_ARRAY` session slot → [`SessionStats`], updated by the XDP program.
pub const SESSION_STATS: &str = "session_stats";
/// `ARRAY` session slot → [`SessionStats`] of the userspace forwarder, flushed by the daemon so
/// the CLI sees both paths without asking the daemon.
pub const USERSPACE_STATS: &str = "user_stats";
/// `PERCPU_ARRAY` [`crate::verdict::Reason`] → [`crate::verdict::VerdictCounter`] of the XDP program.
pub const VERDICTS: &str = "verdicts";
/// `ARRAY` [`crate::verdict::Reason`] → [`crate::verdict::VerdictCounter`] of the userspace
/// forwarder, flushed by the daemon.
pub const USERSPACE_VERDICTS: &str = "user_verdicts";
/// `ARRAY` with one [`RelayConfig`] at index 0.
pub const CONFIG: &str = "relay_config";
/// `DEVMAP_HASH` ifindex → ifindex: interfaces the program may redirect to.
pub const REDIRECT: &str = "redirect_ifs";
/// `HASH` VNI → [`SessionMeta`]: the control plane's record of each session, written and read
/// only by userspace. Kept in bpffs next to the fast-path state so that it lives exactly as long
/// as that state: a restarted daemon adopts sessions from it and the CLI shows labels and owners
/// even when the daemon is down.
pub const SESSION_META: &str = "session_meta";
/// `ARRAY` with one [`BuildInfo`]: which build of the XDP object the pinned links run, so a
/// restarted daemon replaces the program only when its own build differs.
pub const BUILD_INFO: &str = "build_info";
/// `ARRAY` with one [`FleetState`]: whether this relay is draining (taking no new sessions,
/// pairs or allocations). Pinned so that a restart — or a pod's, in Kubernetes — keeps draining
/// a relay an operator is taking out; written and read by userspace only.
pub const FLEET_STATE: &str = "fleet_state";
/// `PERCPU_ARRAY` of [`NextHopEntry`]: a direct-mapped cache of route lookups by destination
/// address, so most packets skip `bpf_fib_lookup` (which costs more than the rest of the fast
/// path together).
pub const NEXTHOP_CACHE: &str = "nexthop_cache";
/// Pinned copy of the clock probe program, so the CLI can convert timestamps when the daemon is
/// down.
pub const CLOCK_PROBE_PIN: &str = "clock_probe";
/// Name of the pinned XDP link file for an interface is `LINK_PREFIX` + interface name.
pub const LINK_PREFIX: &str = "link_";

/// Default capacity of [`SESSIONS`] and of the per-slot arrays: one slot per session.
pub const DEFAULT_MAX_SESSIONS: u32 = 65_536;
/// Capacity of [`REDIRECT`]: interfaces a relay may forward between.
pub const MAX_REDIRECT_INTERFACES: u32 = 64;
/// Default entries of [`NEXTHOP_CACHE`] per CPU (a power of two; 48 bytes each).
pub const DEFAULT_NEXTHOP_CACHE_ENTRIES: u32 = 4096;
/// Default lifetime of a cached route lookup: route and neighbour changes (a gateway's MAC after
/// a failover) reach the fast path within this time.
pub const DEFAULT_NEXTHOP_TTL_MS: u32 = 1000;
/// Name of the program that reports the kernel's jiffies (see [`SessionStats`]).
pub const CLOCK_PROBE_PROGRAM: &str = "clock_probe";
/// `PROG_ARRAY` of the fronts' programs `relay_xdp` tail-calls (not pinned).
pub const FRONT_PROGRAMS: &str = "front_programs";
/// Index of TURN's program (`relay_turn`) in [`FRONT_PROGRAMS`].
pub const FRONT_PROGRAM_TURN: u32 = 0;
/// Entries of [`FRONT_PROGRAMS`].
pub const FRONT_PROGRAM_COUNT: u32 = 1;
/// Program name of TURN's part of the fast path.
pub const TURN_PROGRAM: &str = "relay_turn";

/// Address family tag of a [`Leg`] that has no address yet.
pub const FAMILY_NONE: u8 = 0;
/// Address family tag of an IPv4 leg.
pub const FAMILY_V4: u8 = 4;
/// Address family tag of an IPv6 leg.
pub const FAMILY_V6: u8 = 6;

/// Index of a session's first leg ("A"). Counters indexed by leg count packets *sent by* it.
pub const LEG_A: usize = 0;
/// Index of a session's second leg ("B").
pub const LEG_B: usize = 1;

/// One side of a session: where that client's packets come from and where the other side's go.
///
/// Aligned to 4 bytes (which moves no field of any record that holds one: every leg already
/// sits at a multiple of 4) so that the program compares and hashes addresses held in maps
/// four bytes at a time ([`Leg::addr_words32`]) instead of two.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Leg {
    /// Address, raw network order; an IPv4 address uses words 0 and 1, the rest are zero.
    pub addr: [u16; 8],
    /// UDP port, raw network order.
    pub port: u16,
    /// [`FAMILY_V4`], [`FAMILY_V6`] or [`FAMILY_NONE`].
    pub family: u8,
    /// 1 once the leg completed the bind handshake from `addr`:`port`, else 0.
    pub bound: u8,
}

impl Leg {
    /// A bound leg at an IPv4 address given as its four octets.
    pub const fn bound_v4(octets: [u8; 4], port: u16) -> Leg {
        Leg {
            addr: [
                u16::from_ne_bytes([octets[0], octets[1]]),
                u16::from_ne_bytes([octets[2], octets[3]]),
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            port: port.to_be(),
            family: FAMILY_V4,
            bound: 1,
        }
    }

    /// A bound leg at an IPv6 address given as its sixteen octets.
    pub const fn bound_v6(octets: [u8; 16], port: u16) -> Leg {
        let mut addr = [0u16; 8];
        let mut i = 0;
        while i < 8 {
            addr[i] = u16::from_ne_bytes([octets[2 * i], octets[2 * i + 1]]);
            i += 1;
        }
        Leg {
            addr,
            port: port.to_be(),
            family: FAMILY_V6,
            bound: 1,
        }
    }

    /// The address as four 32-bit words (raw bytes; an IPv4 address is word 0, the rest 0).
    #[inline(always)]
    pub const fn addr_words32(&self) -> &[u32; 4] {
        // SAFETY: `addr` is the first field of a 4-aligned repr(C) struct, so 4-aligned, and
        // 16 bytes of plain integers; any bytes are valid u32s.
        unsafe { &*(&self.addr as *const [u16; 8] as *const [u32; 4]) }
    }

    /// Whether the leg completed its bind handshake.
    #[inline(always)]
    pub const fn is_bound(&self) -> bool {
        self.bound != 0
    }

    /// Whether the leg is IPv6.
    #[inline(always)]
    pub const fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    /// The IPv4 address words (meaningful for IPv4 legs).
    #[inline(always)]
    pub const fn v4_words(&self) -> [u16; 2] {
        [self.addr[0], self.addr[1]]
    }

    /// The address as octets (IPv4 legs use the first four).
    pub const fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 8 {
            let b = self.addr[i].to_ne_bytes();
            out[2 * i] = b[0];
            out[2 * i + 1] = b[1];
            i += 1;
        }
        out
    }

    /// The bound leg a packet came from: IPv4 source address words and port, raw network
    /// order (the same bytes [`Leg::bound_v4`] gives).
    #[inline(always)]
    pub const fn from_v4_source(addr: [u16; 2], port: u16) -> Leg {
        Leg {
            addr: [addr[0], addr[1], 0, 0, 0, 0, 0, 0],
            port,
            family: FAMILY_V4,
            bound: 1,
        }
    }

    /// The bound leg a packet came from: IPv6 source address words and port, raw network order.
    #[inline(always)]
    pub const fn from_v6_source(addr: &[u16; 8], port: u16) -> Leg {
        Leg {
            addr: *addr,
            port,
            family: FAMILY_V6,
            bound: 1,
        }
    }

    /// The port in host order.
    pub const fn port_host(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// Per-session rate limits enforced by both forwarders; 0 means unlimited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// Packets per second, per direction.
    pub packets_per_sec: u32,
    /// Kilobytes (1 000 bytes) per second, per direction.
    pub kbytes_per_sec: u32,
}

/// A relay session as the fast path sees it: both legs and where its counters live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Session {
    /// Leg A ([`LEG_A`]) and leg B ([`LEG_B`]).
    pub legs: [Leg; 2],
    /// Index into [`SESSION_STATS`] and [`USERSPACE_STATS`]; unique among live sessions.
    pub slot: u32,
    /// Rate limits.
    pub limits: SessionLimits,
    /// The VNI this record serves; 0 in a free slot of [`SESSION_SLOTS`] (VNI 0 is never
    /// allocated). The program checks it against the packet's VNI: the VNI's bits above the
    /// slot tell this session from earlier and later ones in the same slot.
    pub vni: u32,
}

/// A [`SESSION_SLOTS`] entry: a session's record and its checksum deltas, one 64-byte cache
/// line. The array is created mmapable, which starts its values on a page boundary, so every
/// entry is exactly one line: a packet of a session not in the cache costs one miss for its
/// record, not two (a 56-byte record at the array's usual 16-byte offset straddles two lines in
/// every slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotSession {
    /// The record.
    pub session: Session,
    /// What forwarding towards each leg (indexed by the receiving leg) changes in the
    /// checksums, from [`SlotSession::new`]; zeros when the legs are of different families, or
    /// in an entry an earlier build wrote (these 8 bytes were reserved, zero), and the program
    /// then sums the changed words per packet. A function of the legs' addresses and ports
    /// alone, so the steps that rewrite a record safely (`dataplane::slot_writes`) keep it
    /// consistent with the legs a packet can be forwarded between.
    pub deltas: [crate::checksum::ForwardDelta; 2],
}

impl SlotSession {
    /// The entry of `session`, its deltas computed from its legs.
    pub fn new(session: Session) -> SlotSession {
        SlotSession {
            session,
            deltas: forward_deltas(&session.legs),
        }
    }
}

/// The checksum deltas of forwarding towards each of `legs` (indexed by the receiving leg), or
/// zeros unless both are of the same family.
fn forward_deltas(legs: &[Leg; 2]) -> [crate::checksum::ForwardDelta; 2] {
    use crate::checksum::ForwardDelta;
    let [a, b] = legs;
    if a.family != b.family {
        return [ForwardDelta::default(); 2];
    }
    match a.family {
        FAMILY_V4 => [
            ForwardDelta::between(&b.v4_words(), b.port, &a.v4_words(), a.port),
            ForwardDelta::between(&a.v4_words(), a.port, &b.v4_words(), b.port),
        ],
        FAMILY_V6 => [
            ForwardDelta::between(&b.addr, b.port, &a.addr, a.port),
            ForwardDelta::between(&a.addr, a.port, &b.addr, b.port),
        ],
        _ => [ForwardDelta::default(); 2],
    }
}

/// Bits of a VNI that name its slot in [`SESSION_SLOTS`] for a table of `max_sessions`:
/// enough for every slot, the rest of the 24 random (so VNIs stay unpredictable).
pub const fn session_slot_bits(max_sessions: u32) -> u8 {
    if max_sessions <= 1 {
        0
    } else {
        (32 - (max_sessions - 1).leading_zeros()) as u8
    }
}

/// The slot of [`SESSION_SLOTS`] a VNI names when `bits` of it do ([`RelayConfig::session_slot_bits`]).
#[inline(always)]
pub const fn vni_slot(vni: u32, bits: u8) -> u32 {
    vni & 1u32.wrapping_shl(bits as u32).wrapping_sub(1)
}

/// Packet and byte counters of one session, per direction, plus when it last forwarded.
/// In [`SESSION_STATS`] there is one per CPU; userspace sums them.
///
/// Times are kernel jiffies (`bpf_jiffies64`): reading them costs a few nanoseconds where any
/// clock read costs tens, a fifth of the whole forwarding path. Userspace converts them with a
/// calibration it measures from the program itself (`dataplane::clock`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Packets forwarded, indexed by the *sending* leg.
    pub packets: [u64; 2],
    /// Bytes forwarded (UDP payload incl. Geneve header), indexed by the sending leg.
    pub bytes: [u64; 2],
    /// Jiffies of the last packet forwarded from each leg, indexed by the sending leg (0 =
    /// never). Per leg, so a session whose client vanished expires even while its peer sends.
    /// Also when the leg's rate-limit buckets were last updated.
    pub last_seen: [u64; 2],
    /// Rate-limit bucket debts of each sending leg ([`crate::ratelimit`]), on this CPU. Not
    /// summed across CPUs: each CPU enforces the limits on what it receives.
    pub debts: [crate::ratelimit::Debts; 2],
}

impl SessionStats {
    /// Adds `other` into `self`, keeping the later last-seen time (summing per-CPU values).
    pub fn accumulate(&mut self, other: &SessionStats) {
        for leg in 0..2 {
            self.packets[leg] += other.packets[leg];
            self.bytes[leg] += other.bytes[leg];
            self.last_seen[leg] = self.last_seen[leg].max(other.last_seen[leg]);
        }
    }

    /// The sum of per-CPU values (what a per-CPU counter map holds for one slot).
    pub fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a SessionStats>) -> SessionStats {
        let mut total = SessionStats::default();
        for s in per_cpu {
            total.accumulate(s);
        }
        total
    }
}

/// [`RelayConfig::flags`]: the daemon wrote this config; until then everything is passed.
pub const CONFIG_ENABLED: u16 = 1 << 0;
/// [`RelayConfig::flags`]: [`RelayConfig::addr_v4`] is set.
pub const CONFIG_HAS_V4: u16 = 1 << 1;
/// [`RelayConfig::flags`]: [`RelayConfig::addr_v6`] is set.
pub const CONFIG_HAS_V6: u16 = 1 << 2;
/// TTL / hop limit the relay puts on packets it forwards, as if it had sent them itself
/// (Linux's default `ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// The relay's own addresses and port as the XDP program needs them: index 0 of [`CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayConfig {
    /// Local IPv4 address packets arrive at (may differ from the advertised public one behind
    /// 1:1 NAT), raw network order.
    pub addr_v4: [u16; 2],
    /// Local IPv6 address, raw network order.
    pub addr_v6: [u16; 8],
    /// Relay UDP port, raw network order.
    pub port: u16,
    /// `CONFIG_*` flags.
    pub flags: u16,
    /// TTL of forwarded IPv4 packets.
    pub ttl: u8,
    /// Hop limit of forwarded IPv6 packets.
    pub hop_limit: u8,
    /// [`session_slot_bits`] of [`SESSION_SLOTS`]'s capacity: how many low bits of a VNI
    /// index it. (0 in a configuration written by an earlier build: every VNI then names slot 0,
    /// whose record does not match, and the program falls back to [`SESSIONS`].)
    pub session_slot_bits: u8,
    /// Changes with every configuration userspace writes (wrapping; 0 in one an earlier build
    /// wrote): [`NEXTHOP_CACHE`] entries made under another configuration are not used, so
    /// that the program may check a destination against the relay's own addresses only when
    /// it looks its route up (see [`NextHopEntry::generation`]).
    pub generation: u8,
    /// Lifetime of a [`NEXTHOP_CACHE`] entry in jiffies; 0 disables the cache.
    pub nexthop_ttl_jiffies: u32,
    /// [`NEXTHOP_CACHE`] entries − 1 (the map size is a power of two).
    pub nexthop_cache_mask: u32,
    /// The kernel's jiffies per second (HZ), for rate limits; 0 while unknown (no limits are
    /// enforced then).
    pub jiffies_per_sec: u32,
}

impl RelayConfig {
    /// Whether the daemon has configured the program.
    #[inline(always)]
    pub const fn is_enabled(&self) -> bool {
        self.flags & CONFIG_ENABLED != 0
    }

    /// Whether `flag` is set.
    #[inline(always)]
    pub const fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// The build of the XDP object attached to the pinned links.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildInfo {
    /// SHA-256 of the object file (all zero: unknown).
    pub object_sha256: [u8; 32],
}

/// This relay's place in its fleet ([`FLEET_STATE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    /// 1 while draining.
    pub draining: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// When draining began, in seconds since the Unix epoch (0 when not draining).
    pub since_unix_s: u64,
}

/// Longest leg label and token name stored in [`SessionMeta`], in bytes.
pub const META_LABEL_LEN: usize = 64;
/// Longest token name stored in [`SessionMeta`], in bytes.
pub const META_TOKEN_LEN: usize = 32;

/// What the control plane must remember about a session beyond the fast path's view.
/// Strings are UTF-8, zero-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionMeta {
    /// Allocation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Accepted bind generation per leg.
    pub generations: [u64; 2],
    /// Bind lifetime in milliseconds.
    pub bind_lifetime_ms: u32,
    /// Idle lifetime in milliseconds.
    pub idle_lifetime_ms: u32,
    /// Bind keys of the legs.
    pub keys: [[u8; 32]; 2],
    /// Name of the token that allocated the session.
    pub token: [u8; META_TOKEN_LEN],
    /// Leg labels.
    pub labels: [[u8; META_LABEL_LEN]; 2],
    /// First 16 bytes of SHA-256 of the idempotency key (all zero: none).
    pub idempotency: [u8; 16],
}

impl Default for SessionMeta {
    fn default() -> Self {
        SessionMeta {
            created_unix_ms: 0,
            generations: [0; 2],
            bind_lifetime_ms: 0,
            idle_lifetime_ms: 0,
            keys: [[0; 32]; 2],
            token: [0; META_TOKEN_LEN],
            labels: [[0; META_LABEL_LEN]; 2],
            idempotency: [0; 16],
        }
    }
}

/// One cached route lookup: where packets to `addr` leave when they arrive on
/// `ingress_ifindex`, valid until `expires` for IP packets up to `max_len` bytes (the largest
/// length the route MTU was checked for; a longer packet triggers a fresh lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHopEntry {
    /// Destination address, raw network order (IPv4 in words 0 and 1).
    pub addr: [u16; 8],
    /// [`FAMILY_V4`] or [`FAMILY_V6`]; [`FAMILY_NONE`] for an empty slot.
    pub family: u8,
    /// The [`RelayConfig::generation`] the route was looked up under. A destination that is
    /// the relay itself (a hairpin, passed) is found when the route is looked up and never
    /// cached, so cached entries need no such check — as long as the relay's addresses have
    /// not changed since, which this tells.
    pub generation: u8,
    /// Largest IP packet length (host order) known to fit the route MTU.
    pub max_len: u16,
    /// Interface the lookup was made for (routing may depend on it).
    pub ingress_ifindex: u32,
    /// Egress interface.
    pub egress_ifindex: u32,
    /// Egress interface's MAC.
    pub src_mac: [u8; 6],
    /// Next hop's MAC.
    pub dst_mac: [u8; 6],
    /// Jiffies after which the entry is stale.
    pub expires: u64,
}

impl NextHopEntry {
    /// Whether this entry answers for `to` arriving on `ingress_ifindex` under configuration
    /// `generation`.
    #[inline(always)]
    pub fn is_for(&self, to: &Leg, ingress_ifindex: u32, generation: u8) -> bool {
        if self.family != to.family
            || self.generation != generation
            || self.ingress_ifindex != ingress_ifindex
        {
            return false;
        }
        let (mine, theirs) = (self.addr_words32(), to.addr_words32());
        // An IPv4 address is word 0; the other words of an IPv4 leg, and of an entry made for
        // one, are zero.
        mine[0] == theirs[0]
            && (to.family != FAMILY_V6
                || (mine[1] == theirs[1] && mine[2] == theirs[2] && mine[3] == theirs[3]))
    }

    /// The address as four 32-bit words (see [`Leg::addr_words32`]).
    #[inline(always)]
    pub const fn addr_words32(&self) -> &[u32; 4] {
        // SAFETY: `addr` is the first field of a repr(C) struct aligned to 8 (it holds a u64),
        // and 16 bytes of plain integers.
        unsafe { &*(&self.addr as *const [u16; 8] as *const [u32; 4]) }
    }
}

/// The [`NEXTHOP_CACHE`] slot of destination `to`: the address words folded and mixed with
/// MurmurHash3's finaliser, so that every input bit reaches the low bits the mask keeps.
#[inline(always)]
pub fn nexthop_slot(to: &Leg, mask: u32) -> u32 {
    let mut h = to.family as u32;
    let words = to.addr_words32();
    let mut i = 0;
    while i < 4 {
        // SAFETY: an in-bounds read of a plain word. Volatile so the words are read where they
        // are used: the XDP program calls this with few registers to spare, and values kept
        // live from here to the cache compare below spill into its 512-byte stack.
        let word = unsafe { core::ptr::read_volatile(&words[i]) };
        h = h.rotate_left(7) ^ word;
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & mask
}

/// Frame length after rewriting a packet that arrived with `ip_len` bytes of IP header+payload,
/// for each destination family (used in tests and by `relay explain`).
pub const fn rewritten_ip_len(ip_len: usize, from_v6: bool, to_v6: bool) -> usize {
    ip_len + if to_v6 { IPV6_HLEN } else { IPV4_HLEN } - if from_v6 { IPV6_HLEN } else { IPV4_HLEN }
}

/// `ARRAY` of 65 536 [`RelayPort`]s indexed by the UDP port's raw (network-order) value: which
/// front owns a relay port (a TURN allocation's relayed port, the TURN port itself, a WireGuard
/// pair's port) and which of its records the port belongs to; `front` 0 means none. Ports
/// without an owner (other than the session port) are never touched by the relay. An array:
/// the program finds the owner by indexing, where a hash lookup cost it a tenth of a TURN or
/// WireGuard packet's time (docs/benchmarks.md). Written only by userspace, in steps
/// (`front` last when a port is taken, first when it is released) so no torn read mixes owners.
pub const PORT_OWNERS: &str = "port_owners";

/// Entries of [`PORT_OWNERS`]: one per UDP port.
pub const PORT_OWNER_ENTRIES: u32 = 65_536;

/// The [`PORT_OWNERS`] index of a port given raw (network order), as packets carry it.
#[inline(always)]
pub const fn port_owner_index(raw_port: u16) -> u32 {
    raw_port as u32
}

/// `HASH` [`RelayPortKey`] → [`RelayPort`]: what [`PORT_OWNERS`] holds, as builds before it kept
/// it. A daemon that finds it pinned copies it into [`PORT_OWNERS`] and removes it.
pub const RELAY_PORTS: &str = "relay_ports";

/// Key of [`RELAY_PORTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RelayPortKey {
    /// UDP port, raw network order.
    pub port: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

/// Value of [`PORT_OWNERS`] (and of [`RELAY_PORTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayPort {
    /// Which front owns it: [`crate::turn::FRONT_TURN`], [`crate::turn::FRONT_TURN_SERVER`],
    /// [`crate::wireguard::FRONT_WIREGUARD`].
    pub front: u8,
    /// Which of the record's ports it is, for fronts with several (a WireGuard pair: 0 for
    /// peer A's, 1 for peer B's); 0 otherwise.
    pub side: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// The front's record: a TURN allocation's slot, a WireGuard pair's slot.
    pub slot: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FleetState {}
    unsafe impl aya::Pod for RelayPortKey {}
    unsafe impl aya::Pod for RelayPort {}
    unsafe impl aya::Pod for Leg {}
    unsafe impl aya::Pod for Session {}
    unsafe impl aya::Pod for SlotSession {}
    unsafe impl aya::Pod for SessionStats {}
    unsafe impl aya::Pod for RelayConfig {}
    unsafe impl aya::Pod for NextHopEntry {}
    unsafe impl aya::Pod for SessionMeta {}
    unsafe impl aya::Pod for BuildInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn a_source_leg_is_the_bound_leg_of_its_address() {
        let v4 = Leg::bound_v4([198, 51, 100, 7], 4000);
        assert_eq!(Leg::from_v4_source(v4.v4_words(), 4000u16.to_be()), v4);
        let v6 = Leg::bound_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9], 5);
        assert_eq!(Leg::from_v6_source(&v6.addr, 5u16.to_be()), v6);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Leg>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<SessionLimits>(), 8);
        assert_eq!(size_of::<Session>(), 2 * 20 + 4 + 8 + 4);
        assert_eq!(size_of::<SlotSession>(), 64);
        assert_eq!(size_of::<SessionStats>(), 10 * 8);
        assert_eq!(
            size_of::<RelayConfig>(),
            4 + 16 + 2 + 2 + 1 + 1 + 2 + 4 + 4 + 4
        );
        assert_eq!(
            size_of::<NextHopEntry>(),
            16 + 1 + 1 + 2 + 4 + 4 + 6 + 6 + 8
        );
        assert_eq!(align_of::<Session>(), 4);
        assert_eq!(align_of::<Leg>(), 4);
        assert_eq!(core::mem::offset_of!(Session, legs), 0);
        assert_eq!(core::mem::offset_of!(NextHopEntry, addr), 0);
        assert_eq!(align_of::<NextHopEntry>(), 8);
        assert_eq!(
            size_of::<SessionMeta>(),
            8 + 16 + 4 + 4 + 64 + 32 + 128 + 16
        );
    }

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in [
            SESSION_SLOTS,
            SESSIONS,
            SESSION_STATS,
            USERSPACE_STATS,
            VERDICTS,
            USERSPACE_VERDICTS,
            CONFIG,
            REDIRECT,
            NEXTHOP_CACHE,
            SESSION_META,
            BUILD_INFO,
            FLEET_STATE,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }

    #[test]
    fn leg_constructors_store_network_order() {
        let leg = Leg::bound_v4([192, 0, 2, 1], 51820);
        assert_eq!(&leg.octets()[..4], &[192, 0, 2, 1]);
        assert_eq!(leg.port.to_ne_bytes(), 51820u16.to_be_bytes());
        assert_eq!(leg.port_host(), 51820);
        let v6 = Leg::bound_v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            1,
        );
        assert_eq!(v6.octets()[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert!(v6.is_v6() && v6.is_bound());
    }

    #[test]
    fn stats_accumulate_sums_and_keeps_latest() {
        let mut a = SessionStats {
            packets: [1, 2],
            bytes: [10, 20],
            last_seen: [5, 8],
            ..Default::default()
        };
        a.accumulate(&SessionStats {
            packets: [3, 4],
            bytes: [30, 40],
            last_seen: [9, 2],
            ..Default::default()
        });
        assert_eq!(a.packets, [4, 6]);
        assert_eq!(a.bytes, [40, 60]);
        assert_eq!(a.last_seen, [9, 8]);
    }

    #[test]
    fn nexthop_slots_spread_and_stay_in_range() {
        let mask = DEFAULT_NEXTHOP_CACHE_ENTRIES - 1;
        let mut used = std::collections::BTreeSet::new();
        for i in 0..1024u32 {
            let leg = Leg::bound_v4([198, 51, (i >> 8) as u8, i as u8], 1);
            let slot = nexthop_slot(&leg, mask);
            assert!(slot <= mask);
            used.insert(slot);
        }
        // 1024 consecutive addresses into 4096 slots: few collisions.
        assert!(used.len() > 850, "only {} distinct slots", used.len());
        let a = Leg::bound_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1);
        let b = Leg::bound_v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 1);
        assert_ne!(nexthop_slot(&a, mask), nexthop_slot(&b, mask));
    }

    #[test]
    fn nexthop_entry_matches_family_address_and_ingress() {
        let to = Leg::bound_v4([192, 0, 2, 1], 5);
        let entry = NextHopEntry {
            addr: to.addr,
            family: FAMILY_V4,
            generation: 7,
            ingress_ifindex: 3,
            ..Default::default()
        };
        assert!(entry.is_for(&to, 3, 7));
        assert!(!entry.is_for(&to, 4, 7));
        assert!(!entry.is_for(&to, 3, 8), "made under another configuration");
        assert!(!entry.is_for(&Leg::bound_v4([192, 0, 2, 2], 5), 3, 7));
        assert!(!NextHopEntry::default().is_for(&to, 3, 0));
    }

    #[test]
    fn slot_bits_cover_every_slot_and_vnis_name_them() {
        assert_eq!(session_slot_bits(1), 0);
        assert_eq!(session_slot_bits(2), 1);
        assert_eq!(session_slot_bits(DEFAULT_MAX_SESSIONS), 16);
        assert_eq!(session_slot_bits(DEFAULT_MAX_SESSIONS + 1), 17);
        assert_eq!(session_slot_bits(1000), 10);
        for max in [1u32, 2, 3, 1000, 65_536, 2_097_152] {
            let bits = session_slot_bits(max);
            assert_eq!(vni_slot(max - 1, bits), max - 1, "{max}");
            assert_eq!(vni_slot((0xab << bits) | (max - 1), bits), max - 1);
        }
        assert_eq!(vni_slot(0x00ff_ffff, 0), 0);
    }

    #[test]
    fn rewritten_lengths() {
        assert_eq!(rewritten_ip_len(100, false, true), 120);
        assert_eq!(rewritten_ip_len(120, true, false), 100);
        assert_eq!(rewritten_ip_len(100, false, false), 100);
    }
}
