//! The daemon end to end with XDP off (the userspace forwarder carries everything): two client
//! sidecars bind and carry application datagrams both ways, across families; a third address
//! cannot inject; a client that moves re-binds and traffic resumes; unbound sessions expire.
//! Privileged: runs in its own network namespace (the relay refuses loopback legs, so the
//! "hosts" are documentation addresses on the namespace's loopback interface).

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use relay_common::{
    geneve::{GENEVE_PROTOCOL_DATA, GeneveHdr},
    verdict::Reason,
};
use relay_lab::{Netns, netns::EnteredNetns};
use relay_userspace::{
    api::types::{CreateSession, Labels, SessionDetails},
    client::{
        api::ApiClient,
        sidecar::{self, Family, SidecarOptions, SidecarStats},
    },
    config::Config,
    daemon::Daemon,
    dataplane::{RelayMaps, loader::remove_pins},
    fronts::geneve::SessionFront,
    fronts::geneve::ticket::Ticket,
};
use tokio::sync::watch;

const TOKEN: &str = "integration-token-0123";
const RELAY_PORT: u16 = 16081;

struct Lab {
    runtime: tokio::runtime::Runtime,
    daemon: Option<Daemon>,
    pin_dir: PathBuf,
    _entered: EnteredNetns,
    _ns: Netns,
}

impl Lab {
    fn new(extra_sessions_config: &str) -> Lab {
        Lab::with_config("", extra_sessions_config)
    }

    /// A lab whose `api:` and `sessions:` sections get these extra lines.
    fn with_config(extra_api_config: &str, extra_sessions_config: &str) -> Lab {
        let ns = Netns::create("rt-daemon").unwrap();
        for addr in [
            "198.51.100.1/32",
            "198.51.100.10/32",
            "198.51.100.11/32",
            "198.51.100.66/32",
            "2001:db8::1/128",
            "2001:db8::20/128",
        ] {
            let mut args = vec!["addr", "add", addr, "dev", "lo"];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args).unwrap();
        }
        let entered = ns.enter().unwrap();
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
        let yaml = format!(
            "xdp:\n  mode: off\nrelay:\n  port: {RELAY_PORT}\n  listen: [198.51.100.1, \"2001:db8::1\"]\n  \
             workers: 2\napi:\n  listen: 127.0.0.1:0\n  tokens:\n    - name: tester\n      token: {TOKEN}\n\
             {extra_api_config}pin_dir: {}\nsessions:\n{extra_sessions_config}",
            pin_dir.display()
        );
        let config = Config::parse(&yaml, "test").unwrap();
        // Worker threads (and the forwarder's) inherit the namespace from this thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let daemon = runtime.block_on(Daemon::start(&config)).unwrap();
        Lab {
            runtime,
            daemon: Some(daemon),
            pin_dir,
            _entered: entered,
            _ns: ns,
        }
    }

    fn api(&self) -> ApiClient {
        let addr = self.daemon.as_ref().unwrap().started.api;
        ApiClient::new(&format!("http://{addr}"), TOKEN, None).unwrap()
    }

    fn create(&self, a: &str, b: &str) -> SessionDetails {
        let request = CreateSession {
            labels: Some(Labels {
                a: Some(a.into()),
                b: Some(b.into()),
            }),
            idempotency_key: None,
        };
        self.runtime.block_on(self.api().create(&request)).unwrap()
    }

    /// The forwarder's verdict counters, as the daemon flushes them into the pinned maps.
    fn verdicts(&self) -> Vec<u64> {
        self.flush();
        RelayMaps::open_pinned(&self.pin_dir)
            .unwrap()
            .userspace_verdicts()
            .unwrap()
            .iter()
            .map(|c| c.packets)
            .collect()
    }

    /// Waits (at most 5 s) until the forwarder counted at least `count` under `reason`.
    fn wait_verdict(&self, reason: Reason, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.verdicts();
            if v[reason as usize] >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} stayed below {count}: {v:?}",
                reason.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn flush(&self) {
        let mut plane = self.daemon.as_ref().unwrap().plane.lock().unwrap();
        plane.flush_counters(Instant::now());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            self.runtime.block_on(d.stop(false));
        }
        let _ = remove_pins(&self.pin_dir);
    }
}

/// A running sidecar and its stop switch.
struct Sidecar {
    stop: watch::Sender<bool>,
    status: watch::Receiver<Option<SocketAddr>>,
    stats: Arc<SidecarStats>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A sidecar that delivers to `app` and re-binds on the defaults' timers.
fn sidecar(lab: &Lab, ticket: &str, listen: &str, bind: &str, app: &str) -> Sidecar {
    sidecar_with(lab, options(ticket, listen, bind, Some(app)))
}

fn options(ticket: &str, listen: &str, bind: &str, app: Option<&str>) -> SidecarOptions {
    SidecarOptions {
        ticket: Ticket::decode(ticket).unwrap(),
        listen: listen.parse().unwrap(),
        app: app.map(|a| a.parse().unwrap()),
        family: Family::Auto,
        bind: Some(bind.parse().unwrap()),
        keepalive: Duration::from_secs(25),
        silence: Duration::from_secs(5),
    }
}

fn sidecar_with(lab: &Lab, options: SidecarOptions) -> Sidecar {
    let (stop, shutdown) = watch::channel(false);
    let (status_tx, status) = watch::channel(None);
    let stats = Arc::new(SidecarStats::default());
    let task = lab
        .runtime
        .spawn(sidecar::run(options, stats.clone(), status_tx, shutdown));
    Sidecar {
        stop,
        status,
        stats,
        task,
    }
}

impl Sidecar {
    fn wait_bound(&mut self, lab: &Lab) -> SocketAddr {
        lab.runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                self.status.wait_for(|s| s.is_some()),
            )
            .await
            .expect("sidecar did not bind within 10 s")
            .unwrap()
            .unwrap()
        })
    }

    fn stop(self, lab: &Lab) {
        let _ = self.stop.send(true);
        lab.runtime.block_on(self.task).unwrap().unwrap();
    }
}

fn app(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Sends `message` from `from` to `to` until `receiver` gets it (bounded: 25 tries).
fn deliver(from: &UdpSocket, to: &str, receiver: &UdpSocket, message: &[u8]) {
    let mut buf = [0u8; 2048];
    for _ in 0..25 {
        from.send_to(message, to).unwrap();
        while let Ok((n, _)) = receiver.recv_from(&mut buf) {
            if &buf[..n] == message {
                return;
            }
        }
    }
    panic!("{:?} never arrived", String::from_utf8_lossy(message));
}

#[test]
fn two_sidecars_relay_both_ways_across_families_and_survive_a_move() {
    require_root!();
    let lab = Lab::new("  max_sessions: 16\n");
    let session = lab.create("alice-laptop", "office-nas");
    let ticket = |leg: usize| session.legs[leg].ticket.clone().unwrap();
    let mut a = sidecar(
        &lab,
        &ticket(0),
        "127.0.0.1:17001",
        "198.51.100.10",
        "127.0.0.1:18001",
    );
    let mut b = sidecar(
        &lab,
        &ticket(1),
        "127.0.0.1:17002",
        "2001:db8::20",
        "127.0.0.1:18002",
    );
    let a_public = a.wait_bound(&lab);
    let b_public = b.wait_bound(&lab);
    assert_eq!(a_public.ip().to_string(), "198.51.100.10");
    assert_eq!(b_public.ip().to_string(), "2001:db8::20");

    let shown = lab.runtime.block_on(lab.api().get(session.vni)).unwrap();
    assert_eq!(shown.state, "bound");
    assert_eq!(shown.legs[0].bound, Some(a_public));
    assert_eq!(shown.legs[1].bound, Some(b_public));

    let app_a = app("127.0.0.1:18001");
    let app_b = app("127.0.0.1:18002");
    deliver(
        &app_b,
        "127.0.0.1:17002",
        &app_a,
        b"hello from office-nas over IPv6",
    );
    deliver(
        &app_a,
        "127.0.0.1:17001",
        &app_b,
        b"hello from alice-laptop over IPv4",
    );
    // Workers publish a batch's counts right after sending it: wait for them (bounded).
    lab.wait_verdict(Reason::ForwardedV4ToV6, 1);
    lab.wait_verdict(Reason::ForwardedV6ToV4, 1);

    // The pinned maps show the session as the XDP program would use it, with labels.
    let maps = RelayMaps::open_pinned(&lab.pin_dir).unwrap();
    let all = maps.all_sessions().unwrap();
    let (vni, fast, meta) = &all[0];
    assert_eq!(*vni, session.vni);
    assert!(fast.legs[0].is_bound() && fast.legs[1].is_bound());
    let (token, labels) = relay_userspace::control::persist::meta_strings(meta.as_ref().unwrap());
    assert_eq!(token, "tester");
    assert_eq!(labels[1].as_deref(), Some("office-nas"));

    // A third address sending the session's data packets reaches nobody.
    let before = lab.verdicts()[Reason::DroppedWrongSource as usize];
    let attacker = UdpSocket::bind("198.51.100.66:40000").unwrap();
    let mut spoof = GeneveHdr::new(session.vni, false, GENEVE_PROTOCOL_DATA)
        .to_bytes()
        .to_vec();
    spoof.extend_from_slice(b"injected");
    for _ in 0..5 {
        attacker
            .send_to(&spoof, ("198.51.100.1", RELAY_PORT))
            .unwrap();
    }
    lab.wait_verdict(Reason::DroppedWrongSource, before + 5);
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = app_b.recv_from(&mut buf) {
        assert_ne!(&buf[..n], b"injected", "spoofed data was relayed");
    }
    assert_eq!(
        lab.verdicts()[Reason::DroppedWrongSource as usize],
        before + 5
    );

    // Leg a moves (new socket, new port: as after a NAT change) and re-binds; traffic resumes.
    a.stop(&lab);
    let mut a2 = sidecar(
        &lab,
        &ticket(0),
        "127.0.0.1:17001",
        "198.51.100.11",
        "127.0.0.1:18001",
    );
    let moved = a2.wait_bound(&lab);
    assert_eq!(moved.ip().to_string(), "198.51.100.11");
    deliver(&app_a, "127.0.0.1:17001", &app_b, b"after the move");
    deliver(&app_b, "127.0.0.1:17002", &app_a, b"reply after the move");
    let binds = lab
        .daemon
        .as_ref()
        .unwrap()
        .front::<SessionFront>()
        .unwrap()
        .control()
        .bind_results();
    let count = |result: &str| binds.iter().find(|(r, _)| *r == result).map(|(_, n)| *n);
    assert_eq!(count("bound"), Some(2), "{binds:?}");
    assert_eq!(count("rebound"), Some(1), "{binds:?}");
    a2.stop(&lab);
    b.stop(&lab);
}

#[test]
fn without_app_the_sidecar_delivers_to_wireguards_port_and_counts_what_it_cannot_deliver() {
    require_root!();
    let lab = Lab::new("  max_sessions: 16\n");
    let session = lab.create("answers-only", "sends-first");
    let ticket = |leg: usize| session.legs[leg].ticket.clone().unwrap();
    // Leg a is the README's sidecar: no --app. Its application has never sent anything.
    let mut a = sidecar_with(
        &lab,
        options(&ticket(0), "127.0.0.2:51821", "198.51.100.10", None),
    );
    let mut b = sidecar(
        &lab,
        &ticket(1),
        "127.0.0.1:17032",
        "198.51.100.11",
        "127.0.0.1:18032",
    );
    a.wait_bound(&lab);
    b.wait_bound(&lab);
    let app_b = app("127.0.0.1:18032");

    // Nothing listens on 127.0.0.2:51820 yet: the kernel refuses the delivery, and the
    // sidecar counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stats.undeliverable.load(Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "no undeliverable datagram counted"
        );
        app_b.send_to(b"knock knock", "127.0.0.1:17032").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }

    // The application comes up on WireGuard's port and receives the peer's first datagram
    // without having sent anything.
    let app_a = app("127.0.0.2:51820");
    deliver(&app_b, "127.0.0.1:17032", &app_a, b"handshake initiation");
    // Its answer goes back the same way.
    deliver(&app_a, "127.0.0.2:51821", &app_b, b"handshake response");
    assert!(a.stats.to_app.load(Relaxed) >= 1);
    a.stop(&lab);
    b.stop(&lab);
}

#[test]
fn one_way_traffic_binds_only_on_the_keepalive() {
    require_root!();
    let lab = Lab::new("  max_sessions: 16\n");
    let session = lab.create("sender", "silent");
    let ticket = |leg: usize| session.legs[leg].ticket.clone().unwrap();
    let quick = |o: SidecarOptions| SidecarOptions {
        keepalive: Duration::from_secs(3),
        silence: Duration::from_millis(500),
        ..o
    };
    let mut a = sidecar_with(
        &lab,
        quick(options(
            &ticket(0),
            "127.0.0.1:17041",
            "198.51.100.10",
            Some("127.0.0.1:18041"),
        )),
    );
    let mut b = sidecar_with(
        &lab,
        quick(options(
            &ticket(1),
            "127.0.0.1:17042",
            "198.51.100.11",
            Some("127.0.0.1:18042"),
        )),
    );
    a.wait_bound(&lab);
    b.wait_bound(&lab);
    let app_a = app("127.0.0.1:18041");
    let app_b = app("127.0.0.1:18042");
    // Two-way first, so the peer's datagrams have been seen, then a goes on sending for 7 s
    // and b never answers: each half-second of silence used to cost a bind.
    deliver(&app_a, "127.0.0.1:17041", &app_b, b"hello");
    deliver(&app_b, "127.0.0.1:17042", &app_a, b"hello back");
    let binds_before = a.stats.binds.load(Relaxed);
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(7) {
        app_a.send_to(b"one way", "127.0.0.1:17041").unwrap();
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let binds = a.stats.binds.load(Relaxed) - binds_before;
    // One check when the peer went quiet, then the keepalives (every 3 s after a bind).
    assert!(
        (2..=4).contains(&binds),
        "{binds} binds in 7 s of one-way traffic"
    );
    let mut received = 0;
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = app_b.recv_from(&mut buf) {
        received += usize::from(&buf[..n] == b"one way");
    }
    assert!(
        received >= sent * 9 / 10,
        "{received} of {sent} one-way datagrams arrived"
    );
    a.stop(&lab);
    b.stop(&lab);
}

#[test]
fn the_userspace_forwarder_holds_each_leg_to_its_packet_rate() {
    require_root!();
    let lab = Lab::new("  packets_per_sec: 200\n");
    let session = lab.create("flooder", "victim");
    let ticket = |leg: usize| session.legs[leg].ticket.clone().unwrap();
    let mut a = sidecar(
        &lab,
        &ticket(0),
        "127.0.0.1:17011",
        "198.51.100.10",
        "127.0.0.1:18011",
    );
    let mut b = sidecar(
        &lab,
        &ticket(1),
        "127.0.0.1:17012",
        "198.51.100.11",
        "127.0.0.1:18012",
    );
    a.wait_bound(&lab);
    b.wait_bound(&lab);
    let app_a = app("127.0.0.1:18011");
    let app_b = app("127.0.0.1:18012");
    deliver(&app_a, "127.0.0.1:17011", &app_b, b"before the flood");
    // A full bucket again: 200/s with a 100 ms burst holds 20 packets.
    std::thread::sleep(Duration::from_millis(300));
    let dropped_before = lab.verdicts()[Reason::DroppedRateLimited as usize];

    // 2000 datagrams at about 10 000/s, paced so that socket buffers on the way hold 20 ms of
    // them: the forwarder must pass the burst plus 200/s and drop (and count) the rest.
    const SENT: u64 = 2000;
    let start = Instant::now();
    for i in 0..SENT {
        app_a
            .send_to(format!("flood {i}").as_bytes(), "127.0.0.1:17011")
            .unwrap();
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut received = 0u64;
    let mut buf = [0u8; 2048];
    let mut last = start;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match app_b.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n].starts_with(b"flood ") => {
                received += 1;
                last = Instant::now();
            }
            Ok(_) => {}
            Err(_) => break, // 200 ms of silence
        }
    }
    let allowed = 20 + (200.0 * last.duration_since(start).as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (20..=allowed).contains(&received),
        "{received} of {SENT} relayed; the limit allows {allowed}"
    );
    // All the rest, bar a little slack for a sidecar descheduled long enough on this shared
    // machine for its socket buffer to overflow (which would drop, but not count, some).
    let refused = SENT - received;
    lab.wait_verdict(
        Reason::DroppedRateLimited,
        dropped_before + refused * 9 / 10,
    );
    let counted = lab.verdicts()[Reason::DroppedRateLimited as usize] - dropped_before;
    assert!(
        counted <= refused,
        "{counted} counted, {refused} not relayed"
    );
    // The other leg's bucket is its own: it sends at once.
    deliver(&app_b, "127.0.0.1:17012", &app_a, b"the victim still talks");
    // And the flooding leg is limited, not blocked.
    std::thread::sleep(Duration::from_millis(200));
    deliver(&app_a, "127.0.0.1:17011", &app_b, b"after the flood");
    a.stop(&lab);
    b.stop(&lab);
}

#[test]
fn the_api_limits_requests_per_source_address() {
    require_root!();
    let lab = Lab::with_config("  requests_per_sec_per_source: 3\n", "");
    let api = lab.api();
    let start = Instant::now();
    let results: Vec<_> = (0..20).map(|_| lab.runtime.block_on(api.list())).collect();
    let allowed = 3 + (3.0 * start.elapsed().as_secs_f64()).ceil() as usize + 1;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(
        (3..=allowed).contains(&ok),
        "{ok} of 20 passed, {allowed} allowed"
    );
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        let text = refused.to_string();
        assert!(
            text.contains("429") && text.contains("rate_limited"),
            "{text}"
        );
    }
}

#[test]
fn unbound_sessions_expire_after_the_bind_lifetime() {
    require_root!();
    let lab = Lab::new("  bind_lifetime: 1s\n");
    let session = lab.create("a", "b");
    assert!(
        RelayMaps::open_pinned(&lab.pin_dir)
            .unwrap()
            .session(session.vni)
            .unwrap()
            .is_some()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = lab.runtime.block_on(lab.api().get(session.vni)).is_err();
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "session still alive after 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let maps = RelayMaps::open_pinned(&lab.pin_dir).unwrap();
    assert!(
        maps.session(session.vni).unwrap().is_none(),
        "left in the fast-path maps"
    );
    assert!(
        maps.session_meta.get(&session.vni, 0).is_err(),
        "metadata left behind"
    );
    let stats = lab
        .daemon
        .as_ref()
        .unwrap()
        .plane
        .lock()
        .unwrap()
        .stats
        .clone();
    assert_eq!(stats.expired.get("bind_timeout"), Some(&1));
}

#[test]
fn kernel_forwarded_traffic_keeps_a_bound_session_alive() {
    require_root!();
    use aya::maps::PerCpuValues;
    use relay_common::maps::SessionStats;
    use relay_userspace::dataplane::{
        Dataplane, LoadOptions, clock::JiffiesClock, object::PROGRAM_CLOCK_PROBE,
    };

    let lab = Lab::new("  idle_lifetime: 2s\n");
    let session = lab.create("a", "b");
    let ticket = |leg: usize| session.legs[leg].ticket.clone().unwrap();
    let mut a = sidecar(
        &lab,
        &ticket(0),
        "127.0.0.1:17101",
        "198.51.100.10",
        "127.0.0.1:18101",
    );
    let mut b = sidecar(
        &lab,
        &ticket(1),
        "127.0.0.1:17102",
        "2001:db8::20",
        "127.0.0.1:18102",
    );
    a.wait_bound(&lab);
    b.wait_bound(&lab);
    // The clients go away: from now on only the kernel's stamps show activity.
    a.stop(&lab);
    b.stop(&lab);
    let slot = RelayMaps::open_pinned(&lab.pin_dir)
        .unwrap()
        .session(session.vni)
        .unwrap()
        .unwrap()
        .slot;
    // The program's clock, through a private load of the object.
    let probe_pins = std::path::PathBuf::from(format!("{}-probe", lab.pin_dir.display()));
    let mut probe = Dataplane::load(&LoadOptions {
        pin_dir: probe_pins.clone(),
        max_sessions: 4,
        max_allocations: 4,
        nexthop_cache_entries: 4,
        shared_from: None,
    })
    .unwrap();
    let mut stamp = || {
        let jiffies = JiffiesClock::read(probe.program(PROGRAM_CLOCK_PROBE).unwrap()).unwrap();
        let mut maps = RelayMaps::open_pinned(&lab.pin_dir).unwrap();
        let cpus = aya::util::nr_cpus().unwrap();
        let mut values = vec![SessionStats::default(); cpus];
        values[0] = SessionStats {
            packets: [1, 1],
            bytes: [100, 100],
            last_seen: [jiffies, jiffies],
            ..Default::default()
        };
        maps.session_stats
            .set(slot, PerCpuValues::try_from(values).unwrap(), 0)
            .unwrap();
    };
    let alive = |lab: &Lab| lab.runtime.block_on(lab.api().get(session.vni)).is_ok();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        stamp();
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            alive(&lab),
            "expired although the kernel forwarded its traffic"
        );
    }
    // Traffic stops: the session expires after its idle lifetime.
    let deadline = Instant::now() + Duration::from_secs(8);
    while alive(&lab) {
        assert!(
            Instant::now() < deadline,
            "still alive 8 s after the last packet"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let stats = lab
        .daemon
        .as_ref()
        .unwrap()
        .plane
        .lock()
        .unwrap()
        .stats
        .clone();
    assert_eq!(stats.expired.get("idle"), Some(&1), "{stats:?}");
    drop(probe);
    remove_pins(&probe_pins).unwrap();
}

#[test]
fn control_benchmark_harness_runs() {
    require_root!();
    let r = relay_lab::control_bench::run(relay_lab::control_bench::ControlBenchOptions {
        alloc_seconds: 0.3,
        concurrency: 4,
        binds: 50,
        fill: 500,
    })
    .unwrap();
    assert!(
        r.allocations_per_sec > 0.0 && r.binds_per_sec > 0.0,
        "{r:?}"
    );
    assert!(
        r.fast_path_bytes_per_session > 0.0 && r.maps.len() == 5,
        "{r:?}"
    );
}
