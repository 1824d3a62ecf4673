//! The benchmark lab's XDP programs (see `relay_common::bench`). Built into their own object so
//! the relay's object carries nothing but the relay.
//!
//! * `bench_gen` restores the next template's headers into the frame and transmits it: run with
//!   BPF_PROG_TEST_RUN in live-frame mode, it is an in-kernel packet generator.
//! * `bench_sink` counts and drops UDP frames (what the relay sends back), passing ARP and
//!   neighbour discovery so the lab's stacks still resolve each other.
//! * `reflector` swaps MAC addresses and bounces every frame: the cheapest possible forwarder, the
//!   practical limit the relay is compared against.
#![no_std]
#![no_main]

mod packet;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use relay_common::{
    bench::{
        CURSOR_PACE, CURSOR_TEMPLATE, GeneratorConfig, MAX_TEMPLATES, SinkCounter, TEMPLATE_LEN,
        Template, next_template, pace,
    },
    wire::{ETH_HLEN, ETH_P_IPV4_RAW, ETH_P_IPV6_RAW, EthHdr, IPPROTO_UDP, Ipv4Hdr, Ipv6Hdr},
};

use crate::packet::{frame_len, ptr_at};

#[map(name = "bench_templates")]
static TEMPLATES: Array<Template> = Array::with_max_entries(MAX_TEMPLATES, 0);

#[map(name = "bench_gen_config")]
static GENERATOR_CONFIG: Array<GeneratorConfig> = Array::with_max_entries(1, 0);

#[map(name = "bench_gen_cursor")]
static GENERATOR_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(2, 0);

#[map(name = "bench_sink_counts")]
static SINK_COUNTS: PerCpuArray<SinkCounter> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let (count, share) = match GENERATOR_CONFIG.get(0) {
        Some(c) => (c.count, c.send_per_65536),
        None => (0, 0),
    };
    let Some(acc) = GENERATOR_CURSOR.get_ptr_mut(CURSOR_PACE) else {
        return XDP_DROP;
    };
    // SAFETY: a per-CPU slot, used by this CPU only.
    let (next, send) = pace(unsafe { *acc }, share);
    // SAFETY: as above.
    unsafe { *acc = next };
    if !send {
        return XDP_DROP;
    }
    let Some(cursor) = GENERATOR_CURSOR.get_ptr_mut(CURSOR_TEMPLATE) else {
        return XDP_DROP;
    };
    // SAFETY: a per-CPU slot, used by this CPU only.
    let index = unsafe { *cursor };
    let Some(template) = TEMPLATES.get(index) else {
        return XDP_DROP;
    };
    if count == 0 || frame_len(&ctx) < TEMPLATE_LEN {
        return XDP_DROP;
    }
    // SAFETY: as above.
    unsafe { *cursor = next_template(index, count) };
    // SAFETY: the helper bounds-checks against the frame; the source is a map value of exactly
    // TEMPLATE_LEN bytes, which the helper only reads.
    let stored = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            0,
            template.bytes.as_ptr() as *mut _,
            TEMPLATE_LEN as u32,
        )
    };
    if stored != 0 {
        return XDP_DROP;
    }
    XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let ether_type = unsafe { (*eth).ether_type };
    let udp = if ether_type == ETH_P_IPV4_RAW {
        // SAFETY: bounds-checked by ptr_at.
        ptr_at::<Ipv4Hdr>(&ctx, ETH_HLEN).is_some_and(|ip| unsafe { (*ip).protocol } == IPPROTO_UDP)
    } else if ether_type == ETH_P_IPV6_RAW {
        // SAFETY: bounds-checked by ptr_at.
        ptr_at::<Ipv6Hdr>(&ctx, ETH_HLEN).is_some_and(|ip| unsafe { (*ip).nexthdr } == IPPROTO_UDP)
    } else {
        false
    };
    if !udp {
        return XDP_PASS;
    }
    if let Some(counter) = SINK_COUNTS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, used by this CPU only.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += frame_len(&ctx) as u64;
        }
    }
    XDP_DROP
}

/// Swaps source and destination MAC and bounces the frame: the cheapest possible forwarder.
#[xdp]
pub fn reflector(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let eth = unsafe { &mut *eth };
    core::mem::swap(&mut eth.src, &mut eth.dst);
    XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
