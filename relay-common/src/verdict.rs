//! Why a packet was forwarded, passed or dropped.
//!
//! One enum for both forwarders: the XDP program counts every packet it sees under exactly one
//! [`Reason`] in the `VERDICTS` per-CPU array (indexed by the discriminant), and the userspace
//! forwarder counts the packets that reach it under the same reasons. The CLI, the metrics
//! endpoint and the tests all name reasons through [`Reason::name`], so a reason is spelled the
//! same everywhere.

/// What the packet's fate was, independent of the detailed reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Rewritten and sent towards the other leg of its session.
    Forwarded,
    /// Handed to the kernel's network stack (and, for the relay port, to the userspace daemon).
    Passed,
    /// Discarded.
    Dropped,
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $value:literal => $name:literal, $outcome:ident; )+) => {
        /// A verdict reason. The discriminant is the index into the verdict counter arrays, so
        /// new reasons are only ever appended.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $( $(#[$doc])* $variant = $value, )+
        }

        impl Reason {
            /// Every reason, in discriminant order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )+ ];

            /// Stable snake_case name used by the CLI, metrics labels and logs.
            pub const fn name(self) -> &'static str {
                match self { $( Reason::$variant => $name, )+ }
            }

            /// Whether packets with this reason were forwarded, passed or dropped.
            pub const fn outcome(self) -> Outcome {
                match self { $( Reason::$variant => Outcome::$outcome, )+ }
            }

            /// The reason with discriminant `value`, if there is one.
            pub const fn from_u32(value: u32) -> Option<Reason> {
                match value { $( $value => Some(Reason::$variant), )+ _ => None }
            }
        }
    };
}

reasons! {
    /// IPv4 leg to IPv4 leg.
    ForwardedV4 = 0 => "forwarded_v4", Forwarded;
    /// IPv6 leg to IPv6 leg.
    ForwardedV6 = 1 => "forwarded_v6", Forwarded;
    /// IPv4 leg to IPv6 leg (the frame grows by 20 bytes).
    ForwardedV4ToV6 = 2 => "forwarded_v4_to_v6", Forwarded;
    /// IPv6 leg to IPv4 leg (the frame shrinks by 20 bytes).
    ForwardedV6ToV4 = 3 => "forwarded_v6_to_v4", Forwarded;
    /// Bind-handshake control packet (Geneve O bit set): the daemon answers it.
    PassedControl = 4 => "passed_control", Passed;
    /// Not IPv4 or IPv6 (ARP, VLAN-tagged, ...).
    PassedNotIp = 5 => "passed_not_ip", Passed;
    /// IPv4 or IPv6 but not UDP.
    PassedNotUdp = 6 => "passed_not_udp", Passed;
    /// UDP, but not to the relay's address.
    PassedNotOurAddress = 7 => "passed_not_our_address", Passed;
    /// UDP to the relay's address, but not to its port.
    PassedNotOurPort = 8 => "passed_not_our_port", Passed;
    /// IPv4 header with options: the fast path parses fixed-size headers only.
    PassedIpv4Options = 9 => "passed_ipv4_options", Passed;
    /// IPv6 with an extension header before UDP.
    PassedIpv6ExtHeader = 10 => "passed_ipv6_ext_header", Passed;
    /// IP fragment: the stack reassembles it and the daemon forwards it.
    PassedFragment = 11 => "passed_fragment", Passed;
    /// Ethernet, IP or UDP header truncated or inconsistent before the packet is known to be
    /// for the relay; the stack decides.
    PassedMalformed = 12 => "passed_malformed", Passed;
    /// The config map is not written yet: the daemon has not finished starting.
    PassedNotConfigured = 13 => "passed_not_configured", Passed;
    /// The destination leg is the relay itself: XDP cannot send a frame back into its own host.
    PassedHairpin = 14 => "passed_hairpin", Passed;
    /// A checksum the fast path cannot produce incrementally (IPv4 UDP checksum 0 going to an
    /// IPv6 leg, where it is mandatory, or an IPv6 packet with checksum 0).
    PassedChecksumUnsupported = 15 => "passed_checksum_unsupported", Passed;
    /// Route lookup found no neighbour (ARP/ND) entry yet; the stack resolves it.
    PassedFibNoNeighbour = 16 => "passed_fib_no_neighbour", Passed;
    /// Route lookup failed for any other reason (no route, blackhole, prohibited, MTU).
    PassedFibFailed = 17 => "passed_fib_failed", Passed;
    /// The egress interface is not in the redirect devmap.
    PassedRedirectFailed = 18 => "passed_redirect_failed", Passed;
    /// Growing or shrinking the frame for a cross-family rewrite failed (driver lacks support).
    PassedAdjustFailed = 19 => "passed_adjust_failed", Passed;
    /// To the relay port but not a valid Geneve data packet (version, option length, lengths).
    DroppedMalformed = 20 => "dropped_malformed", Dropped;
    /// No session with this VNI.
    DroppedUnknownVni = 21 => "dropped_unknown_vni", Dropped;
    /// Known session, both legs bound, but the source is neither leg.
    DroppedWrongSource = 22 => "dropped_wrong_source", Dropped;
    /// Known session whose legs are not both bound yet.
    DroppedUnbound = 23 => "dropped_unbound", Dropped;
    /// Over the session's packet or byte rate limit.
    DroppedRateLimited = 24 => "dropped_rate_limited", Dropped;
    /// Route lookup refused because IP forwarding is disabled on the ingress interface: the
    /// kernel's `bpf_fib_lookup` requires it (see docs/operations.md).
    PassedFibForwardingDisabled = 25 => "passed_fib_forwarding_disabled", Passed;
    /// Userspace only: the kernel refused to send the datagram (no route, buffer full, …).
    DroppedSendError = 26 => "dropped_send_error", Dropped;
    /// TURN: application data from a client to a peer (ChannelData or a Send indication).
    ForwardedTurnToPeer = 27 => "forwarded_turn_to_peer", Forwarded;
    /// TURN: a peer's datagram to its client (ChannelData or a Data indication).
    ForwardedTurnToClient = 28 => "forwarded_turn_to_client", Forwarded;
    /// TURN: a STUN request for the server (Allocate, Refresh, CreatePermission, ChannelBind,
    /// Binding).
    PassedTurnStun = 29 => "passed_turn_stun", Passed;
    /// TURN: not STUN, not ChannelData, or a length that does not fit.
    DroppedTurnMalformed = 30 => "dropped_turn_malformed", Dropped;
    /// TURN: ChannelData on a channel its client has not bound (or whose peer lost its
    /// permission).
    DroppedTurnUnknownChannel = 31 => "dropped_turn_unknown_channel", Dropped;
    /// TURN: a peer without a permission, or a Send indication to one.
    DroppedTurnNoPermission = 32 => "dropped_turn_no_permission", Dropped;
    /// TURN: a Send indication from a client without an allocation, or data to a relayed port
    /// whose allocation just ended.
    DroppedTurnNoAllocation = 33 => "dropped_turn_no_allocation", Dropped;
    /// TURN: to one of the relay's own addresses, on a port that is no allocation's (the relay
    /// must not become a way to reach its host's other services).
    DroppedTurnOwnAddress = 34 => "dropped_turn_own_address", Dropped;
    /// TURN, kernel: on the TURN port, neither STUN nor ChannelData, or ChannelData whose
    /// length does not fit the datagram; userspace has the last word (it drops it as
    /// `dropped_turn_malformed`).
    PassedTurnMalformed = 35 => "passed_turn_malformed", Passed;
    /// TURN, kernel: a peer with a permission but no channel; userspace relays the datagram
    /// in a Data indication.
    PassedTurnNoChannel = 36 => "passed_turn_no_channel", Passed;
    /// TURN, kernel: a peer's datagram for a client over TCP or TLS; userspace frames it on
    /// the stream.
    PassedTurnStream = 37 => "passed_turn_stream", Passed;
    /// TURN, kernel: ChannelData with more than 3 bytes after its data; userspace relays it.
    PassedTurnTrailer = 38 => "passed_turn_trailer", Passed;
    /// TURN, kernel: ChannelData from a client to a peer that is another allocation of this
    /// relay with a channel for it, delivered to that allocation's client in one step (both
    /// WebRTC clients on this relay).
    ForwardedTurnBetweenClients = 39 => "forwarded_turn_between_clients", Forwarded;
    /// WireGuard: transport data from a pair's bound leg, to its other bound leg.
    ForwardedWireGuard = 40 => "forwarded_wireguard", Forwarded;
    /// WireGuard, kernel: a handshake message (initiation, response, cookie reply), or the data
    /// message that completes a leg's move; userspace learns legs from it and relays it.
    PassedWireGuardHandshake = 41 => "passed_wireguard_handshake", Passed;
    /// WireGuard, kernel: transport data not from its port's bound leg; userspace accepts it
    /// only as a handshake's confirmation (docs/security.md), else drops it.
    PassedWireGuardUnbound = 42 => "passed_wireguard_unbound", Passed;
    /// WireGuard: not a WireGuard message (type, reserved bytes, length).
    DroppedWireGuardInvalid = 43 => "dropped_wireguard_invalid", Dropped;
    /// WireGuard, userspace: a handshake message whose mac1 is not for the other peer's key.
    DroppedWireGuardMac1 = 44 => "dropped_wireguard_mac1", Dropped;
    /// WireGuard, userspace: an initiation with nowhere to go yet (the other peer unseen).
    DroppedWireGuardNoDestination = 45 => "dropped_wireguard_no_destination", Dropped;
    /// WireGuard, userspace: a response or cookie reply answering nothing relayed here.
    DroppedWireGuardUnanswered = 46 => "dropped_wireguard_unanswered", Dropped;
    /// WireGuard, userspace: a handshake reply from an address that may not answer (not the
    /// bound leg, or the initiator's own IP address).
    DroppedWireGuardNotLeg = 47 => "dropped_wireguard_not_leg", Dropped;
    /// WireGuard, userspace: transport data from an address that is not a leg and confirms
    /// nothing.
    DroppedWireGuardUnbound = 48 => "dropped_wireguard_unbound", Dropped;
    /// Userspace: a TURN request over UDP beyond `turn.requests_per_sec_per_source` (dropped
    /// before any other work; the client retransmits).
    DroppedTurnRequestRate = 49 => "dropped_turn_request_rate", Dropped;
    /// Userspace: a TCP or TLS connection to the TURN server refused (closed at once) because
    /// its source address holds `turn.max_connections_per_source` already. Counted once per
    /// connection, with no bytes.
    DroppedTurnConnectionsPerSource = 50 => "dropped_turn_connections_per_source", Dropped;
    /// Userspace: a TCP or TLS connection refused because the server holds
    /// `turn.max_connections` and none of them is still unauthenticated (those make room).
    /// Counted once per connection, with no bytes.
    DroppedTurnConnectionsTotal = 51 => "dropped_turn_connections_total", Dropped;
    /// Userspace: a bind-handshake message beyond `sessions.binds_per_sec_per_source`.
    DroppedBindRate = 52 => "dropped_bind_rate", Dropped;
    /// Userspace: a WireGuard handshake initiation beyond what a pair relays per direction
    /// (docs/wireguard.md): each one costs the receiving peer a Diffie-Hellman.
    DroppedWireGuardHandshakeRate = 53 => "dropped_wireguard_handshake_rate", Dropped;
    /// Userspace: data for a TCP or TLS client that is not reading as fast as its peers send:
    /// the bytes waiting for it reached their bound (`fronts::turn::outbox`).
    DroppedTurnClientSlow = 54 => "dropped_turn_client_slow", Dropped;
}

impl Reason {
    /// Number of reasons: the size of the verdict counter arrays.
    pub const COUNT: u32 = Reason::ALL.len() as u32;

    /// The forwarding reason for a (source family, destination family) pair.
    #[inline(always)]
    pub const fn forwarded(from_v6: bool, to_v6: bool) -> Reason {
        match (from_v6, to_v6) {
            (false, false) => Reason::ForwardedV4,
            (true, true) => Reason::ForwardedV6,
            (false, true) => Reason::ForwardedV4ToV6,
            (true, false) => Reason::ForwardedV6ToV4,
        }
    }
}

/// Per-reason counter value (one per CPU in the kernel's per-CPU array).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounter {
    /// Packets counted under the reason.
    pub packets: u64,
    /// Bytes of those packets, counted as the frame length the program saw.
    pub bytes: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for VerdictCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_are_dense_and_round_trip() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as u32, index as u32);
            assert_eq!(Reason::from_u32(index as u32), Some(*reason));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT), None);
    }

    #[test]
    fn names_are_unique_and_prefixed_by_outcome() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            let prefix = match a.outcome() {
                Outcome::Forwarded => "forwarded_",
                Outcome::Passed => "passed_",
                Outcome::Dropped => "dropped_",
            };
            assert!(a.name().starts_with(prefix), "{}", a.name());
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
