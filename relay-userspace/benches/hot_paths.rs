//! criterion benches of the host-side hot code: bind-handshake crypto and verification, the
//! userspace forwarder's per-datagram decision over a batch, and the checksum math.

use std::{
    hint::black_box,
    net::SocketAddr,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::{SeedableRng, rngs::StdRng};
use relay_common::{
    checksum::Incremental,
    geneve::{GENEVE_PROTOCOL_DATA, GeneveHdr, control::CONTROL_LEN},
    maps::SessionLimits,
};
use relay_userspace::{
    client::handshake::{Handshake, Step},
    control::{
        address_policy::AddressPolicy,
        session::leg_at,
        table::{AllocationRequest, SessionTable, TableSettings},
    },
    fronts::geneve::{
        bind,
        cookie_jar::CookieJar,
        crypto::{CookieInput, verify_message},
        decide::decide,
    },
};

fn table(n: u32) -> (SessionTable, Vec<(u32, [u8; 32])>) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut t = SessionTable::new(TableSettings {
        max_sessions: n,
        quotas: [("b".to_string(), n)].into(),
        bind_lifetime: Duration::from_secs(3600),
        idle_lifetime: Duration::from_secs(3600),
        limits: SessionLimits::default(),
    });
    let now = Instant::now();
    let ids = (0..n)
        .map(|_| {
            let (s, _) = t
                .allocate("b", AllocationRequest::default(), now, 0, &mut rng)
                .unwrap();
            (s.vni, s.legs[0].key)
        })
        .collect();
    (t, ids)
}

fn cookies(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let jar = CookieJar::new(Duration::from_secs(120), Instant::now(), &mut rng);
    let input = CookieInput {
        vni: 7,
        leg: 1,
        generation: 99,
        addr: [9; 16],
        port: 4000,
    };
    let cookie = jar.issue(&input);
    c.bench_function("cookie/issue", |b| b.iter(|| jar.issue(black_box(&input))));
    c.bench_function("cookie/verify (current and previous secret)", |b| {
        b.iter(|| jar.verify(black_box(&input), black_box(&cookie)))
    });
    let key = [3u8; 32];
    let mut hs = Handshake::new(7, 0, key);
    let request: [u8; CONTROL_LEN] = hs.start(Instant::now(), 1);
    c.bench_function("bind/verify message MAC", |b| {
        b.iter(|| verify_message(black_box(&key), black_box(&request)))
    });
}

fn binds(c: &mut Criterion) {
    let (t, ids) = table(1024);
    // Setup and routine take turns with the table.
    let t = std::cell::RefCell::new(t);
    let mut rng = StdRng::seed_from_u64(3);
    let jar = CookieJar::new(Duration::from_secs(120), Instant::now(), &mut rng);
    let policy = AddressPolicy::strict(vec![]);
    let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut i = 0usize;
    let mut generation = 1u64;
    c.bench_function(
        "bind/relay side: request + answer, verified and applied",
        |b| {
            b.iter_batched(
                || {
                    // Client side prepared outside the timing.
                    let (vni, key) = ids[i % ids.len()];
                    i += 1;
                    generation += 1;
                    let mut hs = Handshake::new(vni, 0, key);
                    let request = hs.start(Instant::now(), generation);
                    let challenge = bind::handle(
                        &mut t.borrow_mut(),
                        &jar,
                        &policy,
                        &request,
                        src,
                        Instant::now(),
                    )
                    .reply
                    .unwrap();
                    let Step::Send(answer) = hs.on_datagram(&challenge, Instant::now()) else {
                        panic!()
                    };
                    (request, answer)
                },
                |(request, answer)| {
                    let now = Instant::now();
                    let mut t = t.borrow_mut();
                    let a = bind::handle(&mut t, &jar, &policy, &request, src, now);
                    let b = bind::handle(&mut t, &jar, &policy, &answer, src, now);
                    (a.reply, b.reply)
                },
                BatchSize::SmallInput,
            )
        },
    );
}

fn forwarder(c: &mut Criterion) {
    let session = relay_common::maps::Session {
        legs: [
            leg_at("198.51.100.1:1000".parse().unwrap()),
            leg_at("[2001:db8::2]:2000".parse().unwrap()),
        ],
        slot: 9,
        ..Default::default()
    };
    let table = dashmap::DashMap::new();
    for vni in 1..=4096u32 {
        table.insert(vni, session);
    }
    let src: SocketAddr = "198.51.100.1:1000".parse().unwrap();
    let batch: Vec<Vec<u8>> = (0..64u32)
        .map(|i| {
            let mut d = GeneveHdr::new(1 + i * 61 % 4096, false, GENEVE_PROTOCOL_DATA)
                .to_bytes()
                .to_vec();
            d.resize(1420, 0xab);
            d
        })
        .collect();
    let mut group = c.benchmark_group("forwarder");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("decide a batch of 64 datagrams", |b| {
        b.iter(|| {
            for d in &batch {
                black_box(decide(d, src, |vni| table.get(&vni).map(|s| *s)));
            }
        })
    });
    group.finish();
}

fn checksums(c: &mut Criterion) {
    let old = [0x1234u16, 0x5678];
    let new = [0x9abcu16, 0xdef0];
    let old6 = [1u16, 2, 3, 4, 5, 6, 7, 8];
    let new6 = [8u16, 7, 6, 5, 4, 3, 2, 1];
    c.bench_function("checksum/v4 → v4 UDP update", |b| {
        b.iter(|| {
            Incremental::new(black_box(0xbeef))
                .replace_words(&old, &new)
                .replace_words(&new, &old)
                .replace(1, 2)
                .replace(3, 4)
                .finish_udp()
        })
    });
    c.bench_function("checksum/v4 → v6 UDP update", |b| {
        b.iter(|| {
            Incremental::new(black_box(0xbeef))
                .remove_words(&old)
                .remove_words(&new)
                .add_words(&old6)
                .add_words(&new6)
                .replace(1, 2)
                .replace(3, 4)
                .finish_udp()
        })
    });
}

criterion_group!(benches, cookies, binds, forwarder, checksums);
criterion_main!(benches);
