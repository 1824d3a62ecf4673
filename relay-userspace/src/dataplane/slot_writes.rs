//! How a session record in `session_slots` is rewritten without the program ever acting on a
//! torn one.
//!
//! A hash map's update swaps in a new element (readers see the old or the new one whole). An
//! array's update copies the new value over the old in place, so a program reading on another
//! CPU meanwhile may see any byte-wise mix of the two: a leg with the new address and the old
//! port, say, which would send a packet to neither. The records are therefore changed in steps,
//! each of which differs from the last in a way no mix can misuse:
//!
//! * a step that changes one byte (a leg's `bound` flag) or one field no packet can match on
//!   its own (`vni` to or from 0, from one session to the next) is read whole or not at all;
//! * a step that changes anything else changes only fields the program ignores at that moment:
//!   the legs of a session with an unbound leg (nothing is forwarded, [`relay_common::forward`]
//!   checks both legs first), or any field of a record whose `vni` is 0 (a free slot matches no
//!   packet).
//!
//! So a leg that moves is first unbound (one byte), then rewritten while unbound, then bound
//! (one byte); a slot taken by a new session is first retired (`vni` 0), rewritten, then given
//! the new VNI. The cost is a few more system calls per change, which only binds, moves and
//! removals make; packets pay nothing. What remains is a reader that stalls for longer than two
//! system calls in the middle of one record (a vCPU descheduled mid-packet): it could then mix
//! a retired record with the next one. The consequence would be one packet, and its VNI and
//! source check still had to pass.

use relay_common::maps::Session;

/// The writes that take a record from `current` through `stages` (the last being the target),
/// skipping stages equal to where it already is.
fn through<T: Copy + PartialEq>(current: &T, stages: [T; 3]) -> Vec<T> {
    let mut at = *current;
    let mut steps = Vec::new();
    for next in stages {
        if next != at {
            steps.push(next);
            at = next;
        }
    }
    steps
}

/// The records to write, in order, to turn array record `current` into `target`, for records
/// the program ignores while their marker field is 0 (`cleared` returns a record with it 0):
/// the marker is cleared first (one field), the rest written while it is 0, the marker set last.
/// Port owners (`front`), TURN allocations (`live`) and WireGuard pairs (`id`) are written so.
pub fn marked_writes<T: Copy + PartialEq>(
    current: &T,
    target: &T,
    cleared: impl Fn(T) -> T,
) -> Vec<T> {
    if current == target {
        return Vec::new();
    }
    through(current, [cleared(*current), cleared(*target), *target])
}

/// The records to write, in order, to turn slot record `current` into `target` (the last one is
/// `target`; empty when they are equal).
pub fn slot_writes(current: &Session, target: &Session) -> Vec<Session> {
    if current.vni != target.vni {
        // Another session's record (or a free slot's): retire it, fill it while it matches
        // nothing, then name it.
        return marked_writes(current, target, |s| Session { vni: 0, ..s });
    }
    // The same session: unbind the bound legs that change (flags only: a mix has each leg's
    // old flag or 0, and a session forwards only with both legs bound)…
    let mut unbound = *current;
    for (leg, new) in unbound.legs.iter_mut().zip(&target.legs) {
        if leg.bound != 0
            && (leg.addr != new.addr || leg.port != new.port || leg.family != new.family)
        {
            leg.bound = 0;
        }
    }
    // …write the rest while those legs stay unbound (no mix forwards with them unbound; a leg
    // still bound keeps its address, so only its flag or the limits differ)…
    let mut filled = *target;
    for (leg, now) in filled.legs.iter_mut().zip(&unbound.legs) {
        if now.bound == 0 {
            leg.bound = 0;
        }
    }
    // …then bind them (flags only again).
    through(current, [unbound, filled, *target])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use relay_common::{
        checksum::ForwardDelta,
        forward::decide_v4,
        maps::{Leg, SessionLimits, SlotSession},
        verdict::Reason,
    };

    use super::*;

    /// What the program would do with a packet from `source` for `vni` given the slot entry
    /// `entry`: which leg it goes to (address and port) with which checksum delta, or why not.
    fn outcome(entry: &SlotSession, vni: u32, source: &Leg) -> Result<(Leg, ForwardDelta), Reason> {
        let record = &entry.session;
        if record.vni != vni || vni == 0 {
            return Err(Reason::DroppedUnknownVni);
        }
        let dir = decide_v4(record, source.v4_words(), source.port)?;
        Ok((record.legs[dir.to], entry.deltas[dir.to]))
    }

    /// Every byte-wise mix of `a` and `b` where the bytes that differ come from one or the
    /// other (all of them when few differ, else a sample including each prefix/suffix split).
    fn mixes(a: &SlotSession, b: &SlotSession, rng: &mut impl FnMut() -> u64) -> Vec<SlotSession> {
        let bytes = |s: &SlotSession| {
            // SAFETY: SlotSession is repr(C) plain data without padding (checked in
            // relay-common).
            unsafe {
                core::slice::from_raw_parts(
                    s as *const SlotSession as *const u8,
                    size_of::<SlotSession>(),
                )
            }
            .to_vec()
        };
        let (x, y) = (bytes(a), bytes(b));
        let differ: Vec<usize> = (0..x.len()).filter(|&i| x[i] != y[i]).collect();
        let build = |take_b: &dyn Fn(usize) -> bool| {
            let mut out = x.clone();
            for (n, &i) in differ.iter().enumerate() {
                if take_b(n) {
                    out[i] = y[i];
                }
            }
            // SAFETY: same size, any bytes are a valid SlotSession.
            unsafe { core::ptr::read_unaligned(out.as_ptr() as *const SlotSession) }
        };
        let mut out = Vec::new();
        if differ.len() <= 10 {
            for mask in 0u32..(1 << differ.len()) {
                out.push(build(&|n| mask & (1 << n) != 0));
            }
        } else {
            for cut in 0..=differ.len() {
                out.push(build(&|n| n < cut));
                out.push(build(&|n| n >= cut));
            }
            for _ in 0..256 {
                let mask = rng();
                out.push(build(&|n| mask & (1 << (n % 64)) != 0));
            }
        }
        out
    }

    fn leg(host: u8, port: u16, bound: bool) -> Leg {
        let mut l = Leg::bound_v4([198, 51, 100, host], port);
        l.bound = bound as u8;
        l
    }

    fn arb_leg() -> impl Strategy<Value = Leg> {
        (
            1u8..4,
            prop_oneof![Just(4000u16), Just(4001), Just(0x0fa0)],
            any::<bool>(),
        )
            .prop_map(|(h, p, b)| leg(h, p, b))
    }

    fn arb_session() -> impl Strategy<Value = Session> {
        (
            arb_leg(),
            arb_leg(),
            prop_oneof![Just(0u32), Just(0x0100_0007), Just(0x0200_0007)],
            0u32..3,
        )
            .prop_map(|(a, b, vni, pps)| Session {
                legs: [a, b],
                slot: 7,
                limits: SessionLimits {
                    packets_per_sec: pps,
                    kbytes_per_sec: 0,
                },
                vni,
            })
    }

    proptest! {
        /// Whatever mix of two consecutive writes a reader sees (of the whole slot entry, as
        /// written: the record and its checksum deltas), the packet goes where the record
        /// before or after the write would send it, or nowhere — and with the checksum delta
        /// of exactly the legs it crosses, so its checksums come out right.
        #[test]
        fn no_torn_read_sends_a_packet_where_neither_record_would(
            current in arb_session(),
            target in arb_session(),
            seed in any::<u64>(),
        ) {
            let steps = slot_writes(&current, &target);
            prop_assert_eq!(steps.last().copied().unwrap_or(current), target);
            let mut state = seed | 1;
            let mut rng = move || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let sources = [leg(1, 4000, true), leg(2, 4001, true), leg(3, 0x0fa0, true), leg(1, 4001, true)];
            let mut before = SlotSession::new(current);
            for after in steps.into_iter().map(SlotSession::new) {
                for mix in mixes(&before, &after, &mut rng) {
                    for vni in [0x0100_0007u32, 0x0200_0007] {
                        for source in &sources {
                            let got = outcome(&mix, vni, source);
                            if let Ok((to, delta)) = got {
                                let ok = [before, after].iter().any(|r| outcome(r, vni, source) == got);
                                prop_assert!(ok, "{:?} → {:?}: mix {:?} sends {:?}", before, after, mix, to);
                                let right = ForwardDelta::between(&source.v4_words(), source.port, &to.v4_words(), to.port);
                                prop_assert_eq!(delta, right, "mix {:?} forwards with another pair's delta", mix);
                            }
                        }
                    }
                }
                before = after;
            }
        }
    }

    #[test]
    fn a_first_bind_fills_then_binds_and_a_new_session_retires_the_old() {
        let a = leg(1, 4000, true);
        let b = leg(2, 4001, true);
        let half = Session {
            legs: [a, Leg::default()],
            slot: 7,
            vni: 0x0100_0007,
            ..Default::default()
        };
        let full = Session {
            legs: [a, b],
            ..half
        };
        let steps = slot_writes(&half, &full);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert_eq!(steps[0].legs[1].bound, 0);
        assert_eq!(steps[1], full);
        let next = Session {
            vni: 0x0200_0007,
            ..half
        };
        let steps = slot_writes(&full, &next);
        assert_eq!(
            steps.iter().map(|s| s.vni).collect::<Vec<_>>(),
            [0, 0, 0x0200_0007]
        );
        assert!(slot_writes(&full, &full).is_empty());
        let limited = Session {
            limits: SessionLimits {
                packets_per_sec: 5,
                kbytes_per_sec: 0,
            },
            ..full
        };
        assert_eq!(slot_writes(&full, &limited), [limited]);
    }
}
