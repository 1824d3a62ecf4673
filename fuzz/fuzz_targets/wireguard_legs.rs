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

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use relay_common::wireguard::{DATA_HLEN, classify, classify_header};
use relay_userspace::fronts::wireguard::{
    legs::Side,
    simulation::{Step, World},
};

fn side(u: &mut Unstructured) -> arbitrary::Result<Side> {
    Ok(if bool::arbitrary(u)? {
        Side::A
    } else {
        Side::B
    })
}

/// One step of the world, straight from the fuzzer's bytes.
fn step(u: &mut Unstructured) -> arbitrary::Result<Step> {
    Ok(match u.int_in_range(0..=8u8)? {
        0 => Step::Initiate(side(u)?),
        1 => Step::Talk(side(u)?),
        2 => Step::Rebind(side(u)?),
        3 => Step::Wait(u.arbitrary()?),
        4 => Step::Release,
        5 => Step::Forge {
            port: u.arbitrary()?,
            to: side(u)?,
            kind: u.arbitrary()?,
            first: u.arbitrary()?,
            second: u.arbitrary()?,
            mac1: u.arbitrary()?,
            reuse: u.arbitrary()?,
        },
        6 => Step::ForgeData {
            port: u.arbitrary()?,
            to: side(u)?,
            of: side(u)?,
        },
        7 => Step::ForgeAnswer {
            port: u.arbitrary()?,
            to: side(u)?,
            of: side(u)?,
            which: u.arbitrary()?,
        },
        _ => Step::Replay {
            port: u.arbitrary()?,
            to: side(u)?,
            which: u.arbitrary()?,
        },
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(datagram) = Vec::<u8>::arbitrary(&mut u) else {
        return;
    };
    let whole = classify(&datagram);
    if datagram.len() >= DATA_HLEN {
        let head: [u8; DATA_HLEN] = datagram[..DATA_HLEN].try_into().unwrap();
        assert_eq!(whole, classify_header(&head, datagram.len()));
    }
    let mut world = World::new();
    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let Ok(s) = step(&mut u) else { break };
        world.step(s);
    }
});
