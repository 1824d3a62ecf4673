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
