//! The relay's XDP programs.
//!
//! * `relay_xdp` forwards data packets of bound sessions between their legs in the kernel and
//!   hands everything else to the stack (and so to the userspace daemon), counting every packet
//!   under one `relay_common::verdict::Reason`. It parses up to UDP ([`parse`]), then the front
//!   that owns the destination port decides: the session protocol ([`geneve`]), which forwards
//!   through the shared two-leg path ([`forward`]: route, rate limits, [`rewrite`]), or TURN
//!   ([`turn`]: ChannelData between a client and its peers), or stock WireGuard ([`wireguard`]:
//!   transport data between a pair's learnt legs), whose ports are in one map.
//! * `relay_turn` is TURN's part as a program of its own, which `relay_xdp` tail-called before
//!   TURN was folded into it (issue 26: the tail call and the second parse cost ~5 ns per TURN
//!   packet). It stays for upgrades: an earlier build's `relay_xdp`, attached until the new
//!   link replaces it, tail-calls it through `front_programs`, where each load installs its own.
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
mod turn;
mod wireguard;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use relay_common::{
    turn::{FRONT_TURN, FRONT_TURN_SERVER, RelayPort, port_owner_index},
    verdict::{Outcome, Reason},
    wireguard::FRONT_WIREGUARD,
};

use crate::{
    counters::{count_verdict, jiffies},
    maps::{CONFIG, PORT_OWNERS},
    packet::{frame_len, ptr_at},
};

/// A forwarded packet's XDP action and reason; `Err` carries the reason it was not forwarded.
type Verdict = Result<(u32, Reason), Reason>;

#[xdp]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let verdict = relay(&ctx);
    finish(&ctx, len, verdict)
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
    let port = packet.dest_port();
    if port == cfg.port {
        return geneve::relay(ctx, cfg, packet);
    }
    // Every other port the relay serves is in one map, with the front that owns it. A
    // WireGuard pair's port crosses like a session (the same forwarding path); TURN's paths
    // keep their working memory in a per-CPU scratch map, so they fit beside the others in
    // this program's 512 bytes of stack (400 used, `llvm-objdump -d`: the deepest `r10 -`).
    let owner = port_owner(port)?;
    match owner.front {
        FRONT_WIREGUARD => wireguard::relay(ctx, cfg, packet, owner),
        FRONT_TURN_SERVER => turn::from_client(ctx, cfg, packet),
        FRONT_TURN => turn::from_peer(ctx, cfg, packet, owner.slot),
        _ => Err(Reason::PassedNotOurPort),
    }
}

/// The owner of relay port `port` (raw), if it has one.
#[inline(always)]
fn port_owner(port: u16) -> Result<&'static RelayPort, Reason> {
    let owner = PORT_OWNERS
        .get_ptr(port_owner_index(port))
        .ok_or(Reason::PassedNotOurPort)?;
    // SAFETY: array values live as long as the map. Userspace changes an owner only while its
    // `front` is 0, and `front` alone (one byte) otherwise: a read sees one owner, or none.
    let owner = unsafe { &*owner };
    if owner.front == 0 {
        return Err(Reason::PassedNotOurPort);
    }
    Ok(owner)
}

/// TURN's ports as a program of its own: what an earlier build's `relay_xdp` tail-calls
/// during an upgrade (see the module documentation). Counts like [`relay_xdp`].
#[xdp]
pub fn relay_turn(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let verdict = turn_port(&ctx);
    finish(&ctx, len, verdict)
}

/// Parses again (a tail call passes nothing on) and lets TURN decide by the port's owner.
#[inline(always)]
fn turn_port(ctx: &XdpContext) -> Verdict {
    let cfg = CONFIG.get(0).ok_or(Reason::PassedNotConfigured)?;
    let packet = parse::udp_to_relay(ctx, cfg)?;
    let owner = port_owner(packet.dest_port())?;
    match owner.front {
        FRONT_TURN_SERVER => turn::from_client(ctx, cfg, packet),
        FRONT_TURN => turn::from_peer(ctx, cfg, packet, owner.slot),
        _ => Err(Reason::PassedNotOurPort),
    }
}

/// The XDP action of a verdict on a frame that arrived with `len` bytes, counted (and, when
/// passed, noted in the rate-limited log).
#[inline(always)]
fn finish(ctx: &XdpContext, len: usize, verdict: Verdict) -> u32 {
    let (action, reason) = match verdict {
        Ok(forwarded) => forwarded,
        Err(reason) => match reason.outcome() {
            Outcome::Dropped => (XDP_DROP, reason),
            _ => (XDP_PASS, reason),
        },
    };
    count_verdict(reason, len);
    if action == XDP_PASS {
        log::note(ctx, reason);
    }
    action
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
