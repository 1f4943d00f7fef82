//! Direct server return: rewrite the Ethernet addresses and send the frame back out.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, Backend};

use crate::{parse::ptr_at, stats::Verdict, LB_MAC};

/// Destination MAC := the backend's, source MAC := ours; everything after the
/// Ethernet header is left untouched.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, backend: &Backend) -> Result<Verdict, u32> {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Ok(Verdict::Pass(stats::PASS_TRUNCATED));
    };
    // SAFETY: a load-time constant in .rodata.
    let ours = unsafe { core::ptr::read_volatile(&LB_MAC) };
    // SAFETY: `eth` points at 12 bytes inside the frame.
    unsafe {
        let eth = &mut *eth;
        eth[..6].copy_from_slice(&backend.mac);
        eth[6..].copy_from_slice(&ours);
    }
    Ok(Verdict::Tx)
}
