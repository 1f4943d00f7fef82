//! Direct server return: rewrite the Ethernet addresses and send the frame back out.

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{stats::Reason, Backend};
use network_types::eth::EthHdr;

use crate::{maps::lb_mac, parse::ptr_at, stats::note, stats::Verdict};

/// Destination MAC := the backend's, source MAC := ours; everything after the
/// Ethernet addresses is left untouched.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, backend: &Backend, ipv4_options: bool) -> Result<Verdict, Reason> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Ok(Verdict::Pass(Reason::PASS_TRUNCATED));
    };
    let ours = lb_mac();
    // SAFETY: `eth` points at the checked 14-byte Ethernet header.
    unsafe {
        (*eth).dst_addr = backend.mac;
        (*eth).src_addr = ours;
    }
    const _: () = assert!(offset_of!(EthHdr, dst_addr) == 0 && offset_of!(EthHdr, src_addr) == 6);
    if ipv4_options {
        note(Reason::NOTE_IPV4_OPTIONS);
    }
    Ok(Verdict::Tx)
}
