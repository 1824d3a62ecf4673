//! Next hop of a rewritten packet through the kernel's routing and neighbour tables.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use core::mem::{size_of, zeroed};
use relay_common::{
    maps::{Leg, NextHopEntry, RelayConfig, nexthop_slot},
    verdict::Reason,
};

use crate::maps::{FIB_REQUEST, NEXTHOP_CACHE};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a rewritten frame leaves and the MAC addresses it carries.
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Source MAC (the egress interface's).
    pub src_mac: [u8; 6],
    /// Destination MAC (the gateway's or the leg's).
    pub dst_mac: [u8; 6],
    /// Whether `ifindex` is the interface the frame arrived on (XDP_TX, else XDP_REDIRECT).
    /// Read from the context once, here: LLVM may keep the address of a context field it
    /// reads twice on the stack, and the verifier rejects a read through a moved context
    /// pointer.
    pub back_out: bool,
}

/// Four address words as the raw `__be32` array the kernel expects.
#[inline(always)]
fn words_to_be32<const N: usize, const M: usize>(words: &[u16; N]) -> [u32; M] {
    let mut out = [0u32; M];
    let mut i = 0;
    while i < M {
        let lo = words[2 * i].to_ne_bytes();
        let hi = words[2 * i + 1].to_ne_bytes();
        out[i] = u32::from_ne_bytes([lo[0], lo[1], hi[0], hi[1]]);
        i += 1;
    }
    out
}

/// The next hop towards leg `to` for an IP packet of `ip_len` bytes, from the per-CPU cache when
/// a fresh entry covers it, else from a route lookup that refills the cache. `now` is jiffies.
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    cfg: &RelayConfig,
    to: &Leg,
    ip_len: u16,
    now: u64,
) -> Result<NextHop, Reason> {
    let ingress = ctx.ingress_ifindex() as u32;
    if cfg.nexthop_ttl_jiffies == 0 {
        return lookup(ctx, cfg, to, ip_len, ingress);
    }
    let Some(entry) = NEXTHOP_CACHE.get_ptr_mut(nexthop_slot(to, cfg.nexthop_cache_mask)) else {
        return lookup(ctx, cfg, to, ip_len, ingress);
    };
    // SAFETY: per-CPU value, no other writer on this CPU while we run.
    let entry = unsafe { &mut *entry };
    let fresh = entry.is_for(to, ingress, cfg.generation) && now < entry.expires;
    if fresh && ip_len <= entry.max_len {
        return Ok(NextHop {
            ifindex: entry.egress_ifindex,
            src_mac: entry.src_mac,
            dst_mac: entry.dst_mac,
            back_out: entry.egress_ifindex == ingress,
        });
    }
    let hop = lookup(ctx, cfg, to, ip_len, ingress)?;
    if fresh {
        // A longer packet passed the MTU check: widen the entry, keep its lifetime.
        entry.max_len = ip_len;
    } else {
        *entry = NextHopEntry {
            addr: to.addr,
            family: to.family,
            generation: cfg.generation,
            max_len: ip_len,
            ingress_ifindex: ingress,
            egress_ifindex: hop.ifindex,
            src_mac: hop.src_mac,
            dst_mac: hop.dst_mac,
            expires: now + cfg.nexthop_ttl_jiffies as u64,
        };
    }
    Ok(hop)
}

/// Looks up the route from the relay's own address to leg `to`, for an IP packet of
/// `ip_len` bytes (the MTU check), as the kernel would route it when forwarding. A leg at the
/// relay's own address (a hairpin: XDP cannot send a frame back into its own host), a missing
/// neighbour entry, disabled forwarding or any other failure is an `Err` reason:
/// the caller passes the untouched packet to the stack, which resolves the neighbour or
/// fragments, and the userspace forwarder relays it.
///
/// The hairpin check is here, not on every packet, because only a successful lookup is cached
/// and entries are tied to the configuration's generation (see `NextHopEntry::generation`): a
/// destination that passes it once stays a destination that is not the relay.
///
/// The 64-byte request lives in a per-CPU map rather than on the stack: every forwarding path
/// inlines this, and BPF gives a program 512 bytes of stack.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    cfg: &RelayConfig,
    to: &Leg,
    ip_len: u16,
    ingress: u32,
) -> Result<NextHop, Reason> {
    let hairpin = if to.is_v6() {
        to.is_v6_source(&cfg.addr_v6, to.port)
    } else {
        to.is_v4_source(cfg.addr_v4, to.port)
    };
    if hairpin {
        return Err(Reason::PassedHairpin);
    }
    let params = FIB_REQUEST.get_ptr_mut(0).ok_or(Reason::PassedFibFailed)?;
    // SAFETY: per-CPU value, no other user on this CPU while the program runs.
    let params = unsafe { &mut *params };
    // SAFETY: an all-zero bpf_fib_lookup is a valid (empty) request.
    *params = unsafe { zeroed() };
    params.l4_protocol = relay_common::wire::IPPROTO_UDP;
    params.sport = cfg.port;
    params.dport = to.port;
    params.__bindgen_anon_1.tot_len = ip_len;
    params.ifindex = ingress;
    if to.is_v6() {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words_to_be32::<8, 4>(&cfg.addr_v6);
        params.__bindgen_anon_4.ipv6_dst = words_to_be32::<8, 4>(&to.addr);
    } else {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = words_to_be32::<2, 1>(&cfg.addr_v4)[0];
        params.__bindgen_anon_4.ipv4_dst = words_to_be32::<2, 1>(&to.v4_words())[0];
    }
    // An ingress-perspective lookup: it may choose another egress interface (XDP_REDIRECT).
    // The kernel requires IP forwarding on the ingress interface for every bpf_fib_lookup,
    // output-perspective ones (BPF_FIB_LOOKUP_OUTPUT) included, so that flag would gain nothing.
    let flags = 0;
    // SAFETY: params is a valid, fully initialised struct of the size we pass.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            params,
            size_of::<FibParams>() as i32,
            flags,
        )
    };
    if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        Ok(NextHop {
            ifindex: params.ifindex,
            src_mac: params.smac,
            dst_mac: params.dmac,
            back_out: params.ifindex == ingress,
        })
    } else if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Err(Reason::PassedFibNoNeighbour)
    } else if ret == BPF_FIB_LKUP_RET_FWD_DISABLED as i64 {
        Err(Reason::PassedFibForwardingDisabled)
    } else {
        Err(Reason::PassedFibFailed)
    }
}
