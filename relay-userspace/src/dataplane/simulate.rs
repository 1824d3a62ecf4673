//! Running a frame through a loaded program with BPF_PROG_TEST_RUN: nothing is sent, but the
//! program sees the live maps and updates their counters exactly as for a real packet. Tests use
//! it to check verdicts and bytes; `relay explain` uses it to answer "why was this dropped?".

use std::{fmt, time::Duration};

use anyhow::{Context, Result, bail};
use aya::programs::{TestRun, TestRunOptions, Xdp};

/// Room for a frame to grow (an IPv4 → IPv6 rewrite adds 20 bytes).
const GROWTH_ROOM: usize = 64;
/// BPF_PROG_TEST_RUN rejects XDP input shorter than an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// An XDP return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    /// Program error.
    Aborted,
    /// Dropped.
    Drop,
    /// Handed to the network stack.
    Pass,
    /// Bounced out of the ingress interface.
    Tx,
    /// Sent out of another interface.
    Redirect,
    /// Anything else.
    Unknown(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            other => XdpAction::Unknown(other),
        }
    }
}

impl fmt::Display for XdpAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XdpAction::Aborted => f.write_str("XDP_ABORTED"),
            XdpAction::Drop => f.write_str("XDP_DROP"),
            XdpAction::Pass => f.write_str("XDP_PASS"),
            XdpAction::Tx => f.write_str("XDP_TX"),
            XdpAction::Redirect => f.write_str("XDP_REDIRECT"),
            XdpAction::Unknown(v) => write!(f, "unknown action {v}"),
        }
    }
}

/// What the program did with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The program's return code.
    pub action: XdpAction,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// The `struct xdp_md` context BPF_PROG_TEST_RUN accepts.
#[repr(C)]
#[derive(Default)]
pub struct XdpMd {
    /// Offset of the frame's start.
    pub data: u32,
    /// Offset of the frame's end.
    pub data_end: u32,
    /// Offset of the metadata area.
    pub data_meta: u32,
    /// Interface the frame arrives on.
    pub ingress_ifindex: u32,
    /// Receive queue it arrives on.
    pub rx_queue_index: u32,
    /// Interface it leaves by (redirects).
    pub egress_ifindex: u32,
}

impl XdpMd {
    /// The context as BPF_PROG_TEST_RUN takes it.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) struct of six u32s, no padding.
        unsafe {
            std::slice::from_raw_parts(
                self as *const XdpMd as *const u8,
                std::mem::size_of::<XdpMd>(),
            )
        }
    }
}

/// Runs `frame` once through `program`, as if it arrived on interface `ingress_ifindex` of the
/// calling thread's network namespace (`None`: the namespace's loopback). That interface must
/// have XDP enabled (a program attached) for the kernel to accept it as ingress.
pub fn run_frame(program: &Xdp, frame: &[u8], ingress_ifindex: Option<u32>) -> Result<RunOutcome> {
    Ok(run_frame_timed(program, frame, ingress_ifindex)?.0)
}

/// [`run_frame`], also returning the program's run time as measured by the kernel.
pub fn run_frame_timed(
    program: &Xdp,
    frame: &[u8],
    ingress_ifindex: Option<u32>,
) -> Result<(RunOutcome, Duration)> {
    if frame.len() < MIN_FRAME_LEN {
        bail!(
            "frame of {} bytes is shorter than an Ethernet header ({MIN_FRAME_LEN})",
            frame.len()
        );
    }
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ingress_ifindex.unwrap_or(0),
        ..Default::default()
    };
    let mut out = vec![0u8; frame.len() + GROWTH_ROOM];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx.as_bytes()),
            repeat: 1,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    out.truncate(result.data_size_out as usize);
    Ok((
        RunOutcome {
            action: result.return_value.into(),
            frame: out,
        },
        result.duration,
    ))
}
