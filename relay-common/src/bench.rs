//! The benchmark lab's own XDP programs (`lab-xdp` object, never loaded by the relay): an
//! in-kernel load generator, a counting sink, and the MAC-swap reflector the relay is compared
//! against. Their maps are defined here so the programs and the harness agree on them.
//!
//! The generator runs under BPF_PROG_TEST_RUN in live-frame mode: the kernel hands it copies of
//! one input frame and transmits what it returns with XDP_TX. The relay rewrites those frames in
//! place and the pages come back to the generator's pool rewritten, so the generator restores the
//! headers of every frame from a template before sending it; it cycles through the templates,
//! one per session and direction.

/// Bytes of each frame the generator restores: Ethernet (14), IPv6 (40), UDP (8) and Geneve (8)
/// headers, rounded up. Every template frame must be at least this long.
pub const TEMPLATE_LEN: usize = 72;

/// How many templates the generator can cycle through.
pub const MAX_TEMPLATES: u32 = 8192;

/// Map: index → [`Template`].
pub const TEMPLATES: &str = "bench_templates";
/// Map: index 0 → [`GeneratorConfig`].
pub const GENERATOR_CONFIG: &str = "bench_gen_config";
/// Map: per-CPU index 0 → the next template to send (u32).
pub const GENERATOR_CURSOR: &str = "bench_gen_cursor";
/// Map: per-CPU index 0 → [`SinkCounter`].
pub const SINK_COUNTS: &str = "bench_sink_counts";

/// Program: restores a template and transmits (XDP_TX).
pub const PROGRAM_GENERATOR: &str = "bench_gen";
/// Program: counts and drops UDP, passes everything else.
pub const PROGRAM_SINK: &str = "bench_sink";
/// Program: swaps MAC addresses and returns XDP_TX.
pub const PROGRAM_REFLECTOR: &str = "reflector";

/// The first [`TEMPLATE_LEN`] bytes of one frame to send.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// Frame bytes, from the Ethernet header on.
    pub bytes: [u8; TEMPLATE_LEN],
}

/// How many templates are in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Templates `0..count` are sent in turn; 0 sends nothing (XDP_DROP).
    pub count: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// What the sink received.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkCounter {
    /// UDP frames.
    pub packets: u64,
    /// Their bytes, Ethernet header included.
    pub bytes: u64,
}

/// The template after `current` when `count` are in use (the generator's cursor step).
#[inline(always)]
pub fn next_template(current: u32, count: u32) -> u32 {
    if current + 1 >= count { 0 } else { current + 1 }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Template {}
    unsafe impl aya::Pod for GeneratorConfig {}
    unsafe impl aya::Pod for SinkCounter {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_cycles_through_every_template() {
        let mut seen = [0u32; 5];
        let mut i = 0;
        for _ in 0..50 {
            seen[i as usize] += 1;
            i = next_template(i, 5);
        }
        assert_eq!(seen, [10; 5]);
        assert_eq!(next_template(0, 1), 0);
        // A cursor left beyond a shrunk count restarts at 0.
        assert_eq!(next_template(7, 3), 0);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<Template>(), TEMPLATE_LEN);
        assert_eq!(core::mem::size_of::<GeneratorConfig>(), 8);
        assert_eq!(core::mem::size_of::<SinkCounter>(), 16);
        // IPv6 headers fit.
        const { assert!(TEMPLATE_LEN >= 14 + 40 + 8 + 8) };
    }
}
