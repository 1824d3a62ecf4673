//! The relay's XDP programs.
//!
//! * `relay_xdp` forwards data packets of bound sessions between their legs in the kernel and
//!   hands everything else to the stack (and so to the userspace daemon), counting every packet
//!   under one `relay_common::verdict::Reason`. It parses up to UDP ([`parse`]), then the front
//!   that owns the destination port decides: today the session protocol ([`geneve`]), which
//!   forwards through the shared two-leg path ([`forward`]: route, rate limits, [`rewrite`]).
//! * `clock_probe` reports the kernel's jiffies to userspace (timestamps in the maps are jiffies).
//! * `xdp_pass` passes everything: attached to the peer of a veth so XDP_TX/REDIRECT frames
//!   towards it are not dropped (a veth requirement, see docs/operations.md).
#![no_std]
#![no_main]

mod counters;
mod fib;
mod forward;
mod geneve;
mod log;
mod maps;
mod packet;
mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use relay_common::verdict::{Outcome, Reason};

use crate::{
    counters::{count_verdict, jiffies},
    maps::CONFIG,
    packet::{frame_len, ptr_at},
};

/// A forwarded packet's XDP action and reason; `Err` carries the reason it was not forwarded.
type Verdict = Result<(u32, Reason), Reason>;

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let (action, reason) = match relay(&ctx) {
        Ok(forwarded) => forwarded,
        Err(reason) => match reason.outcome() {
            Outcome::Dropped => (XDP_DROP, reason),
            _ => (XDP_PASS, reason),
        },
    };
    count_verdict(reason, len);
    if action == XDP_PASS {
        log::note(&ctx, reason);
    }
    action
}

/// Parse up to UDP, dispatch by destination port to the front that owns the port, which
/// forwards the packet or says why not; [`relay_xdp`] counts either way.
#[inline(always)]
fn relay(ctx: &XdpContext) -> Verdict {
    let cfg = CONFIG.get(0).ok_or(Reason::PassedNotConfigured)?;
    if !cfg.is_enabled() {
        return Err(Reason::PassedNotConfigured);
    }
    let packet = parse::udp_to_relay(ctx, cfg)?;
    if packet.dest_port() == cfg.port {
        geneve::relay(ctx, cfg, packet)
    } else {
        Err(Reason::PassedNotOurPort)
    }
}

/// Writes the kernel's jiffies into the first 8 bytes of the frame (native byte order). Userspace
/// runs it with BPF_PROG_TEST_RUN to convert the jiffies timestamps in the maps.
#[xdp]
pub fn clock_probe(ctx: XdpContext) -> u32 {
    if let Some(slot) = ptr_at::<u64>(&ctx, 0) {
        // SAFETY: bounds-checked by ptr_at; unaligned write of plain bytes.
        unsafe { slot.write_unaligned(jiffies()) };
    }
    XDP_PASS
}

/// Passes every frame. Attached to veth peers so frames sent to them with XDP_TX are received.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
