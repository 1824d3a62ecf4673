//! TURN in the XDP fast path, frame by frame (privileged: BPF_PROG_TEST_RUN with repeat = 1 in
//! a namespace with real routes). Allocations are installed through the daemon's own code
//! (`persist::to_record` → `TurnMaps::put`). Every case asserts the XDP action, the exact
//! output bytes when the frame is relayed (rebuilt from scratch with full checksums), and the
//! counter deltas: the verdict and the allocation's kernel counters.

mod common;

use std::net::SocketAddr;

use common::{turn::*, *};
use relay_common::{
    maps::{SessionLimits, SessionStats},
    turn::{TO_CLIENT, TO_PEER},
    verdict::Reason,
};
use relay_userspace::{
    dataplane::{
        object::{PROGRAM_RELAY, PROGRAM_TURN},
        simulate::XdpAction,
        turn_maps::TurnMaps,
    },
    fronts::turn::server::Transport,
};

const SLOT: u32 = 5;
/// The allocation's relayed port.
const RELAYED: u16 = 50_002;
const CHANNEL: u16 = 0x4001;

/// Counter deltas of one run: verdicts, and the allocation's kernel counters.
fn run(
    fx: &mut Fixture,
    maps: &TurnMaps,
    frame: &[u8],
) -> (XdpAction, Vec<u8>, Deltas, SessionStats) {
    run_counted(fx, frame, || maps.kernel_stats(SLOT).unwrap())
}

/// Asserts `frame` was relayed as `expected`, counted once under `reason`, with `len`
/// application bytes counted in direction `dir` of the allocation.
fn assert_relayed(
    fx: &mut Fixture,
    maps: &TurnMaps,
    frame: &[u8],
    expected: &[u8],
    reason: Reason,
    dir: usize,
    len: usize,
) {
    let (action, out, deltas, stats) = run(fx, maps, frame);
    assert_eq!(
        action,
        XdpAction::Tx,
        "action; counted {:?}",
        deltas.counted()
    );
    assert_eq!(
        out, expected,
        "output frame\n got {out:02x?}\nwant {expected:02x?}"
    );
    deltas.assert_only(reason, frame.len());
    let mut want = SessionStats::default();
    want.packets[dir] = 1;
    want.bytes[dir] = len as u64;
    assert_eq!((stats.packets, stats.bytes), (want.packets, want.bytes));
}

/// Asserts `frame` gets `action`, unmodified, counted under `reason` only, relaying nothing.
fn assert_not_relayed(
    fx: &mut Fixture,
    maps: &TurnMaps,
    frame: &[u8],
    action: XdpAction,
    reason: Reason,
) {
    assert_untouched(fx, frame, action, reason, || {
        maps.kernel_stats(SLOT).unwrap()
    });
}

/// A fixture with one UDP allocation of `client`, its channel bound to `peer`.
fn with_allocation(client: &str, peer: &str) -> (Fixture, TurnMaps) {
    let fx = Fixture::new();
    let mut maps = fx.turn();
    let a = allocation(
        SLOT,
        sa(client),
        Transport::Udp,
        RELAYED,
        &[(CHANNEL, sa(peer))],
        &[],
    );
    install(&mut maps, &a, SessionLimits::default());
    (fx, maps)
}

fn from_client(client: &str, turn_payload: &[u8], opts: FrameOpts) -> Vec<u8> {
    let client = sa(client);
    udp_frame(client, turn_server(client), turn_payload, opts)
}

fn from_peer(peer: &str, data: &[u8], opts: FrameOpts) -> Vec<u8> {
    let peer = sa(peer);
    udp_frame(peer, relay_at(peer, RELAYED), data, opts)
}

#[test]
fn channel_data_crosses_every_family_pair_both_ways() {
    require_root!();
    for (client, peer) in [
        (LEG_A4, LEG_B4),
        (LEG_A6, LEG_B6),
        (LEG_A4, LEG_B6),
        (LEG_A6, LEG_B4),
    ] {
        let (mut fx, maps) = with_allocation(client, peer);
        for len in [0, 1, 100, 1201] {
            let data = payload(len);
            // Client → peer: the ChannelData header goes; the data leaves the relayed port.
            let frame = from_client(
                client,
                &channel_data(CHANNEL, &data, &[]),
                FrameOpts::default(),
            );
            let expected =
                expected_relayed(&frame, RELAYED, sa(peer), &data, RELAY_MAC, GATEWAY_MAC);
            assert_relayed(
                &mut fx,
                &maps,
                &frame,
                &expected,
                Reason::ForwardedTurnToPeer,
                TO_PEER,
                len,
            );
            // Peer → client: the header comes back, from the TURN port.
            let frame = from_peer(
                peer,
                &data,
                FrameOpts {
                    ttl: 9,
                    ..Default::default()
                },
            );
            let expected = expected_relayed(
                &frame,
                TURN_PORT,
                sa(client),
                &channel_data(CHANNEL, &data, &[]),
                RELAY_MAC,
                GATEWAY_MAC,
            );
            assert_relayed(
                &mut fx,
                &maps,
                &frame,
                &expected,
                Reason::ForwardedTurnToClient,
                TO_CLIENT,
                len,
            );
        }
    }
}

#[test]
fn padding_is_stripped_and_its_bytes_leave_the_checksum() {
    require_root!();
    let (mut fx, maps) = with_allocation(LEG_A4, LEG_B4);
    for len in [1, 2, 5, 6, 99] {
        let data = payload(len);
        for trailer in [
            &[0u8][..],
            &[0, 0],
            &[0, 0, 0],
            &[0xa5],
            &[0x5a, 0xff],
            &[1, 2, 3],
        ] {
            let frame = from_client(
                LEG_A4,
                &channel_data(CHANNEL, &data, trailer),
                FrameOpts::default(),
            );
            let expected =
                expected_relayed(&frame, RELAYED, sa(LEG_B4), &data, RELAY_MAC, GATEWAY_MAC);
            assert_relayed(
                &mut fx,
                &maps,
                &frame,
                &expected,
                Reason::ForwardedTurnToPeer,
                TO_PEER,
                len,
            );
        }
    }
    // More than three bytes after the data: userspace relays it.
    let frame = from_client(
        LEG_A4,
        &channel_data(CHANNEL, &payload(8), &[0; 4]),
        FrameOpts::default(),
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedTurnTrailer,
    );
}

#[test]
fn an_ipv4_datagram_without_checksum_stays_without_or_goes_up() {
    require_root!();
    let zero = FrameOpts {
        zero_checksum: true,
        ..Default::default()
    };
    let (mut fx, maps) = with_allocation(LEG_A4, LEG_B4);
    let data = payload(33);
    let frame = from_client(LEG_A4, &channel_data(CHANNEL, &data, &[0, 0, 0]), zero);
    let expected = expected_relayed(&frame, RELAYED, sa(LEG_B4), &data, RELAY_MAC, GATEWAY_MAC);
    assert_eq!(&expected[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_relayed(
        &mut fx,
        &maps,
        &frame,
        &expected,
        Reason::ForwardedTurnToPeer,
        TO_PEER,
        33,
    );
    // IPv6 requires a checksum the fast path cannot compute from nothing.
    let (mut fx, maps) = with_allocation(LEG_A4, LEG_B6);
    let frame = from_client(LEG_A4, &channel_data(CHANNEL, &data, &[]), zero);
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedChecksumUnsupported,
    );
    let (mut fx, maps) = with_allocation(LEG_A6, LEG_B4);
    let frame = from_peer(LEG_B4, &data, zero);
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedChecksumUnsupported,
    );
}

#[test]
fn what_is_not_bound_channel_data_goes_up_with_its_reason() {
    require_root!();
    let (mut fx, maps) = with_allocation(LEG_A4, LEG_B4);
    let pass = XdpAction::Pass;
    // STUN (a Binding request, a Send indication): the server's business.
    let mut stun = vec![0u8; 20];
    stun[1] = 0x01;
    stun[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let frame = from_client(LEG_A4, &stun, FrameOpts::default());
    assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedTurnStun);
    stun[0..2].copy_from_slice(&0x0016u16.to_be_bytes());
    let frame = from_client(LEG_A4, &stun, FrameOpts::default());
    assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedTurnStun);
    // A length past the datagram, neither STUN nor ChannelData, too short: userspace decides.
    let mut long = channel_data(CHANNEL, &payload(10), &[]);
    long[3] = 11;
    for bad in [long, vec![0x80, 0, 0, 0, 1], vec![0x40, 1, 0], Vec::new()] {
        let frame = from_client(LEG_A4, &bad, FrameOpts::default());
        assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedTurnMalformed);
    }
    // A peer with a permission but no channel: a Data indication, built in userspace.
    let a = allocation(
        SLOT,
        sa(LEG_A4),
        Transport::Udp,
        RELAYED,
        &[(CHANNEL, sa(LEG_B4))],
        &[sa(LEG_B6).ip()],
    );
    let mut maps = maps;
    install(&mut maps, &a, SessionLimits::default());
    let frame = from_peer(LEG_B6, &payload(20), FrameOpts::default());
    assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedTurnNoChannel);
    // The channel's peer IP from another port: permitted, no channel of its own.
    let other_port = SocketAddr::new(sa(LEG_B4).ip(), 9999).to_string();
    let frame = from_peer(&other_port, &payload(20), FrameOpts::default());
    assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedTurnNoChannel);
    // A port in no allocation's hands is not the relay's.
    let frame = udp_frame(
        sa(LEG_B4),
        relay_at(sa(LEG_B4), RELAYED + 1),
        &payload(20),
        FrameOpts::default(),
    );
    assert_not_relayed(&mut fx, &maps, &frame, pass, Reason::PassedNotOurPort);
}

#[test]
fn unbound_channels_and_unpermitted_peers_are_dropped() {
    require_root!();
    let (mut fx, maps) = with_allocation(LEG_A4, LEG_B4);
    let drop = XdpAction::Drop;
    // Another channel, or the right channel from another port of the client.
    let frame = from_client(
        LEG_A4,
        &channel_data(CHANNEL + 1, &payload(10), &[]),
        FrameOpts::default(),
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        drop,
        Reason::DroppedTurnUnknownChannel,
    );
    let elsewhere = SocketAddr::new(sa(LEG_A4).ip(), 40_999).to_string();
    let frame = from_client(
        &elsewhere,
        &channel_data(CHANNEL, &payload(10), &[]),
        FrameOpts::default(),
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        drop,
        Reason::DroppedTurnUnknownChannel,
    );
    // A peer without a permission.
    let frame = from_peer(LEG_A6, &payload(10), FrameOpts::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        drop,
        Reason::DroppedTurnNoPermission,
    );
}

#[test]
fn stream_clients_and_the_relay_itself_are_left_to_userspace() {
    require_root!();
    let fx = Fixture::new();
    let mut maps = fx.turn();
    let mut fx = fx;
    // A TCP client: its peers' data is framed on the stream, and a UDP datagram from its
    // address matches none of its channels.
    let a = allocation(
        SLOT,
        sa(LEG_A4),
        Transport::Tcp,
        RELAYED,
        &[(CHANNEL, sa(LEG_B4))],
        &[],
    );
    install(&mut maps, &a, SessionLimits::default());
    let frame = from_peer(LEG_B4, &payload(10), FrameOpts::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedTurnStream,
    );
    let frame = from_client(
        LEG_A4,
        &channel_data(CHANNEL, &payload(10), &[]),
        FrameOpts::default(),
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Drop,
        Reason::DroppedTurnUnknownChannel,
    );
    // A peer that is the relay (both clients on this relay): XDP cannot deliver to its host.
    let own = SocketAddr::new(RELAY_V4.into(), 50_100);
    let a = allocation(
        SLOT,
        sa(LEG_A4),
        Transport::Udp,
        RELAYED,
        &[(CHANNEL, own)],
        &[],
    );
    install(&mut maps, &a, SessionLimits::default());
    let frame = from_client(
        LEG_A4,
        &channel_data(CHANNEL, &payload(10), &[]),
        FrameOpts::default(),
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedHairpin,
    );
}

#[test]
fn an_ended_channel_or_allocation_stops_the_fast_path_at_once() {
    require_root!();
    let (mut fx, mut maps) = with_allocation(LEG_A4, LEG_B4);
    let to_peer = from_client(
        LEG_A4,
        &channel_data(CHANNEL, &payload(40), &[]),
        FrameOpts::default(),
    );
    let to_client = from_peer(LEG_B4, &payload(40), FrameOpts::default());
    assert_eq!(run(&mut fx, &maps, &to_peer).0, XdpAction::Tx);
    assert_eq!(run(&mut fx, &maps, &to_client).0, XdpAction::Tx);
    // The channel expired; the permission lives on: the peer's data goes up as an indication.
    let a = allocation(
        SLOT,
        sa(LEG_A4),
        Transport::Udp,
        RELAYED,
        &[],
        &[sa(LEG_B4).ip()],
    );
    install(&mut maps, &a, SessionLimits::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &to_peer,
        XdpAction::Drop,
        Reason::DroppedTurnUnknownChannel,
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &to_client,
        XdpAction::Pass,
        Reason::PassedTurnNoChannel,
    );
    // The permission lapsed too.
    let a = allocation(SLOT, sa(LEG_A4), Transport::Udp, RELAYED, &[], &[]);
    install(&mut maps, &a, SessionLimits::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &to_client,
        XdpAction::Drop,
        Reason::DroppedTurnNoPermission,
    );
    // The allocation ended: its port is no longer the relay's.
    maps.delete(SLOT).unwrap();
    assert_not_relayed(
        &mut fx,
        &maps,
        &to_client,
        XdpAction::Pass,
        Reason::PassedNotOurPort,
    );
    assert_not_relayed(
        &mut fx,
        &maps,
        &to_peer,
        XdpAction::Drop,
        Reason::DroppedTurnUnknownChannel,
    );
}

#[test]
fn each_direction_is_held_to_the_allocation_rate() {
    require_root!();
    pin_to_current_cpu();
    let fx = Fixture::new();
    let mut maps = fx.turn();
    let mut fx = fx;
    let a = allocation(
        SLOT,
        sa(LEG_A4),
        Transport::Udp,
        RELAYED,
        &[(CHANNEL, sa(LEG_B4))],
        &[],
    );
    let limits = SessionLimits {
        packets_per_sec: 100,
        kbytes_per_sec: 0,
    };
    install(&mut maps, &a, limits);
    let to_peer = from_client(
        LEG_A4,
        &channel_data(CHANNEL, &payload(40), &[]),
        FrameOpts::default(),
    );
    let to_client = from_peer(LEG_B4, &payload(40), FrameOpts::default());
    for frame in [&to_peer, &to_client] {
        let verdicts: Vec<XdpAction> = (0..20).map(|_| run(&mut fx, &maps, frame).0).collect();
        let relayed = verdicts.iter().filter(|a| **a == XdpAction::Tx).count();
        let dropped = verdicts.iter().filter(|a| **a == XdpAction::Drop).count();
        // The burst (100 ms of the rate: 10 packets), then the rate's trickle (the 20 runs take
        // a few milliseconds); each direction has its own buckets.
        assert!((10..=15).contains(&relayed), "{verdicts:?}");
        assert_eq!(relayed + dropped, 20, "{verdicts:?}");
    }
}

#[test]
fn between_two_clients_of_this_relay_channel_data_goes_straight_across() {
    require_root!();
    const OTHER_SLOT: u32 = 6;
    const OTHER_RELAYED: u16 = 50_010;
    const OTHER_CHANNEL: u16 = 0x7abc;
    for other_client in [LEG_B4, LEG_B6] {
        let fx = Fixture::new();
        let mut maps = fx.turn();
        let mut fx = fx;
        // A's peer is B's relayed address, and B's peer is A's (WebRTC's relay/relay pair).
        let a_relayed = SocketAddr::new(RELAY_V4.into(), RELAYED);
        let b_relayed = SocketAddr::new(RELAY_V4.into(), OTHER_RELAYED);
        let a = allocation(
            SLOT,
            sa(LEG_A4),
            Transport::Udp,
            RELAYED,
            &[(CHANNEL, b_relayed)],
            &[],
        );
        let b = allocation(
            OTHER_SLOT,
            sa(other_client),
            Transport::Udp,
            OTHER_RELAYED,
            &[(OTHER_CHANNEL, a_relayed)],
            &[],
        );
        install(&mut maps, &a, SessionLimits::default());
        install(&mut maps, &b, SessionLimits::default());
        let data = payload(77);
        let frame = from_client(
            LEG_A4,
            &channel_data(CHANNEL, &data, &[0, 0, 0]),
            FrameOpts::default(),
        );
        let expected = expected_relayed(
            &frame,
            TURN_PORT,
            sa(other_client),
            &channel_data(OTHER_CHANNEL, &data, &[]),
            RELAY_MAC,
            GATEWAY_MAC,
        );
        let other_before = maps.kernel_stats(OTHER_SLOT).unwrap();
        assert_relayed(
            &mut fx,
            &maps,
            &frame,
            &expected,
            Reason::ForwardedTurnBetweenClients,
            TO_PEER,
            77,
        );
        let other_after = maps.kernel_stats(OTHER_SLOT).unwrap();
        assert_eq!(
            other_after.packets[TO_CLIENT] - other_before.packets[TO_CLIENT],
            1
        );
        assert_eq!(
            other_after.bytes[TO_CLIENT] - other_before.bytes[TO_CLIENT],
            77
        );
        // B has only a permission for A: userspace relays through the sockets (a Data
        // indication).
        let b = allocation(
            OTHER_SLOT,
            sa(other_client),
            Transport::Udp,
            OTHER_RELAYED,
            &[],
            &[a_relayed.ip()],
        );
        install(&mut maps, &b, SessionLimits::default());
        assert_not_relayed(
            &mut fx,
            &maps,
            &frame,
            XdpAction::Pass,
            Reason::PassedHairpin,
        );
    }
}

/// `relay_turn`, TURN as a program of its own, is what an earlier build's `relay_xdp`
/// tail-calls while an upgrade replaces it (this build runs TURN inline): it relays exactly
/// what `relay_xdp` relays, byte for byte, both ways.
#[test]
fn the_turn_program_an_earlier_build_tail_calls_relays_as_the_inline_path_does() {
    require_root!();
    let (mut fx, _maps) = with_allocation(LEG_A4, LEG_B6);
    let data = payload(100);
    for frame in [
        from_client(
            LEG_A4,
            &channel_data(CHANNEL, &data, &[]),
            FrameOpts::default(),
        ),
        from_peer(LEG_B6, &data, FrameOpts::default()),
    ] {
        let inline = fx.sandbox.run(PROGRAM_RELAY, &frame).unwrap();
        let own = fx.sandbox.run(PROGRAM_TURN, &frame).unwrap();
        assert_eq!(inline.action, XdpAction::Tx);
        assert_eq!((own.action, own.frame), (inline.action, inline.frame));
    }
}
