//! The XDP program and the userspace forwarder decide the same frames the same way: every
//! verdict the kernel reaches has the same reason in userspace, and what the kernel hands up
//! (control messages, checksum cases it cannot complete) is exactly what userspace finishes.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::*;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use relay_common::{maps::Leg, verdict::Reason};
use relay_userspace::fronts::geneve::decide::{Decision, decide};

const VNI: u32 = 0x0042_4242;
const SLOT: u32 = 3;

/// Source address and UDP payload of a frame, as a socket would deliver them.
fn as_socket_sees(frame: &[u8]) -> (SocketAddr, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let ip: IpAddr = match p.net.unwrap() {
        NetSlice::Ipv4(v4) => v4.header().source_addr().into(),
        NetSlice::Ipv6(v6) => v6.header().source_addr().into(),
        _ => unreachable!(),
    };
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        unreachable!()
    };
    (
        SocketAddr::new(ip, udp.source_port()),
        udp.payload().to_vec(),
    )
}

/// Destination address and UDP payload of a frame the relay sends.
fn as_socket_sees_to(frame: &[u8]) -> (SocketAddr, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let ip: IpAddr = match p.net.unwrap() {
        NetSlice::Ipv4(v4) => v4.header().destination_addr().into(),
        NetSlice::Ipv6(v6) => v6.header().destination_addr().into(),
        _ => unreachable!(),
    };
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        unreachable!()
    };
    (
        SocketAddr::new(ip, udp.destination_port()),
        udp.payload().to_vec(),
    )
}

/// What userspace must decide for a frame the kernel counted under `reason`.
fn expected_in_userspace(reason: Reason) -> Option<Expected> {
    Some(match reason {
        r if r.name().starts_with("forwarded_") || r.name().starts_with("dropped_") => {
            Expected::Same(r)
        }
        Reason::PassedControl => Expected::Control,
        // The kernel cannot produce a full IPv6 checksum from nothing; userspace sends it.
        Reason::PassedChecksumUnsupported => Expected::Same(Reason::ForwardedV4ToV6),
        _ => return None,
    })
}

#[derive(Debug)]
enum Expected {
    Same(Reason),
    Control,
}

#[test]
fn kernel_and_userspace_agree_frame_by_frame() {
    require_root!();
    let mut fx = Fixture::new();
    let session = |a: Leg, b: Leg| relay_common::maps::Session {
        legs: [a, b],
        slot: SLOT,
        ..Default::default()
    };
    let relay4 = SocketAddr::new(RELAY_V4.into(), RELAY_PORT);
    let relay6 = SocketAddr::new(RELAY_V6.into(), RELAY_PORT);
    let data = geneve_data(VNI, &payload(64));
    let mut bad_version = data.clone();
    bad_version[0] = 0x40;
    let zero = FrameOpts {
        zero_checksum: true,
        ..Default::default()
    };
    let mut half = leg(sa(LEG_B4));
    half.bound = 0;
    let cases: Vec<(&str, Leg, Leg, Vec<u8>)> = vec![
        (
            "v4 → v4",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(sa(LEG_A4), relay4, &data, FrameOpts::default()),
        ),
        (
            "v4 → v4 reply",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(sa(LEG_B4), relay4, &data, FrameOpts::default()),
        ),
        (
            "v6 → v6",
            leg(sa(LEG_A6)),
            leg(sa(LEG_B6)),
            udp_frame(sa(LEG_A6), relay6, &data, FrameOpts::default()),
        ),
        (
            "v4 → v6",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B6)),
            udp_frame(sa(LEG_A4), relay4, &data, FrameOpts::default()),
        ),
        (
            "v6 → v4",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B6)),
            udp_frame(sa(LEG_B6), relay6, &data, FrameOpts::default()),
        ),
        (
            "v4 csum 0 → v6",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B6)),
            udp_frame(sa(LEG_A4), relay4, &data, zero),
        ),
        (
            "wrong port",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(sa("198.51.100.10:1"), relay4, &data, FrameOpts::default()),
        ),
        (
            "wrong address",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(
                sa("198.51.100.99:40000"),
                relay4,
                &data,
                FrameOpts::default(),
            ),
        ),
        (
            "unbound",
            leg(sa(LEG_A4)),
            half,
            udp_frame(sa(LEG_A4), relay4, &data, FrameOpts::default()),
        ),
        (
            "unknown vni",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(
                sa(LEG_A4),
                relay4,
                &geneve_data(VNI + 1, &[1]),
                FrameOpts::default(),
            ),
        ),
        (
            "control",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(
                sa(LEG_A4),
                relay4,
                &geneve_control(VNI),
                FrameOpts::default(),
            ),
        ),
        (
            "geneve version 1",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(sa(LEG_A4), relay4, &bad_version, FrameOpts::default()),
        ),
        (
            "short geneve",
            leg(sa(LEG_A4)),
            leg(sa(LEG_B4)),
            udp_frame(sa(LEG_A4), relay4, &data[..5], FrameOpts::default()),
        ),
    ];
    for (name, a, b, frame) in cases {
        fx.add_session(VNI, SLOT, a, b);
        let (_, deltas) = fx.run(&frame, SLOT);
        let kernel: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| deltas.verdicts[*r as usize].packets > 0)
            .collect();
        assert_eq!(kernel.len(), 1, "{name}: {kernel:?}");
        let kernel = kernel[0];
        let expected = expected_in_userspace(kernel).unwrap_or_else(|| {
            panic!(
                "{name}: kernel verdict {} never reaches userspace",
                kernel.name()
            )
        });
        let (src, payload) = as_socket_sees(&frame);
        let s = session(a, b);
        let user = decide(&payload, src, |vni| (vni == VNI).then_some(s));
        match (&expected, user) {
            (Expected::Same(r), Decision::Forward { reason, .. }) => {
                assert_eq!(*r, reason, "{name}")
            }
            (Expected::Same(r), Decision::Drop(reason)) => assert_eq!(*r, reason, "{name}"),
            (Expected::Control, Decision::Control) => {}
            (e, u) => panic!(
                "{name}: kernel {} (expects {e:?}), userspace {u:?}",
                kernel.name()
            ),
        }
    }
}

/// What userspace decided for a TURN frame.
#[derive(Debug, PartialEq)]
enum TurnUser {
    /// `data` to `peer` from the allocation's relayed port.
    ToPeer { peer: SocketAddr, data: Vec<u8> },
    /// To the client as ChannelData on this channel.
    Channel(u16),
    /// To the client in a Data indication.
    Indication,
    /// A request for the server.
    Stun,
    /// Dropped.
    Drop(Reason),
}

/// The TURN port and the relayed ports: the kernel's verdict on each frame and the userspace
/// path's decision (`fronts::turn::relaying`, on tables synced from the same allocations) agree.
/// Where the kernel relays, userspace relays the same bytes to the same place; where it drops,
/// userspace drops for the same reason; what it hands up, userspace finishes.
#[test]
fn turn_kernel_and_userspace_agree_frame_by_frame() {
    require_root!();
    use common::turn::*;
    use relay_userspace::fronts::turn::{
        relaying::{FromClient, FromPeer, RelayTables, from_client, from_peer},
        server::{Allocation, FiveTuple, Transport, TurnSettings},
    };
    const RELAYED: u16 = 50_004;
    const OTHER_RELAYED: u16 = 50_005;
    let fx = Fixture::new();
    let mut maps = fx.turn();
    let mut fx = fx;
    let own_b = SocketAddr::new(RELAY_V4.into(), OTHER_RELAYED);
    let own_a = SocketAddr::new(RELAY_V4.into(), RELAYED);
    let permitted_only = sa("[2001:db8:2::30]:7000");
    let allocations: Vec<Allocation> = vec![
        allocation(
            1,
            sa(LEG_A4),
            Transport::Udp,
            RELAYED,
            &[(0x4001, sa(LEG_B4)), (0x4002, sa(LEG_B6)), (0x4003, own_b)],
            &[permitted_only.ip()],
        ),
        allocation(
            2,
            sa(LEG_A6),
            Transport::Udp,
            OTHER_RELAYED,
            &[(0x5000, own_a)],
            &[],
        ),
        allocation(
            3,
            sa("198.51.100.11:40000"),
            Transport::Tcp,
            50_006,
            &[(0x4001, sa(LEG_B4))],
            &[],
        ),
    ];
    let tables = RelayTables::new();
    let settings = TurnSettings::new(50_000..=50_010);
    for a in &allocations {
        install(&mut maps, a, relay_common::maps::SessionLimits::default());
        tables.sync(a, &settings, std::time::Instant::now());
    }
    let client_a = sa(LEG_A4);
    let to_server = |from: SocketAddr, payload: &[u8], opts: FrameOpts| {
        udp_frame(from, turn_server(from), payload, opts)
    };
    let to_relayed = |from: SocketAddr, port: u16, payload: &[u8]| {
        let relay: IpAddr = if from.is_ipv4() {
            RELAY_V4.into()
        } else {
            RELAY_V6.into()
        };
        udp_frame(
            from,
            SocketAddr::new(relay, port),
            payload,
            FrameOpts::default(),
        )
    };
    let data = payload(41);
    let send_indication = |peer: SocketAddr| {
        use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec};
        let mut m = Message::builder_indication(
            turn_types::message::SEND,
            MessageWriteVec::with_capacity(128),
        );
        let t = m.transaction_id();
        m.add_attribute(&turn_types::attribute::XorPeerAddress::new(peer, t))
            .unwrap();
        m.add_attribute(&turn_types::attribute::Data::new(&data))
            .unwrap();
        m.finish()
    };
    let mut binding = vec![0u8; 20];
    binding[1] = 1;
    binding[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let mut overlong = channel_data(0x4001, &data, &[]);
    overlong[3] += 1;
    let zero = FrameOpts {
        zero_checksum: true,
        ..Default::default()
    };
    // (name, frame, relayed port or None for the TURN port)
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        (
            "channel v4 → v4",
            to_server(
                client_a,
                &channel_data(0x4001, &data, &[]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "channel v4 → v6",
            to_server(
                client_a,
                &channel_data(0x4002, &data, &[]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "padded channel",
            to_server(
                client_a,
                &channel_data(0x4001, &data, &[0, 0, 0]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "long trailer",
            to_server(
                client_a,
                &channel_data(0x4001, &data, &[0; 8]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "unbound channel",
            to_server(
                client_a,
                &channel_data(0x4009, &data, &[]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "csum 0 → v6",
            to_server(client_a, &channel_data(0x4002, &data, &[]), zero),
            None,
        ),
        (
            "between clients",
            to_server(
                client_a,
                &channel_data(0x4003, &data, &[]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "binding request",
            to_server(client_a, &binding, FrameOpts::default()),
            None,
        ),
        (
            "send indication",
            to_server(
                client_a,
                &send_indication(permitted_only),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "overlong channel data",
            to_server(client_a, &overlong, FrameOpts::default()),
            None,
        ),
        (
            "not turn",
            to_server(client_a, &[0xc0, 1, 2, 3, 4], FrameOpts::default()),
            None,
        ),
        (
            "tcp client's address",
            to_server(
                sa("198.51.100.11:40000"),
                &channel_data(0x4001, &data, &[]),
                FrameOpts::default(),
            ),
            None,
        ),
        (
            "peer with channel",
            to_relayed(sa(LEG_B4), RELAYED, &data),
            Some(RELAYED),
        ),
        (
            "v6 peer with channel",
            to_relayed(sa(LEG_B6), RELAYED, &data),
            Some(RELAYED),
        ),
        (
            "peer with permission only",
            to_relayed(permitted_only, RELAYED, &data),
            Some(RELAYED),
        ),
        (
            "peer without permission",
            to_relayed(sa("198.51.100.77:7"), RELAYED, &data),
            Some(RELAYED),
        ),
        (
            "peer of a tcp client",
            to_relayed(sa(LEG_B4), 50_006, &data),
            Some(50_006),
        ),
    ];
    let slot_of = |port: u16| {
        allocations
            .iter()
            .find(|a| a.port == port)
            .map(|a| a.slot)
            .unwrap()
    };
    for (name, frame, relayed) in cases {
        let (out, deltas) = fx.run(&frame, 0);
        let kernel: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| deltas.verdicts[*r as usize].packets > 0)
            .collect();
        assert_eq!(kernel.len(), 1, "{name}: {kernel:?}");
        let kernel = kernel[0];
        // Every kind of frame is covered: the kernel's verdicts, case by case.
        let want = match name {
            "channel v4 → v4" | "channel v4 → v6" | "padded channel" => {
                Reason::ForwardedTurnToPeer
            }
            "long trailer" => Reason::PassedTurnTrailer,
            "unbound channel" | "tcp client's address" => Reason::DroppedTurnUnknownChannel,
            "csum 0 → v6" => Reason::PassedChecksumUnsupported,
            "between clients" => Reason::ForwardedTurnBetweenClients,
            "binding request" | "send indication" => Reason::PassedTurnStun,
            "overlong channel data" | "not turn" => Reason::PassedTurnMalformed,
            "peer with channel" | "v6 peer with channel" => Reason::ForwardedTurnToClient,
            "peer with permission only" => Reason::PassedTurnNoChannel,
            "peer without permission" => Reason::DroppedTurnNoPermission,
            "peer of a tcp client" => Reason::PassedTurnStream,
            _ => unreachable!("{name}"),
        };
        assert_eq!(kernel, want, "{name}");
        let (src, payload) = as_socket_sees(&frame);
        let user = match relayed {
            None => {
                let five = FiveTuple {
                    client: src,
                    server: turn_server(src),
                    transport: Transport::Udp,
                };
                match from_client(&payload, &five, &tables) {
                    FromClient::ToPeer { peer, range, .. } => TurnUser::ToPeer {
                        peer,
                        data: payload[range].to_vec(),
                    },
                    FromClient::Stun => TurnUser::Stun,
                    FromClient::Drop(r) => TurnUser::Drop(r),
                }
            }
            Some(port) => match from_peer(slot_of(port), src, &tables) {
                FromPeer::Channel(c) => TurnUser::Channel(c),
                FromPeer::Indication => TurnUser::Indication,
                FromPeer::Drop(r) => TurnUser::Drop(r),
            },
        };
        let relayed_out = || as_socket_sees_to(&out.frame);
        match kernel {
            Reason::ForwardedTurnToPeer => {
                let (to, bytes) = relayed_out();
                assert_eq!(
                    user,
                    TurnUser::ToPeer {
                        peer: to,
                        data: bytes
                    },
                    "{name}"
                );
            }
            Reason::ForwardedTurnToClient => {
                let (to, bytes) = relayed_out();
                let TurnUser::Channel(c) = user else {
                    panic!("{name}: kernel relayed, userspace {user:?}")
                };
                assert_eq!(
                    to,
                    allocations[slot_of(relayed.unwrap()) as usize - 1]
                        .five_tuple
                        .client,
                    "{name}"
                );
                assert_eq!(bytes, channel_data(c, &payload, &[]), "{name}");
            }
            Reason::ForwardedTurnBetweenClients => {
                // Userspace: to the other allocation's relayed port, then as its channel.
                let TurnUser::ToPeer { peer, data: bytes } = &user else {
                    panic!("{name}: userspace {user:?}")
                };
                let other = slot_of(peer.port());
                let FromPeer::Channel(c) = from_peer(other, own_a, &tables) else {
                    panic!("{name}: the other allocation has no channel")
                };
                let (to, out_bytes) = relayed_out();
                assert_eq!(
                    to,
                    allocations[other as usize - 1].five_tuple.client,
                    "{name}"
                );
                assert_eq!(out_bytes, channel_data(c, bytes, &[]), "{name}");
            }
            // Requests go to the server; a Send indication is relayed by userspace.
            Reason::PassedTurnStun if name == "send indication" => assert_eq!(
                user,
                TurnUser::ToPeer {
                    peer: permitted_only,
                    data: data.clone()
                },
                "{name}"
            ),
            Reason::PassedTurnStun => assert_eq!(user, TurnUser::Stun, "{name}"),
            r if r.name().starts_with("dropped_") => {
                assert_eq!(user, TurnUser::Drop(r), "{name}")
            }
            Reason::PassedTurnMalformed => {
                assert_eq!(user, TurnUser::Drop(Reason::DroppedTurnMalformed), "{name}")
            }
            Reason::PassedTurnNoChannel => assert_eq!(user, TurnUser::Indication, "{name}"),
            // Userspace relays what the kernel cannot rewrite, or cannot deliver itself.
            Reason::PassedTurnTrailer
            | Reason::PassedChecksumUnsupported
            | Reason::PassedTurnStream => assert!(
                matches!(user, TurnUser::ToPeer { .. } | TurnUser::Channel(_)),
                "{name}: {user:?}"
            ),
            r => panic!(
                "{name}: kernel verdict {} never reaches userspace",
                r.name()
            ),
        }
    }
}
