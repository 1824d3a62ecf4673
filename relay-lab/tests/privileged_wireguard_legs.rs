//! Stock WireGuard (wireguard-go, configured with `wg`, no sidecar) behind the lab's two NATs,
//! each peer's endpoint one of a pair's two relay ports, with the relay's leg learning
//! (`fronts::wireguard::relaying::Pair`) deciding every datagram — driven here by a small
//! test loop on the relay host's two sockets, the userspace path as it will run in the daemon,
//! with the relay's XDP program off and native (the pair written to the maps on binding).
//! It checks the learning rules against the real protocol: mac1 under the real public keys,
//! both peers' handshakes and first data, and that the legs are the two NATs' addresses; and
//! that an attacker host that knows both public keys, forges initiations with a valid mac1,
//! replays what it captured and sprays data never becomes a leg and receives nothing.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use relay_common::{verdict::Reason, wireguard::INITIATION_LEN};
use relay_lab::{
    nat_lab::{Host, NatLab, addr},
    scenario::{Scenario, ScenarioOptions},
    wireguard::{TUNNEL_A, TUNNEL_B, start_stock},
};
use relay_userspace::config::XdpMode;
use relay_userspace::dataplane::wireguard_maps::WireGuardMaps;
use relay_userspace::fronts::wireguard::{
    legs::{Policy, Side},
    mac::{Mac1Key, PublicKey},
    relaying::{Outcome, Pair},
};

const PORTS: [u16; 2] = [51_820, 51_821];

/// The relay side of the test: the pair, its two sockets and what it did.
struct Relay {
    pair: Mutex<Pair>,
    /// The fast path's maps, when XDP runs: the pair is written on binding, as the daemon will.
    maps: Option<Mutex<WireGuardMaps>>,
    sockets: [UdpSocket; 2],
    stop: AtomicBool,
    relayed_data: AtomicU64,
    refused: Mutex<Vec<(SocketAddr, Reason)>>,
}

impl Relay {
    fn socket_of(&self, port: u16) -> &UdpSocket {
        &self.sockets[usize::from(port == PORTS[1])]
    }

    /// Reads `side`'s socket until told to stop, deciding and sending as the pair says.
    fn serve(&self, side: Side) {
        let socket = &self.sockets[side.index()];
        let mut buf = [0u8; 2048];
        while !self.stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let payload = &buf[..n];
            let outcome =
                self.pair
                    .lock()
                    .unwrap()
                    .on_datagram(side, from, payload, Instant::now());
            match outcome {
                Outcome::Relay {
                    from_port,
                    to,
                    reason: _,
                    update,
                } => {
                    if let (Some(maps), Some(record)) = (&self.maps, update) {
                        maps.lock().unwrap().put(&record).unwrap();
                    }
                    if payload[0] == 4 {
                        self.relayed_data.fetch_add(1, Ordering::Relaxed);
                    }
                    for to in to {
                        let _ = self.socket_of(from_port).send_to(payload, to);
                    }
                }
                Outcome::Bound {
                    record,
                    from_port,
                    to,
                } => {
                    if let Some(maps) = &self.maps {
                        maps.lock().unwrap().put(&record).unwrap();
                    }
                    let _ = self.socket_of(from_port).send_to(payload, to);
                }
                Outcome::Refuse(reason) => self.refused.lock().unwrap().push((from, reason)),
            }
        }
    }
}

fn key(text: &str) -> PublicKey {
    STANDARD
        .decode(text)
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

fn ping(lab: &NatLab, host: Host, to: &str) -> bool {
    lab.exec(host, "ping", &["-c", "1", "-W", "1", to]).is_ok()
}

/// Runs the pair between two real peers with the relay's XDP program in `xdp` mode (the pair
/// written to its maps when it binds); returns the relay side (its counters) and the pair's
/// kernel counters.
fn pair_between_real_peers(
    xdp: XdpMode,
    rebind: bool,
) -> (Arc<Relay>, relay_common::maps::SessionStats) {
    let mut options = ScenarioOptions::new(common::relay_path().into(), xdp);
    options.sessions = false;
    let mut s = Scenario::start(options).unwrap();
    let endpoints = PORTS.map(|p| NatLab::relay_endpoint(false, p));
    let sockets = s
        .lab
        .in_host(Host::Relay, || {
            endpoints.map(|e| {
                let socket = UdpSocket::bind(e).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                socket
            })
        })
        .unwrap();
    let (names, keys) = start_stock(&mut s, endpoints, 25).unwrap();
    let keys = keys.map(|k| key(&k));
    let record = relay_common::wireguard::WireGuardPair {
        ports: PORTS.map(u16::to_be),
        slot: 0,
        ..Default::default()
    };
    let maps = (xdp != XdpMode::Off).then(|| {
        let mut maps = WireGuardMaps::open_pinned(&s.pin_dir).unwrap();
        // The ports are the pair's before anything is learnt: the program hands their
        // handshakes up to these sockets.
        maps.put(&record).unwrap();
        Mutex::new(maps)
    });
    let relay = Arc::new(Relay {
        pair: Mutex::new(Pair::new(record, &keys[0], &keys[1], Policy::default())),
        maps,
        sockets,
        stop: AtomicBool::new(false),
        relayed_data: AtomicU64::new(0),
        refused: Mutex::new(Vec::new()),
    });
    let threads = [Side::A, Side::B].map(|side| {
        let relay = relay.clone();
        std::thread::spawn(move || relay.serve(side))
    });
    // Both peers keep their tunnel alive (PersistentKeepalive), so both initiate: the first
    // initiation has nowhere to go, the other's reaches it, and the pair binds. Pings from
    // both sides hurry it along; bounded.
    let up = NatLab::wait_until(Duration::from_secs(30), || {
        ping(&s.lab, Host::ClientA, TUNNEL_B) || ping(&s.lab, Host::ClientB, TUNNEL_A)
    });
    let legs = relay.pair.lock().unwrap().record.legs;
    assert!(
        up,
        "no ping through the pair; refused: {:?}\nA: {}\nB: {}",
        relay.refused.lock().unwrap(),
        s.lab
            .exec(Host::ClientA, "wg", &["show", &names[0]])
            .unwrap_or_default(),
        s.lab
            .exec(Host::ClientB, "wg", &["show", &names[1]])
            .unwrap_or_default(),
    );
    let learnt: Vec<_> = legs
        .iter()
        .map(|l| {
            relay_userspace::control::session::address_of_leg(l)
                .unwrap()
                .ip()
        })
        .collect();
    assert_eq!(
        learnt,
        [addr::NAT_A_V4, addr::NAT_B_V4].map(|a| a.parse::<std::net::IpAddr>().unwrap()),
        "the legs are the NATs' public addresses"
    );
    for _ in 0..10 {
        assert!(ping(&s.lab, Host::ClientA, TUNNEL_B));
    }

    // The attacker knows both public keys and the two ports: forged initiations with a valid
    // mac1 to both ports, from several of its ports; then data sprayed at both.
    let (forged, received) = s
        .lab
        .in_host(Host::Attacker, || {
            let mut sent = 0;
            let mut sockets = Vec::new();
            for port in 0..4u16 {
                let socket = UdpSocket::bind(("0.0.0.0", 40_000 + port)).unwrap();
                for (i, to) in endpoints.iter().enumerate() {
                    let mut init = vec![0u8; INITIATION_LEN];
                    init[0] = 1;
                    init[4..8].copy_from_slice(&(0xbad0 + u32::from(port)).to_le_bytes());
                    // Addressed to the other peer of the port it goes to.
                    Mac1Key::for_receiver(&keys[1 - i]).seal(&mut init);
                    socket.send_to(&init, to).unwrap();
                    let mut data = vec![0u8; 64];
                    data[0] = 4;
                    socket.send_to(&data, to).unwrap();
                    sent += 2;
                }
                sockets.push(socket);
            }
            // Anything the relay sends it (it must send nothing) arrives meanwhile.
            std::thread::sleep(Duration::from_millis(500));
            let mut received = 0;
            let mut buf = [0u8; 2048];
            for socket in &sockets {
                socket.set_nonblocking(true).unwrap();
                while socket.recv_from(&mut buf).is_ok() {
                    received += 1;
                }
            }
            (sent, received)
        })
        .unwrap();
    assert_eq!(received, 0, "the relay sent the attacker something");
    assert_eq!(
        relay.pair.lock().unwrap().record.legs,
        legs,
        "the attacker moved a leg"
    );
    let refused = relay.refused.lock().unwrap().clone();
    let attacker: std::net::IpAddr = addr::ATTACKER_V4.parse().unwrap();
    let from_attacker = refused.iter().filter(|(a, _)| a.ip() == attacker).count();
    // Its initiations are relayed to the bound legs (the real peers drop them: they cannot
    // decrypt); its data is refused.
    assert_eq!(from_attacker, forged / 2, "{refused:?}");
    assert!(
        ping(&s.lab, Host::ClientA, TUNNEL_B),
        "the tunnel still works"
    );

    if rebind {
        // Client B's NAT forgets its mappings (it picks random ports): B's packets now come
        // from another port, and the relay's to B's old one are dropped. WireGuard notices
        // (no answer to what it sends) and shakes hands again from the new address, which the
        // bound leg A answers: leg B moves, with nothing configured anywhere.
        s.lab.exec(Host::NatB, "conntrack", &["-F"]).unwrap();
        let started = Instant::now();
        let recovered = NatLab::wait_until(Duration::from_secs(60), || {
            ping(&s.lab, Host::ClientB, TUNNEL_A)
        });
        let moved = relay.pair.lock().unwrap().record.legs;
        assert!(
            recovered,
            "no recovery from the NAT rebinding; refused: {:?}",
            relay.refused.lock().unwrap()
        );
        assert_eq!(moved[0], legs[0], "leg A stays");
        assert_ne!(moved[1], legs[1], "leg B moved to B's new mapping");
        eprintln!(
            "recovered from the NAT rebinding in {:?}",
            started.elapsed()
        );
        for _ in 0..10 {
            assert!(ping(&s.lab, Host::ClientB, TUNNEL_A));
        }
    }

    relay.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let kernel = match &relay.maps {
        Some(maps) => maps.lock().unwrap().kernel_stats(0).unwrap(),
        None => Default::default(),
    };
    (relay, kernel)
}

#[test]
fn real_wireguard_peers_teach_the_relay_their_legs_and_an_attacker_never_becomes_one() {
    require_root!();
    let (relay, kernel) = pair_between_real_peers(XdpMode::Off, false);
    let relayed = relay.relayed_data.load(Ordering::Relaxed);
    assert!(
        relayed >= 20,
        "{relayed} data messages relayed in userspace"
    );
    assert_eq!(kernel.packets, [0, 0]);
}

/// The same with the relay's XDP program: once the legs are learnt, the tunnel's data crosses
/// in the kernel; userspace saw only the handshakes and the messages that confirmed them —
/// also after client B's NAT rebinds mid-stream and the pair recovers by itself.
#[test]
fn learnt_legs_carry_the_tunnel_in_the_kernel_and_survive_a_nat_rebinding() {
    require_root!();
    let (relay, kernel) = pair_between_real_peers(XdpMode::Native, true);
    let user = relay.relayed_data.load(Ordering::Relaxed);
    let kernel_total = kernel.packets[0] + kernel.packets[1];
    assert!(
        kernel_total >= 40 && user <= 8,
        "kernel {:?}, userspace {user}",
        kernel.packets
    );
    assert!(kernel.packets[0] > 0 && kernel.packets[1] > 0, "{kernel:?}");
}
