//! A datagram from anyone on the internet to the TURN port (`relay_userspace::fronts::turn`):
//! classification, stream framing, the data path's decision and the server's answer, before
//! any credential.
//!
//! Invariants:
//! * Nothing panics.
//! * ChannelData's length always fits the datagram; a stream frame never claims more bytes than
//!   it has.
//! * With credit alone (no allowance beyond it, `Allowance::NONE`), the server never answers a
//!   source with more bytes than it sent (amplification ≤ 1), and what it answers is a
//!   well-formed STUN message. (The default allowance beyond credit is bounded by the
//!   `amplification` unit tests.)
//! * Nothing unauthenticated changes any allocation, and with no allocation nothing is relayed.
#![no_main]

use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::{
        LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use relay_common::turn::TurnDatagram;
use relay_userspace::{
    control::address_policy::AddressPolicy,
    fronts::turn::{
        amplification::Allowance,
        auth::{Credentials, Nonces, StaticUser},
        relaying::{self, FromClient, RelayTables},
        server::{
            BindFailure, Clock, Families, FiveTuple, PortBinder, RelayedAddress, Transport,
            TurnServer, TurnSettings,
        },
        stream::frame_len,
    },
};

struct NoPorts;

impl PortBinder for NoPorts {
    fn bind(&mut self, _: u16, _: Families) -> Result<(), BindFailure> {
        Ok(())
    }
    fn release(&mut self, _: u16) {}
}

static SERVER: LazyLock<Mutex<TurnServer>> = LazyLock::new(|| {
    let settings = TurnSettings {
        channel_max: relay_common::turn::CHANNEL_MAX_RFC5766,
        relayed_v4: Some(RelayedAddress {
            local: "192.0.2.10".parse().unwrap(),
            advertised: "192.0.2.10".parse().unwrap(),
        }),
        amplification: Allowance::NONE,
        ..TurnSettings::new(50_000..=50_099)
    };
    let credentials = Credentials::new(
        "fuzz.test",
        &["a-long-shared-secret".into()],
        &[StaticUser {
            name: "alice".into(),
            password: "wonderland".into(),
        }],
        Duration::from_secs(86_400),
    );
    Mutex::new(TurnServer::new(
        settings,
        credentials,
        Nonces::new([9; 32]),
        AddressPolicy::strict(Vec::new()),
    ))
});
static TABLES: LazyLock<RelayTables> = LazyLock::new(RelayTables::new);
/// Every input comes from a source never seen before, so its credit is its own size.
static SOURCE: AtomicU64 = AtomicU64::new(1);

fuzz_target!(|data: &[u8]| {
    if let TurnDatagram::ChannelData { len, .. } = TurnDatagram::classify(data) {
        assert!(4 + len <= data.len());
    }
    if let Ok(Some(n)) = frame_len(data) {
        assert!(n <= data.len());
    }
    let n = SOURCE.fetch_add(1, Ordering::Relaxed);
    let client = SocketAddr::new(
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            (n >> 48) as u16,
            (n >> 32) as u16,
            (n >> 16) as u16,
            n as u16,
        )
        .into(),
        40_000,
    );
    let five_tuple = FiveTuple {
        client,
        server: "[2001:db8::1]:3478".parse().unwrap(),
        transport: Transport::Udp,
    };
    match relaying::from_client(data, &five_tuple, &TABLES) {
        FromClient::ToPeer { .. } => panic!("relayed without an allocation"),
        FromClient::Stun | FromClient::Drop(_) => {}
    }
    let clock = Clock {
        now: Instant::now(),
        unix_ms: 1_800_000_000_000,
    };
    let outcome = SERVER
        .lock()
        .unwrap()
        .handle(data, five_tuple, &clock, &mut NoPorts);
    assert!(outcome.change.is_none(), "{outcome:?}");
    if let Some(reply) = outcome.reply {
        assert!(
            reply.len() <= data.len(),
            "{} bytes answered to {} ({})",
            reply.len(),
            data.len(),
            outcome.result
        );
        stun_types::message::Message::from_bytes(&reply).expect("a well-formed answer");
    }
});
