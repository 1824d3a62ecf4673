//! Bounds-checked access to packet memory: the only place that turns offsets into pointers.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

/// A pointer to a `T` at `offset` bytes into the frame, or `None` when the frame is too short.
/// The explicit `data + offset + size <= data_end` comparison is what the verifier needs to see.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}
