//! Counters and the single exit: every verdict is counted by reason.

use aya_ebpf::{bindings::xdp_action, btf_maps::PerCpuArray, programs::XdpContext};
use lb_common::{stats::Reason, Counter, Traffic};

use crate::{maps::REASONS, parse::frame_len};

/// What happens to a packet that is not dropped.
pub enum Verdict {
    /// Sent back out of the interface to a backend.
    Tx,
    /// Handed to the kernel, with the reason counted.
    Pass(Reason),
}

#[inline(always)]
fn add(index: Reason, bytes: u64) {
    if let Some(c) = REASONS.get_ptr_mut(index.index()) {
        // SAFETY: a per-CPU value, and XDP runs with preemption disabled.
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
        // SAFETY: a per-CPU value, and XDP runs with preemption disabled.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += syn as u64;
        }
    }
}

/// Counts a note (an event that is not a verdict).
#[inline(always)]
pub fn note(reason: Reason) {
    add(reason, 0);
}

#[inline(always)]
pub fn verdict(ctx: &XdpContext, v: Verdict) -> u32 {
    match v {
        Verdict::Tx => {
            add(Reason::TX, frame_len(ctx) as u64);
            xdp_action::XDP_TX
        }
        Verdict::Pass(reason) => {
            add(reason, frame_len(ctx) as u64);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
pub fn drop(ctx: &XdpContext, reason: Reason) -> u32 {
    if reason == Reason::DROP_TABLE {
        // Should never happen: worth a line in the agent's log (debug level), never per
        // packet in normal operation.
        aya_log_ebpf::debug!(ctx, "drop_table: a VIP's table entry could not be read");
    }
    add(reason, frame_len(ctx) as u64);
    xdp_action::XDP_DROP
}

// `Counter` is the REASONS value type; named here so a layout change fails to build.
const _: usize = core::mem::size_of::<Counter>();
