//! Stock WireGuard's leg learning (`relay_userspace::fronts::wireguard::legs`) in a world of two
//! honest peers, NATs that rebind, and an attacker that knows both public keys and both relay
//! ports, forges any message from any of its ports and replays whatever reaches it
//! (`fronts::wireguard::simulation`), plus the message classifier on raw bytes.
//!
//! Invariants, after every step (the world asserts them):
//! * Nothing panics; the world settles (every relayed message is answered at most once).
//! * No attacker address ever becomes a leg: each leg is an address its own peer used.
//! * No transport data of the honest peers ever reaches the attacker.
//! * The classifier never panics and agrees with its header-only form (the kernel's).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use relay_common::wireguard::{DATA_HLEN, classify, classify_header};
use relay_userspace::fronts::wireguard::{
    legs::Side,
    simulation::{Step, World},
};

#[derive(Arbitrary, Debug)]
enum FuzzSide {
    A,
    B,
}

impl From<FuzzSide> for Side {
    fn from(side: FuzzSide) -> Side {
        match side {
            FuzzSide::A => Side::A,
            FuzzSide::B => Side::B,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum FuzzStep {
    Initiate(FuzzSide),
    Talk(FuzzSide),
    Rebind(FuzzSide),
    Wait(u8),
    Release,
    Forge {
        port: u8,
        to: FuzzSide,
        kind: u8,
        first: u32,
        second: u32,
        mac1: bool,
        reuse: Option<u8>,
    },
    Replay {
        port: u8,
        to: FuzzSide,
        which: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    steps: Vec<FuzzStep>,
    datagram: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let whole = classify(&input.datagram);
    if input.datagram.len() >= DATA_HLEN {
        let head: [u8; DATA_HLEN] = input.datagram[..DATA_HLEN].try_into().unwrap();
        assert_eq!(whole, classify_header(&head, input.datagram.len()));
    }
    let mut world = World::new();
    for step in input.steps.into_iter().take(256) {
        world.step(match step {
            FuzzStep::Initiate(side) => Step::Initiate(side.into()),
            FuzzStep::Talk(side) => Step::Talk(side.into()),
            FuzzStep::Rebind(side) => Step::Rebind(side.into()),
            FuzzStep::Wait(n) => Step::Wait(n),
            FuzzStep::Release => Step::Release,
            FuzzStep::Forge {
                port,
                to,
                kind,
                first,
                second,
                mac1,
                reuse,
            } => Step::Forge {
                port,
                to: to.into(),
                kind,
                first,
                second,
                mac1,
                reuse,
            },
            FuzzStep::Replay { port, to, which } => Step::Replay {
                port,
                to: to.into(),
                which,
            },
        });
    }
});
