//! The XDP fast path, frame by frame (privileged: loads the program and runs BPF_PROG_TEST_RUN
//! with repeat = 1 inside a namespace with real routes). Every case asserts the XDP action, the
//! exact output bytes where the frame is forwarded, and the counter deltas.

mod common;

use common::*;
use relay_common::{maps::SessionStats, verdict::Reason};
use relay_userspace::dataplane::simulate::XdpAction;

/// Names slot 7 in the fixture's 1024-slot table (its low 10 bits), as every VNI this build
/// allocates names its slot.
const VNI: u32 = 0x00a1_b007;
const SLOT: u32 = 7;

/// Runs `frame` and asserts it was forwarded to `to` with exactly the expected bytes.
fn assert_forwarded(
    fx: &mut Fixture,
    frame: &[u8],
    to: &str,
    reason: Reason,
    sender: usize,
    (action, src_mac, dst_mac): (XdpAction, [u8; 6], [u8; 6]),
) {
    let (out, deltas) = fx.run(frame, SLOT);
    assert_eq!(
        out.action,
        action,
        "action; counted: {:?}",
        deltas.counted()
    );
    let expected = expected_forward(frame, sa(to), src_mac, dst_mac);
    assert_eq!(
        out.frame, expected,
        "output frame\n got {:02x?}\nwant {:02x?}",
        out.frame, expected
    );
    deltas.assert_only(reason, frame.len());
    let payload_len = frame.len()
        - if frame[12] == 0x08 {
            14 + 20 + 8
        } else {
            14 + 40 + 8
        };
    let mut want = SessionStats::default();
    want.packets[sender] = 1;
    want.bytes[sender] = payload_len as u64;
    assert_eq!(deltas.session.packets, want.packets, "session packets");
    assert_eq!(deltas.session.bytes, want.bytes, "session bytes");
    let age = fx
        .clock
        .age(deltas.session.last_seen[sender], std::time::Instant::now())
        .expect("last seen stamped");
    assert!(
        age < std::time::Duration::from_secs(5),
        "last seen {age:?} ago"
    );
}

const VIA_GATEWAY: (XdpAction, [u8; 6], [u8; 6]) = (XdpAction::Tx, RELAY_MAC, GATEWAY_MAC);

fn relay4() -> std::net::SocketAddr {
    std::net::SocketAddr::new(RELAY_V4.into(), RELAY_PORT)
}

fn relay6() -> std::net::SocketAddr {
    std::net::SocketAddr::new(RELAY_V6.into(), RELAY_PORT)
}

fn data_frame(from: &str, opts: FrameOpts) -> Vec<u8> {
    let to = if sa(from).is_ipv4() {
        relay4()
    } else {
        relay6()
    };
    udp_frame(sa(from), to, &geneve_data(VNI, &payload(100)), opts)
}

/// Asserts `frame` gets `action` and is counted under `reason` only, with no session traffic.
fn assert_not_forwarded(fx: &mut Fixture, frame: &[u8], action: XdpAction, reason: Reason) {
    let (out, deltas) = fx.run(frame, SLOT);
    assert_eq!(
        out.action,
        action,
        "action for {}; counted: {:?}",
        reason.name(),
        deltas.counted()
    );
    assert_eq!(out.frame, frame, "a frame not forwarded is not modified");
    deltas.assert_only(reason, frame.len());
    assert_eq!(deltas.session.packets, [0, 0]);
}

#[test]
fn v4_to_v4_both_directions() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let a = data_frame(LEG_A4, FrameOpts::default());
    assert_forwarded(&mut fx, &a, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
    let b = data_frame(
        LEG_B4,
        FrameOpts {
            ttl: 3,
            ..Default::default()
        },
    );
    assert_forwarded(&mut fx, &b, LEG_A4, Reason::ForwardedV4, 1, VIA_GATEWAY);
}

/// A slot entry without checksum deltas — as an earlier build wrote it (those bytes were
/// reserved, zero) — forwards exactly the same bytes: the program sums the changed words per
/// packet instead. (The tests above forward with the deltas this build writes.)
#[test]
fn a_slot_entry_without_checksum_deltas_forwards_the_same_bytes() {
    require_root!();
    let mut fx = Fixture::new();
    for (a, b, reason) in [
        (LEG_A4, LEG_B4, Reason::ForwardedV4),
        (LEG_A6, LEG_B6, Reason::ForwardedV6),
    ] {
        fx.add_session(VNI, SLOT, leg(sa(a)), leg(sa(b)));
        let entry = fx.maps().session_slots.get(&SLOT, 0).unwrap();
        assert!(
            entry.deltas.iter().all(|d| d.is_some()),
            "this build writes deltas"
        );
        let earlier = relay_common::maps::SlotSession {
            deltas: Default::default(),
            ..entry
        };
        fx.maps().session_slots.set(SLOT, earlier, 0).unwrap();
        let from_a = data_frame(a, FrameOpts::default());
        assert_forwarded(&mut fx, &from_a, b, reason, 0, VIA_GATEWAY);
        let from_b = data_frame(
            b,
            FrameOpts {
                ttl: 3,
                ..Default::default()
            },
        );
        assert_forwarded(&mut fx, &from_b, a, reason, 1, VIA_GATEWAY);
    }
}

/// A destination whose route is cached and that then becomes the relay's own address is a
/// hairpin at once: the program checks for hairpins only when it looks a route up, and routes
/// cached under an earlier configuration are not used.
#[test]
fn a_cached_destination_that_becomes_the_relays_address_is_a_hairpin() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
    let mut config = fx.config;
    config.addr_v4 = leg(sa(LEG_B4)).v4_words();
    fx.sandbox.set_config(config).unwrap();
    let to_b = std::net::SocketAddr::new(sa(LEG_B4).ip(), RELAY_PORT);
    let frame = udp_frame(
        sa(LEG_A4),
        to_b,
        &geneve_data(VNI, &payload(100)),
        FrameOpts::default(),
    );
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedHairpin);
}

#[test]
fn v6_to_v6_both_directions() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A6)), leg(sa(LEG_B6)));
    let a = data_frame(LEG_A6, FrameOpts::default());
    assert_forwarded(&mut fx, &a, LEG_B6, Reason::ForwardedV6, 0, VIA_GATEWAY);
    let b = data_frame(LEG_B6, FrameOpts::default());
    assert_forwarded(&mut fx, &b, LEG_A6, Reason::ForwardedV6, 1, VIA_GATEWAY);
}

#[test]
fn cross_family_v4_to_v6_and_back() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    let a = data_frame(LEG_A4, FrameOpts::default());
    assert_forwarded(&mut fx, &a, LEG_B6, Reason::ForwardedV4ToV6, 0, VIA_GATEWAY);
    let b = data_frame(LEG_B6, FrameOpts::default());
    assert_forwarded(&mut fx, &b, LEG_A4, Reason::ForwardedV6ToV4, 1, VIA_GATEWAY);
}

#[test]
fn payload_sizes_from_empty_to_jumbo_keep_checksums_right() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    for n in [0, 1, 2, 3, 63, 64, 511, 1419, 1420, 1421] {
        let a = udp_frame(
            sa(LEG_A4),
            relay4(),
            &geneve_data(VNI, &payload(n)),
            FrameOpts::default(),
        );
        assert_forwarded(&mut fx, &a, LEG_B6, Reason::ForwardedV4ToV6, 0, VIA_GATEWAY);
        let b = udp_frame(
            sa(LEG_B6),
            relay6(),
            &geneve_data(VNI, &payload(n)),
            FrameOpts::default(),
        );
        assert_forwarded(&mut fx, &b, LEG_A4, Reason::ForwardedV6ToV4, 1, VIA_GATEWAY);
    }
}

#[test]
fn wrong_source_port_or_address_is_dropped() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    for from in [
        "198.51.100.10:40009",
        "198.51.100.11:40000",
        "[2001:db8:2::20]:1",
        "[2001:db8:2::21]:40003",
    ] {
        let frame = data_frame(from, FrameOpts::default());
        assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedWrongSource);
    }
}

#[test]
fn unbound_leg_drops_even_from_the_bound_one() {
    require_root!();
    let mut fx = Fixture::new();
    let mut half = leg(sa(LEG_B4));
    half.bound = 0;
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), half);
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedUnbound);
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), unbound_leg());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedUnbound);
}

#[test]
fn unknown_vni_is_dropped() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI + 1, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedUnknownVni);
}

#[test]
fn a_slot_answers_only_its_own_vni_and_adopted_sessions_use_the_hash_map() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    assert_eq!(
        fx.maps().session_slots.get(&SLOT, 0).unwrap().session.vni,
        VNI,
        "a VNI that names its slot lives in the slot"
    );
    // The same slot under other bits above it (a guessed VNI, or a session that ended), and VNI
    // 0, which a free slot's empty record must not match: unknown.
    for other in [VNI ^ (1 << 10), VNI ^ 0x0080_0000, SLOT, 0] {
        let frame = udp_frame(
            sa(LEG_A4),
            relay4(),
            &geneve_data(other, &payload(32)),
            FrameOpts::default(),
        );
        assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedUnknownVni);
    }
    // A session adopted from an earlier build, whose random VNI names another slot: found in the
    // hash map, forwarded in the kernel all the same.
    let adopted = 0x0012_3456;
    assert_ne!(relay_common::maps::vni_slot(adopted, 10), 9);
    fx.add_session(adopted, 9, leg(sa(LEG_A6)), leg(sa(LEG_B6)));
    assert!(fx.maps().sessions.get(&adopted, 0).is_ok());
    let frame = udp_frame(
        sa(LEG_A6),
        relay6(),
        &geneve_data(adopted, &payload(32)),
        FrameOpts::default(),
    );
    let (out, deltas) = fx.run(&frame, 9);
    assert_eq!(out.action, XdpAction::Tx);
    deltas.assert_only(Reason::ForwardedV6, frame.len());
    // Its removal leaves the slot's session alone, and the slot's removal leaves the hash map's.
    fx.maps().delete_session(adopted).unwrap();
    assert!(fx.maps().session(adopted).unwrap().is_none());
    assert!(fx.maps().session(VNI).unwrap().is_some());
    fx.maps().delete_session(VNI).unwrap();
    assert!(fx.maps().session(VNI).unwrap().is_none());
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedUnknownVni);
}

/// Pins in `dir` a hash map `name` as an earlier build created it (4-byte keys, values of
/// `T`), holding `value` under `key`, with bpftool (installed by `cargo xtask setup`).
fn pin_legacy_hash<T: Copy>(dir: &std::path::Path, name: &str, key: [u8; 4], value: &T) {
    let bpftool = |args: &[&str]| {
        let out = std::process::Command::new("bpftool")
            .args(args)
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let path = dir.join(name);
    let path = path.to_str().unwrap();
    let size = std::mem::size_of::<T>().to_string();
    bpftool(&[
        "map", "create", path, "type", "hash", "key", "4", "value", &size, "entries", "1024",
        "name", name,
    ]);
    // SAFETY: the map layouts are repr(C) plain fields without padding (checked in
    // relay-common), so their bytes are the value.
    let value = unsafe {
        std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>())
    };
    let words: Vec<String> = key.iter().chain(value).map(u8::to_string).collect();
    let mut update = vec!["map", "update", "pinned", path, "key"];
    update.extend(words[..4].iter().map(String::as_str));
    update.push("value");
    update.extend(words[4..].iter().map(String::as_str));
    bpftool(&update);
}

#[test]
fn what_an_earlier_build_pinned_in_hash_maps_moves_into_arrays() {
    require_root!();
    let fx = Fixture::new();
    let dir = fx.sandbox.pin_dir().to_path_buf();
    // What an earlier build left: `relay_ports`, keyed by the raw port: 51820 → WireGuard,
    // side 1, slot 9…
    let legacy = dir.join(relay_common::turn::RELAY_PORTS);
    let owner = relay_common::turn::RelayPort {
        front: relay_common::wireguard::FRONT_WIREGUARD,
        side: 1,
        reserved: [0; 2],
        slot: 9,
    };
    let port = 51_820u16.to_be().to_ne_bytes();
    pin_legacy_hash(
        &dir,
        relay_common::turn::RELAY_PORTS,
        [port[0], port[1], 0, 0],
        &owner,
    );
    // …`turn_allocs`, allocations by slot (no `live` marker: it was reserved)…
    let allocation = relay_common::turn::TurnAllocation {
        client: leg(sa(LEG_A4)),
        relay_port: 50_000u16.to_be(),
        families: relay_common::turn::RELAYED_V4,
        transport: relay_common::turn::CLIENT_UDP,
        slot: 3,
        server_port: 3478u16.to_be(),
        ..Default::default()
    };
    let legacy_allocations = dir.join(relay_common::turn::LEGACY_TURN_ALLOCATIONS);
    pin_legacy_hash(
        &dir,
        relay_common::turn::LEGACY_TURN_ALLOCATIONS,
        3u32.to_ne_bytes(),
        &allocation,
    );
    // …and `wg_pairs`, WireGuard pairs by slot.
    let pair = relay_common::wireguard::WireGuardPair {
        legs: [leg(sa(LEG_A4)), leg(sa(LEG_B4))],
        ports: [51_820u16.to_be(), 51_821u16.to_be()],
        slot: 9,
        id: 0x0001_0009,
        ..Default::default()
    };
    let legacy_pairs = dir.join(relay_common::wireguard::LEGACY_WIREGUARD_PAIRS);
    pin_legacy_hash(
        &dir,
        relay_common::wireguard::LEGACY_WIREGUARD_PAIRS,
        9u32.to_ne_bytes(),
        &pair,
    );
    // A daemon of this build starting on those pins moves their contents and unpins them.
    let dataplane =
        relay_userspace::dataplane::Dataplane::load(&relay_userspace::dataplane::LoadOptions {
            pin_dir: dir.clone(),
            max_sessions: 1024,
            max_allocations: 64,
            nexthop_cache_entries: 4096,
            shared_from: None,
        })
        .unwrap();
    assert!(!legacy.exists(), "the old map stays pinned");
    let owner = dataplane
        .maps
        .turn
        .port_owners
        .get(51_820u16.to_be())
        .unwrap();
    assert_eq!(
        owner.map(|o| (o.front, o.side, o.slot)),
        Some((relay_common::wireguard::FRONT_WIREGUARD, 1, 9))
    );
    assert_eq!(
        dataplane
            .maps
            .turn
            .port_owners
            .get(51_821u16.to_be())
            .unwrap(),
        None
    );
    assert!(
        !legacy_allocations.exists(),
        "the old allocation map stays pinned"
    );
    assert_eq!(
        dataplane.maps.turn.allocation(3).unwrap(),
        Some(relay_common::turn::TurnAllocation {
            live: 1,
            ..allocation
        })
    );
    assert_eq!(dataplane.maps.turn.allocation(4).unwrap(), None);
    assert!(!legacy_pairs.exists(), "the old pair map stays pinned");
    let pairs =
        relay_userspace::dataplane::wireguard_maps::WireGuardMaps::open_pinned(&dir).unwrap();
    assert_eq!(pairs.get(9).unwrap(), Some(pair));
    assert_eq!(pairs.all().unwrap(), [pair]);
}

#[test]
fn control_packets_go_to_userspace() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_control(VNI),
        FrameOpts::default(),
    );
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedControl);
    // Also from an unknown source and for an unknown session: the daemon decides.
    let frame = udp_frame(
        sa("192.0.2.99:1234"),
        relay4(),
        &geneve_control(99),
        FrameOpts::default(),
    );
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedControl);
}

#[test]
fn unsupported_geneve_is_dropped() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    for first_byte in [0x40u8, 0x80, 0xc0, 0x01, 0x3f] {
        let mut data = geneve_data(VNI, &payload(20));
        data[0] = first_byte; // version ≠ 0 or options present
        let frame = udp_frame(sa(LEG_A4), relay4(), &data, FrameOpts::default());
        assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedMalformed);
    }
}

/// Every truncation of every header, both families: cut frames (lengths no longer match) and
/// consistent frames whose UDP payload is shorter than a Geneve header.
#[test]
fn every_truncation_length() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    for from in [LEG_A4, LEG_B6] {
        let full = data_frame(from, FrameOpts::default());
        let ip_hlen = if sa(from).is_ipv4() { 20 } else { 40 };
        let udp_start = 14 + ip_hlen;
        for cut in 14..full.len() {
            let frame = &full[..cut];
            let reason = if cut < udp_start + 8 {
                Reason::PassedMalformed // IP or UDP header incomplete: not known to be ours
            } else {
                Reason::DroppedMalformed // ours, but lengths disagree or Geneve is cut
            };
            let action = if reason == Reason::DroppedMalformed {
                XdpAction::Drop
            } else {
                XdpAction::Pass
            };
            let (out, deltas) = fx.run(frame, SLOT);
            assert_eq!(out.action, action, "cut at {cut} from {from}");
            deltas.assert_only(reason, cut);
        }
        // Consistent lengths, Geneve header 0..7 bytes long.
        for n in 0..8 {
            let to = if sa(from).is_ipv4() {
                relay4()
            } else {
                relay6()
            };
            let frame = udp_frame(
                sa(from),
                to,
                &geneve_data(VNI, &[])[..n],
                FrameOpts::default(),
            );
            assert_not_forwarded(&mut fx, &frame, XdpAction::Drop, Reason::DroppedMalformed);
        }
    }
    // An Ethernet header alone, and a truncated IPv4 header of a frame for someone else.
    let eth_only = eth(etherparse::EtherType::IPV4, CLIENT_MAC, RELAY_MAC);
    assert_not_forwarded(&mut fx, &eth_only, XdpAction::Pass, Reason::PassedMalformed);
}

#[test]
fn ipv4_options_fragments_and_other_protocols_pass() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let good = data_frame(LEG_A4, FrameOpts::default());

    // IHL 6 with a NOP option word inserted after the fixed header.
    let mut options = good[..34].to_vec();
    options[14] = 0x46;
    options.extend_from_slice(&[1, 1, 1, 1]);
    options.extend_from_slice(&good[34..]);
    let total = (options.len() - 14) as u16;
    options[16..18].copy_from_slice(&total.to_be_bytes());
    assert_not_forwarded(
        &mut fx,
        &options,
        XdpAction::Pass,
        Reason::PassedIpv4Options,
    );

    // More-fragments flag, and a non-zero fragment offset.
    for (hi, lo) in [(0x20u8, 0u8), (0x00, 0x10), (0x40 | 0x01, 0x00)] {
        let mut frag = good.clone();
        frag[20] = hi;
        frag[21] = lo;
        assert_not_forwarded(&mut fx, &frag, XdpAction::Pass, Reason::PassedFragment);
    }

    // TCP and ICMP.
    for proto in [6u8, 1] {
        let mut other = good.clone();
        other[23] = proto;
        assert_not_forwarded(&mut fx, &other, XdpAction::Pass, Reason::PassedNotUdp);
    }

    // ARP.
    let mut arp = eth(etherparse::EtherType::ARP, CLIENT_MAC, [0xff; 6]).to_vec();
    arp.extend_from_slice(&[0u8; 28]);
    assert_not_forwarded(&mut fx, &arp, XdpAction::Pass, Reason::PassedNotIp);

    // Bad version nibble.
    let mut v5 = good.clone();
    v5[14] = 0x55;
    assert_not_forwarded(&mut fx, &v5, XdpAction::Pass, Reason::PassedMalformed);
}

#[test]
fn ipv6_extension_headers_and_fragments_pass() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A6)), leg(sa(LEG_B6)));
    let good = data_frame(LEG_A6, FrameOpts::default());
    for (next, reason) in [
        (0u8, Reason::PassedIpv6ExtHeader), // hop-by-hop
        (43, Reason::PassedIpv6ExtHeader),  // routing
        (60, Reason::PassedIpv6ExtHeader),  // destination options
        (44, Reason::PassedFragment),       // fragment
        (6, Reason::PassedNotUdp),          // TCP
        (58, Reason::PassedNotUdp),         // ICMPv6
    ] {
        let mut frame = good.clone();
        frame[20] = next;
        assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, reason);
    }
}

#[test]
fn other_addresses_and_ports_pass() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let data = geneve_data(VNI, &payload(10));
    let other_port = udp_frame(
        sa(LEG_A4),
        sa("203.0.113.1:53"),
        &data,
        FrameOpts::default(),
    );
    assert_not_forwarded(
        &mut fx,
        &other_port,
        XdpAction::Pass,
        Reason::PassedNotOurPort,
    );
    let other_addr = udp_frame(
        sa(LEG_A4),
        sa("203.0.113.2:6081"),
        &data,
        FrameOpts::default(),
    );
    assert_not_forwarded(
        &mut fx,
        &other_addr,
        XdpAction::Pass,
        Reason::PassedNotOurAddress,
    );
    let other_addr6 = udp_frame(
        sa(LEG_A6),
        sa("[2001:db8:1::2]:6081"),
        &data,
        FrameOpts::default(),
    );
    assert_not_forwarded(
        &mut fx,
        &other_addr6,
        XdpAction::Pass,
        Reason::PassedNotOurAddress,
    );
}

#[test]
fn udp_checksum_zero() {
    require_root!();
    let mut fx = Fixture::new();
    let zero = FrameOpts {
        zero_checksum: true,
        ..Default::default()
    };
    // IPv4 → IPv4: zero stays zero.
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = data_frame(LEG_A4, zero);
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
    assert_eq!(&fx.run(&frame, SLOT).0.frame[40..42], &[0, 0]);
    // IPv4 → IPv6: the fast path cannot compute a full checksum; userspace does.
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    assert_not_forwarded(
        &mut fx,
        &frame,
        XdpAction::Pass,
        Reason::PassedChecksumUnsupported,
    );
    // IPv6 with checksum 0 is invalid: the stack decides.
    let frame6 = data_frame(LEG_B6, zero);
    assert_not_forwarded(
        &mut fx,
        &frame6,
        XdpAction::Pass,
        Reason::PassedChecksumUnsupported,
    );
}

#[test]
fn hairpin_to_the_relay_itself_passes() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa("203.0.113.1:40000")));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedHairpin);
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa("[2001:db8:1::1]:40000")));
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedHairpin);
}

#[test]
fn route_lookup_failures_pass_untouched() {
    require_root!();
    let mut fx = Fixture::new();
    let frame = data_frame(LEG_A4, FrameOpts::default());
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_NO_NEIGH)));
    assert_not_forwarded(
        &mut fx,
        &frame,
        XdpAction::Pass,
        Reason::PassedFibNoNeighbour,
    );
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_UNREACHABLE)));
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedFibFailed);
}

#[test]
fn forwarding_disabled_on_the_ingress_interface_passes() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    std::fs::write("/proc/sys/net/ipv4/conf/eth0/forwarding", "0").unwrap();
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(
        &mut fx,
        &frame,
        XdpAction::Pass,
        Reason::PassedFibForwardingDisabled,
    );
    fx.add_session(VNI, SLOT, leg(sa(LEG_A6)), leg(sa(LEG_B6)));
    std::fs::write("/proc/sys/net/ipv6/conf/eth0/forwarding", "0").unwrap();
    let frame6 = data_frame(LEG_A6, FrameOpts::default());
    assert_not_forwarded(
        &mut fx,
        &frame6,
        XdpAction::Pass,
        Reason::PassedFibForwardingDisabled,
    );
}

#[test]
fn other_egress_interface_redirects_through_the_devmap() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_OTHER_IF)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    // eth1 not in the devmap yet: the stack gets the untouched frame.
    assert_not_forwarded(
        &mut fx,
        &frame,
        XdpAction::Pass,
        Reason::PassedRedirectFailed,
    );
    let eth1 = fx.eth1;
    fx.maps().redirect.insert(eth1, eth1, None, 0).unwrap();
    assert_forwarded(
        &mut fx,
        &frame,
        LEG_OTHER_IF,
        Reason::ForwardedV4,
        0,
        (XdpAction::Redirect, SECOND_IF_MAC, DIRECT_NEIGHBOUR_MAC),
    );
    // Same-interface legs still use XDP_TX.
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
}

#[test]
fn unconfigured_program_passes_everything() {
    require_root!();
    let mut fx = Fixture::new();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let mut config = fx.config;
    config.flags = 0;
    fx.set_config(config);
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(
        &mut fx,
        &frame,
        XdpAction::Pass,
        Reason::PassedNotConfigured,
    );
}

#[test]
fn relay_without_an_address_of_the_destination_family_passes() {
    require_root!();
    let mut fx = Fixture::new();
    let mut config = fx.config;
    config.flags &= !relay_common::maps::CONFIG_HAS_V6;
    fx.set_config(config);
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_not_forwarded(&mut fx, &frame, XdpAction::Pass, Reason::PassedFibFailed);
}

#[test]
fn cached_next_hop_serves_until_it_expires() {
    require_root!();
    // The cache is per CPU: a run on another CPU would look up afresh.
    pin_to_current_cpu();
    let mut fx = Fixture::new();
    // Long enough that spawning `ip` on a loaded machine stays well inside it.
    let lifetime = std::time::Duration::from_secs(1);
    let ttl = fx.clock.to_ticks(lifetime);
    let mut config = fx.config;
    config.nexthop_ttl_jiffies = ttl as u32;
    fx.set_config(config);
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
    // The entry expires `ttl` jiffies after that run, by the kernel's clock (waiting by ours
    // would trust the calibrated tick rate, which a loaded machine can misjudge).
    let expires_by = fx.jiffies() + ttl;
    // The gateway's MAC changes (a failover): the cache keeps the old one for its lifetime...
    let new_mac = [0x02, 0, 0, 0, 0, 0xfd];
    fx.ip(
        &"neigh replace 203.0.113.254 lladdr 02:00:00:00:00:fd dev eth0 nud permanent"
            .split(' ')
            .collect::<Vec<_>>(),
    );
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
    // ...and the next lookup after it expires sees the new one.
    fx.wait_for_jiffies_past(expires_by);
    assert_forwarded(
        &mut fx,
        &frame,
        LEG_B4,
        Reason::ForwardedV4,
        0,
        (XdpAction::Tx, RELAY_MAC, new_mac),
    );
    // With the cache disabled every packet is looked up.
    config.nexthop_ttl_jiffies = 0;
    fx.set_config(config);
    fx.ip(
        &"neigh replace 203.0.113.254 lladdr 02:00:00:00:00:fe dev eth0 nud permanent"
            .split(' ')
            .collect::<Vec<_>>(),
    );
    assert_forwarded(&mut fx, &frame, LEG_B4, Reason::ForwardedV4, 0, VIA_GATEWAY);
}

#[test]
fn cached_next_hop_still_checks_the_mtu_for_longer_packets() {
    require_root!();
    // The cache is per CPU: the entry this test widens must be the one the next run reads.
    pin_to_current_cpu();
    let mut fx = Fixture::new();
    fx.ip(&["link", "set", "eth0", "mtu", "1400"]);
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B6)));
    let small = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_data(VNI, &payload(100)),
        FrameOpts::default(),
    );
    assert_forwarded(
        &mut fx,
        &small,
        LEG_B6,
        Reason::ForwardedV4ToV6,
        0,
        VIA_GATEWAY,
    );
    // 1386 bytes of IPv4 fit the 1400 MTU, but not after growing 20 bytes into IPv6: the
    // cached entry only vouches for 100-odd bytes, so this is looked up and refused.
    let big = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_data(VNI, &payload(1350)),
        FrameOpts::default(),
    );
    assert_not_forwarded(&mut fx, &big, XdpAction::Pass, Reason::PassedFibFailed);
    // One that fits after growing is forwarded and widens the entry.
    let fits = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_data(VNI, &payload(1300)),
        FrameOpts::default(),
    );
    assert_forwarded(
        &mut fx,
        &fits,
        LEG_B6,
        Reason::ForwardedV4ToV6,
        0,
        VIA_GATEWAY,
    );
    assert_not_forwarded(&mut fx, &big, XdpAction::Pass, Reason::PassedFibFailed);
}

#[test]
fn pinned_link_keeps_the_program_attached_after_the_loader_exits() {
    require_root!();
    use relay_lab::Netns;
    use relay_userspace::dataplane::{Dataplane, LoadOptions, loader::remove_pins};
    let ns = Netns::create("rt-link").unwrap();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
    let xdp_of_eth0 = || ns.exec("ip", &["-d", "link", "show", "eth0"]).unwrap();
    {
        let _inside = ns.enter().unwrap();
        let mut dataplane = Dataplane::load(&LoadOptions {
            pin_dir: pin_dir.clone(),
            max_sessions: 64,
            max_allocations: 64,
            nexthop_cache_entries: 64,
            shared_from: None,
        })
        .unwrap();
        let pin = dataplane
            .attach_pinned(
                relay_userspace::dataplane::object::PROGRAM_RELAY,
                "eth0",
                aya::programs::XdpMode::Skb,
            )
            .unwrap();
        assert!(pin.ends_with("link_eth0"));
        // A second attachment through the same pin directory is refused, not stacked.
        assert!(
            dataplane
                .attach_pinned(
                    relay_userspace::dataplane::object::PROGRAM_RELAY,
                    "eth0",
                    aya::programs::XdpMode::Skb,
                )
                .is_err()
        );
    } // the loader and all its file descriptors are gone
    assert!(xdp_of_eth0().contains("prog/xdp"), "{}", xdp_of_eth0());
    for map in [
        "sessions",
        "session_stats",
        "verdicts",
        "relay_config",
        "link_eth0",
    ] {
        assert!(pin_dir.join(map).exists(), "{map} pinned");
    }
    remove_pins(&pin_dir).unwrap();
    assert!(!xdp_of_eth0().contains("prog/xdp"), "{}", xdp_of_eth0());
    assert!(!pin_dir.exists());
}

#[test]
fn micro_benchmark_harness_runs() {
    require_root!();
    let results = relay_lab::xdp_bench::run(relay_lab::xdp_bench::BenchOptions {
        rounds: 1,
        calls: 20,
    })
    .unwrap();
    // Sessions in four family pairs, a WireGuard pair, TURN both ways.
    assert_eq!(results.len(), 7);
    for r in results {
        assert!(
            r.relay_ns > 0.0 && r.reflector_ns > 0.0 && r.pass_ns > 0.0,
            "{r:?}"
        );
    }
    let options = relay_lab::xdp_bench::BenchOptions {
        rounds: 1,
        calls: 20,
    };
    // Each table's frames are checked to be forwarded before they are timed.
    let tables = relay_lab::xdp_bench::run_table_sizes(options, &[1, 300], &[1, 200]).unwrap();
    assert_eq!(
        tables
            .iter()
            .map(|t| (t.front, t.records))
            .collect::<Vec<_>>(),
        [("session", 1), ("session", 300), ("turn", 1), ("turn", 200)]
    );
    assert!(tables.iter().all(|t| t.relay_ns > 0.0), "{tables:?}");
}

/// Collects log records in memory.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn rare_failures_are_logged_through_aya_log_at_most_once_per_interval() {
    require_root!();
    pin_to_current_cpu();
    let mut fx = Fixture::new();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut reader = fx.sandbox.dataplane.logger(Capture(lines.clone())).unwrap();
    fx.add_session(VNI, SLOT, leg(sa(LEG_A4)), leg(sa(LEG_B4)));
    let frame = data_frame(LEG_A4, FrameOpts::default());
    // Ordinary drops are counted, never logged.
    let unknown = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_data(VNI + 9, &[1]),
        FrameOpts::default(),
    );
    for _ in 0..10 {
        fx.run(&unknown, SLOT);
    }
    reader.flush();
    assert!(
        lines.lock().unwrap().is_empty(),
        "{:?}",
        lines.lock().unwrap()
    );
    // Forwarding disabled (before any route was cached): every packet falls back to the stack,
    // one line says why.
    std::fs::write("/proc/sys/net/ipv4/conf/eth0/forwarding", "0").unwrap();
    for _ in 0..50 {
        fx.run(&frame, SLOT);
    }
    reader.flush();
    let got = lines.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("WARN"), "{got:?}");
    assert!(
        got[0].contains("passed_fib_forwarding_disabled")
            && got[0].contains("enable IP forwarding"),
        "{got:?}"
    );
}

#[test]
fn per_session_rate_limits_drop_the_excess_in_the_kernel() {
    require_root!();
    pin_to_current_cpu();
    let mut fx = Fixture::new();
    assert!(
        fx.config.jiffies_per_sec > 0,
        "the daemon tells the program HZ"
    );
    let limits = relay_common::maps::SessionLimits {
        packets_per_sec: 50,
        kbytes_per_sec: 0,
    };
    fx.sandbox
        .add_limited_session(VNI, SLOT, [leg(sa(LEG_A4)), leg(sa(LEG_B4))], limits)
        .unwrap();
    let a = data_frame(LEG_A4, FrameOpts::default());
    let start = std::time::Instant::now();
    let mut forwarded = 0u64;
    let mut limited = 0u64;
    for _ in 0..200 {
        let (out, deltas) = fx.run(&a, SLOT);
        match out.action {
            XdpAction::Tx => {
                deltas.assert_only(Reason::ForwardedV4, a.len());
                forwarded += 1;
            }
            XdpAction::Drop => {
                deltas.assert_only(Reason::DroppedRateLimited, a.len());
                assert_eq!(deltas.session.packets, [0, 0]);
                limited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A 100 ms burst (5 packets) plus what 50 pps refills while the loop ran.
    let refill = (start.elapsed().as_secs_f64() * 50.0).ceil() as u64 + 1;
    assert!(
        (5..=5 + refill).contains(&forwarded),
        "forwarded {forwarded}, refill allowance {refill}"
    );
    assert_eq!(forwarded + limited, 200);
    // The other direction has its own bucket.
    let b = data_frame(LEG_B4, FrameOpts::default());
    assert_forwarded(&mut fx, &b, LEG_A4, Reason::ForwardedV4, 1, VIA_GATEWAY);

    // A byte limit: 1 kB/s holds one 108-byte payload (a full bucket admits any one packet),
    // not two.
    let vni2 = VNI + 1;
    let bytes = relay_common::maps::SessionLimits {
        packets_per_sec: 0,
        kbytes_per_sec: 1,
    };
    fx.sandbox
        .add_limited_session(vni2, SLOT + 1, [leg(sa(LEG_A4)), leg(sa(LEG_B4))], bytes)
        .unwrap();
    let c = udp_frame(
        sa(LEG_A4),
        relay4(),
        &geneve_data(vni2, &payload(100)),
        FrameOpts::default(),
    );
    assert_eq!(fx.run(&c, SLOT + 1).0.action, XdpAction::Tx);
    let (out, deltas) = fx.run(&c, SLOT + 1);
    assert_eq!(out.action, XdpAction::Drop);
    deltas.assert_only(Reason::DroppedRateLimited, c.len());
}
