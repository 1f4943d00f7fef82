//! Counters and the single exit: every verdict is counted by reason.

use aya_ebpf::{bindings::xdp_action, btf_maps::PerCpuArray, programs::XdpContext};
use lb_common::{stats, Counter, Traffic};

use crate::REASONS;

/// What happens to a packet that is not dropped.
pub enum Verdict {
    /// Sent back out of the interface to a backend.
    Tx,
    /// Handed to the kernel, with the reason counted.
    Pass(u32),
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[inline(always)]
pub fn add<const N: usize>(map: &PerCpuArray<Counter, N>, index: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, and XDP runs with preemption disabled.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Counts a packet of a VIP or backend (and a new flow for a TCP SYN).
#[inline(always)]
pub fn traffic<const N: usize>(map: &PerCpuArray<Traffic, N>, index: u32, bytes: u64, syn: bool) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU value, and XDP runs with preemption disabled.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += syn as u64;
        }
    }
}

/// Counts a note (an event that is not a verdict).
#[inline(always)]
pub fn note(reason: u32) {
    add(&REASONS, reason, 0);
}

#[inline(always)]
pub fn verdict(ctx: &XdpContext, v: Verdict) -> u32 {
    match v {
        Verdict::Tx => {
            add(&REASONS, stats::TX, frame_len(ctx));
            xdp_action::XDP_TX
        }
        Verdict::Pass(reason) => {
            add(&REASONS, reason, frame_len(ctx));
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
pub fn drop(ctx: &XdpContext, reason: u32) -> u32 {
    add(&REASONS, reason, frame_len(ctx));
    xdp_action::XDP_DROP
}
