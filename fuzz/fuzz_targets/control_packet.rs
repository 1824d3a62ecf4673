//! Bind-handshake control messages (`relay_common::geneve::control`): the first thing the relay does
//! with a control datagram from anyone on the internet, before any cryptography.
//!
//! Invariants:
//! * `parse` never panics, and rejects every length but `CONTROL_LEN`.
//! * Every accepted message has exactly one encoding (the parser is strict so that the MAC
//!   covers the message's meaning, not one of several spellings of it): `encode()` of a parsed
//!   message gives back the input byte for byte.
//! * The other way round, from a message built out of the fuzz bytes: a message of the shape
//!   the type documents (an observed source exactly in `Bound`) parses back from its encoding
//!   unchanged when its fields are valid and is refused otherwise; any other message is refused
//!   or parses to one with the same encoding.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use relay_common::geneve::{
    VNI_MAX,
    control::{CONTROL_LEN, ControlMessage, MessageType, Observed, ParseError},
};

fuzz_target!(|data: &[u8]| {
    match ControlMessage::parse(data) {
        Ok(message) => {
            assert_eq!(data.len(), CONTROL_LEN);
            assert_eq!(
                &message.encode()[..],
                data,
                "{message:?} re-encodes differently"
            );
            assert!(message.vni <= VNI_MAX);
            assert!(message.leg <= 1);
            assert_eq!(
                message.observed.is_some(),
                message.kind == MessageType::Bound
            );
            if let Some(observed) = message.observed {
                assert!(observed.family == 4 || observed.family == 6);
            }
        }
        Err(ParseError::Length) => assert_ne!(data.len(), CONTROL_LEN),
        Err(_) => assert_eq!(data.len(), CONTROL_LEN),
    }
    if let Ok(message) = arbitrary_message(&mut Unstructured::new(data)) {
        let encoded = message.encode();
        let parsed = ControlMessage::parse(&encoded);
        let valid_observed = match (message.kind, message.observed) {
            (MessageType::Bound, Some(o)) => Some(o.family == 4 || o.family == 6),
            (MessageType::Bound, None) => None,
            (_, Some(_)) => None,
            (_, None) => Some(true),
        };
        match valid_observed {
            Some(valid) if valid && message.leg <= 1 => {
                assert_eq!(parsed, Ok(message), "encoded as {encoded:02x?}");
            }
            Some(_) => assert!(parsed.is_err(), "{message:?} accepted as {parsed:?}"),
            None => {
                if let Ok(back) = parsed {
                    assert_eq!(back.encode(), encoded, "{message:?} parsed as {back:?}");
                }
            }
        }
    }
});

/// A message with arbitrary field values (not necessarily valid), to check encode → parse.
fn arbitrary_message(u: &mut Unstructured) -> arbitrary::Result<ControlMessage> {
    let kind = *u.choose(&[
        MessageType::Request,
        MessageType::Challenge,
        MessageType::Answer,
        MessageType::Bound,
    ])?;
    let observed = if bool::arbitrary(u)? {
        Some(Observed {
            family: u8::arbitrary(u)?,
            port: u16::arbitrary(u)?,
            addr: <[u8; 16]>::arbitrary(u)?,
        })
    } else {
        None
    };
    Ok(ControlMessage {
        // The header has 24 bits for it; a larger VNI is a caller bug, not a wire state.
        vni: u.int_in_range(0..=VNI_MAX)?,
        kind,
        leg: u8::arbitrary(u)?,
        generation: u64::arbitrary(u)?,
        cookie: Arbitrary::arbitrary(u)?,
        observed,
        mac: Arbitrary::arbitrary(u)?,
    })
}
