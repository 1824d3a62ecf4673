//! Stock WireGuard in the XDP fast path, frame by frame (privileged: BPF_PROG_TEST_RUN with
//! repeat = 1 in a namespace with real routes). A pair is installed through the daemon's map
//! code (`WireGuardMaps::put`). Transport data from a side's bound leg, to that side's port,
//! must leave byte-exact for the other leg from the other side's port; everything else must
//! go up to the daemon or be dropped, unmodified, counted under its reason.

mod common;

use std::net::SocketAddr;

use common::*;
use relay_common::{
    maps::{SessionLimits, SessionStats},
    verdict::Reason,
    wireguard::{INITIATION_LEN, RESPONSE_LEN, WireGuardPair},
};
use relay_userspace::dataplane::{simulate::XdpAction, wireguard_maps::WireGuardMaps};

const SLOT: u32 = 3;
/// Peer A's relay port (A sends here) and peer B's.
const PORTS: [u16; 2] = [51_820, 51_821];

/// A WireGuard message of `kind` and `len` bytes (receiver index 7 for data).
fn message(kind: u8, len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
    m[..4].copy_from_slice(&[kind, 0, 0, 0]);
    m[4..8].copy_from_slice(&7u32.to_le_bytes());
    m
}

fn data(len: usize) -> Vec<u8> {
    message(4, len)
}

/// A fixture with a pair whose legs are `a` and `b` (`None`: not learnt yet).
fn with_pair(a: Option<&str>, b: Option<&str>) -> (Fixture, WireGuardMaps) {
    let fx = Fixture::new();
    let mut maps = WireGuardMaps::open_pinned(fx.sandbox.pin_dir()).unwrap();
    let leg_of = |l: Option<&str>| l.map_or_else(unbound_leg, |l| leg(sa(l)));
    maps.put(&WireGuardPair {
        legs: [leg_of(a), leg_of(b)],
        ports: PORTS.map(u16::to_be),
        slot: SLOT,
        // The pair's session id: never 0 (a record with id 0 is no pair to the program).
        id: 0x0012_3403,
        ..Default::default()
    })
    .unwrap();
    (fx, maps)
}

fn run(
    fx: &mut Fixture,
    maps: &WireGuardMaps,
    frame: &[u8],
) -> (XdpAction, Vec<u8>, Deltas, SessionStats) {
    run_counted(fx, frame, || maps.kernel_stats(SLOT).unwrap())
}

/// `payload` from `from` to side `side`'s port.
fn to_port(from: &str, side: usize, payload: &[u8], opts: FrameOpts) -> Vec<u8> {
    let from = sa(from);
    udp_frame(from, relay_at(from, PORTS[side]), payload, opts)
}

fn assert_not_relayed(
    fx: &mut Fixture,
    maps: &WireGuardMaps,
    frame: &[u8],
    action: XdpAction,
    reason: Reason,
) {
    assert_untouched(fx, frame, action, reason, || {
        maps.kernel_stats(SLOT).unwrap()
    });
}

#[test]
fn data_from_a_bound_leg_crosses_to_the_other_leg_from_the_other_port_in_every_family_pair() {
    require_root!();
    for (a, b) in [
        (LEG_A4, LEG_B4),
        (LEG_A6, LEG_B6),
        (LEG_A4, LEG_B6),
        (LEG_A6, LEG_B4),
    ] {
        let (mut fx, maps) = with_pair(Some(a), Some(b));
        for (from, side, to) in [(a, 0, b), (b, 1, a)] {
            for len in [32, 48, 1440] {
                let payload = data(len);
                let frame = to_port(
                    from,
                    side,
                    &payload,
                    FrameOpts {
                        ttl: 7,
                        ..Default::default()
                    },
                );
                let expected = expected_relayed(
                    &frame,
                    PORTS[1 - side],
                    sa(to),
                    &payload,
                    RELAY_MAC,
                    GATEWAY_MAC,
                );
                let (action, out, deltas, stats) = run(&mut fx, &maps, &frame);
                assert_eq!(
                    action,
                    XdpAction::Tx,
                    "{from} → {to}: {:?}",
                    deltas.counted()
                );
                assert_eq!(out, expected, "{from} → {to}, {len} B");
                deltas.assert_only(Reason::ForwardedWireGuard, frame.len());
                let mut want = [0; 2];
                want[side] = 1;
                assert_eq!(stats.packets, want);
                assert_eq!(stats.bytes[side], len as u64);
            }
        }
    }
}

#[test]
fn handshakes_and_data_from_anyone_else_go_up_and_garbage_is_dropped() {
    require_root!();
    let (mut fx, maps) = with_pair(Some(LEG_A4), Some(LEG_B4));
    let up = XdpAction::Pass;
    // Handshake messages, even from a bound leg: userspace learns from them.
    for (kind, len) in [(1, INITIATION_LEN), (2, RESPONSE_LEN), (3, 64)] {
        let frame = to_port(LEG_A4, 0, &message(kind, len), FrameOpts::default());
        assert_not_relayed(&mut fx, &maps, &frame, up, Reason::PassedWireGuardHandshake);
    }
    // Data from B's leg on A's port, from a stranger, from A's address on another port.
    for (from, side) in [
        (LEG_B4, 0),
        (LEG_A4, 1),
        ("203.0.113.9:40000", 0),
        ("198.51.100.10:40009", 0),
    ] {
        let frame = to_port(from, side, &data(64), FrameOpts::default());
        assert_not_relayed(&mut fx, &maps, &frame, up, Reason::PassedWireGuardUnbound);
    }
    // Not WireGuard: an unknown type, too short for data, a wrong handshake length, reserved
    // bytes set, too short for anything.
    let mut reserved = data(64);
    reserved[2] = 1;
    for payload in [
        message(5, 64),
        data(31),
        message(1, 147),
        reserved,
        vec![4, 0, 0],
    ] {
        let frame = to_port(LEG_A4, 0, &payload, FrameOpts::default());
        assert_not_relayed(
            &mut fx,
            &maps,
            &frame,
            XdpAction::Drop,
            Reason::DroppedWireGuardInvalid,
        );
    }
}

#[test]
fn a_pair_with_a_leg_not_learnt_forwards_nothing_and_a_removed_pair_leaves_its_ports() {
    require_root!();
    let (mut fx, mut maps) = with_pair(Some(LEG_A4), None);
    let frame = to_port(LEG_A4, 0, &data(64), FrameOpts::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedWireGuardUnbound,
    );
    maps.delete(SLOT).unwrap();
    assert_not_relayed(
        &mut fx,
        &maps,
        &frame,
        XdpAction::Pass,
        Reason::PassedNotOurPort,
    );
}

#[test]
fn the_pairs_rate_limit_applies_per_direction() {
    require_root!();
    let (mut fx, mut maps) = with_pair(Some(LEG_A4), Some(LEG_B4));
    let mut pair = maps.pairs.get(&SLOT, 0).unwrap();
    pair.limits = SessionLimits {
        packets_per_sec: 2,
        kbytes_per_sec: 0,
    };
    maps.put(&pair).unwrap();
    let frame = to_port(LEG_A4, 0, &data(64), FrameOpts::default());
    let mut forwarded = 0;
    let mut limited = 0;
    for _ in 0..10 {
        let (action, _, deltas, _) = run(&mut fx, &maps, &frame);
        match action {
            XdpAction::Tx => forwarded += 1,
            XdpAction::Drop => {
                deltas.assert_only(Reason::DroppedRateLimited, frame.len());
                limited += 1;
            }
            other => panic!("{other:?}: {:?}", deltas.counted()),
        }
    }
    assert!(
        (1..=3).contains(&forwarded) && limited == 10 - forwarded,
        "{forwarded} forwarded, {limited} limited"
    );
    // B's direction has a bucket of its own.
    let frame = to_port(LEG_B4, 1, &data(64), FrameOpts::default());
    assert_eq!(run(&mut fx, &maps, &frame).0, XdpAction::Tx);
}

/// Where a relayed frame goes: (source port, destination).
fn destination(frame: &[u8]) -> (u16, SocketAddr) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let ip: std::net::IpAddr = match p.net.unwrap() {
        NetSlice::Ipv4(v4) => v4.header().destination_addr().into(),
        NetSlice::Ipv6(v6) => v6.header().destination_addr().into(),
        _ => panic!("not IP"),
    };
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not UDP")
    };
    (
        udp.source_port(),
        SocketAddr::new(ip, udp.destination_port()),
    )
}

/// The userspace path (`fronts::wireguard::relaying::Pair`, as with `xdp.mode: off`) and the
/// kernel decide every frame alike: what XDP forwards, userspace relays to the same address
/// from the same port; what XDP drops, userspace drops for the same reason; data XDP hands up
/// from a non-leg, userspace refuses (no handshake is pending).
#[test]
fn kernel_and_userspace_agree_frame_by_frame() {
    require_root!();
    use relay_userspace::fronts::wireguard::{
        legs::{Policy, Side},
        relaying::{Outcome, Pair},
    };
    for (a, b) in [(LEG_A4, LEG_B4), (LEG_A6, LEG_B4)] {
        let (mut fx, maps) = with_pair(Some(a), Some(b));
        let record = maps.pairs.get(&SLOT, 0).unwrap();
        let mut userspace = Pair::new(record, &[1; 32], &[2; 32], Policy::default());
        let mut reserved = data(64);
        reserved[1] = 9;
        let frames: Vec<(&str, usize, Vec<u8>)> = vec![
            (a, 0, data(32)),
            (b, 1, data(1440)),
            (b, 0, data(64)),
            (a, 1, data(64)),
            ("203.0.113.7:40000", 0, data(64)),
            ("[2001:db8:9::7]:40000", 1, data(48)),
            (a, 0, message(9, 64)),
            (a, 0, data(50)),
            (b, 1, reserved),
            (a, 0, vec![4, 0]),
        ];
        for (from, side, payload) in frames {
            let frame = to_port(from, side, &payload, FrameOpts::default());
            let (action, out, deltas, _) = run(&mut fx, &maps, &frame);
            let side_of = if side == 0 { Side::A } else { Side::B };
            let user =
                userspace.on_datagram(side_of, sa(from), &payload, std::time::Instant::now());
            let case = format!(
                "{from} → port {side}: kernel {:?}, userspace {user:?}",
                deltas.counted()
            );
            match action {
                XdpAction::Tx => {
                    let (sport, to) = destination(&out);
                    assert_eq!(
                        user,
                        Outcome::Relay {
                            from_port: sport,
                            to: vec![to],
                            reason: Reason::ForwardedWireGuard,
                            update: None,
                        },
                        "{case}"
                    );
                }
                XdpAction::Drop => {
                    deltas.assert_only(Reason::DroppedWireGuardInvalid, frame.len());
                    assert_eq!(
                        user,
                        Outcome::Refuse(Reason::DroppedWireGuardInvalid),
                        "{case}"
                    );
                }
                XdpAction::Pass => {
                    deltas.assert_only(Reason::PassedWireGuardUnbound, frame.len());
                    assert_eq!(
                        user,
                        Outcome::Refuse(Reason::DroppedWireGuardUnbound),
                        "{case}"
                    );
                }
                other => panic!("{other:?}: {case}"),
            }
        }
    }
}

/// While a move waits for a bound leg's data on a new session (`confirm_side`,
/// `confirm_index`: the bound responder's answer, rule 5, or the bound initiator's data for a
/// roaming peer, rule 9), the kernel hands exactly that data up and forwards the rest of that
/// leg's data as before.
#[test]
fn data_a_move_waits_for_goes_up_and_the_rest_crosses() {
    require_root!();
    let (mut fx, mut maps) = with_pair(Some(LEG_A4), Some(LEG_B4));
    let mut pair = maps.get(SLOT).unwrap().unwrap();
    // B's data with receiver index 7 (what `data` carries) is awaited.
    pair.confirm_side = 2;
    pair.confirm_index = 7;
    maps.put(&pair).unwrap();
    let awaited = to_port(LEG_B4, 1, &data(64), FrameOpts::default());
    assert_not_relayed(
        &mut fx,
        &maps,
        &awaited,
        XdpAction::Pass,
        Reason::PassedWireGuardHandshake,
    );
    let mut other_session = data(64);
    other_session[4..8].copy_from_slice(&8u32.to_le_bytes());
    for frame in [
        to_port(LEG_B4, 1, &other_session, FrameOpts::default()),
        // A's data with the same index crosses: only B's side is awaited.
        to_port(LEG_A4, 0, &data(64), FrameOpts::default()),
    ] {
        let (action, _, deltas, _) = run(&mut fx, &maps, &frame);
        assert_eq!(action, XdpAction::Tx, "{:?}", deltas.counted());
        deltas.assert_only(Reason::ForwardedWireGuard, frame.len());
    }
}
