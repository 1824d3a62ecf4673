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
/// Map: per-CPU u32s: at [`CURSOR_TEMPLATE`] the next template to send, at [`CURSOR_PACE`]
/// the pacing accumulator.
pub const GENERATOR_CURSOR: &str = "bench_gen_cursor";
/// Index of the template cursor in [`GENERATOR_CURSOR`].
pub const CURSOR_TEMPLATE: u32 = 0;
/// Index of the pacing accumulator in [`GENERATOR_CURSOR`].
pub const CURSOR_PACE: u32 = 1;
/// [`GeneratorConfig::send_per_65536`] that transmits on every run.
pub const PACE_ALL: u32 = 65_536;
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

/// What the generator sends.
///
/// Pacing happens in the kernel: each BPF_PROG_TEST_RUN call has a fixed cost of tens of
/// milliseconds (page-pool set-up and tear-down), so a paced load cannot be made of many small
/// calls. Instead every run adds `send_per_65536` to an accumulator and transmits only when it
/// passes 65536 (dropping the frame otherwise): the transmitted frames are spread evenly over the
/// runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Templates `0..count` are sent in turn; 0 sends nothing (XDP_DROP).
    pub count: u32,
    /// Runs that transmit, per 65536 runs ([`PACE_ALL`]: every run).
    pub send_per_65536: u32,
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

/// One pacing step: the accumulator after a run and whether the run transmits.
#[inline(always)]
pub fn pace(acc: u32, send_per_65536: u32) -> (u32, bool) {
    let next = acc + send_per_65536.min(PACE_ALL);
    if next >= PACE_ALL {
        (next - PACE_ALL, true)
    } else {
        (next, false)
    }
}

/// How many of `runs` runs transmit, starting from a zero accumulator.
pub fn paced_sends(runs: u64, send_per_65536: u32) -> u64 {
    runs * u64::from(send_per_65536.min(PACE_ALL)) / u64::from(PACE_ALL)
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
    fn pacing_spreads_sends_evenly() {
        for share in [0, 1, 6_553, 32_768, 65_535, PACE_ALL, u32::MAX] {
            let mut acc = 0;
            let mut sent = 0u64;
            let mut last_gap = 0;
            let mut gap = 0u64;
            for run in 1..=200_000u64 {
                let (next, send) = pace(acc, share);
                acc = next;
                gap += 1;
                if send {
                    sent += 1;
                    last_gap = last_gap.max(gap);
                    gap = 0;
                }
                if run % 50_000 == 0 {
                    assert_eq!(sent, paced_sends(run, share), "share {share}, run {run}");
                }
            }
            if share >= 6_553 {
                // Never more than one run beyond the ideal spacing.
                let ideal = 65_536u64.div_ceil(u64::from(share.min(PACE_ALL)));
                assert!(last_gap <= ideal, "share {share}: gap {last_gap} > {ideal}");
            }
        }
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
