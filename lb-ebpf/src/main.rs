//! XDP load balancer: VIP match -> weighted Maglev (+ flow tables) -> MAC rewrite -> XDP_TX.
//!
//! Modules by concern: `parse` (headers), `vip` (what a VIP address serves, drops or
//! passes), `icmp` (echo, neighbour discovery, path MTU), `select` (flow tables ->
//! Maglev -> backend), `forward` (MAC rewrite), `stats` (counters, the one exit), `maps`.
#![no_std]
#![no_main]

mod forward;
mod icmp;
mod maps;
mod parse;
mod select;
mod stats;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The load balancer. One exit: every verdict and every drop is counted by reason.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match vip::try_lb(&ctx) {
        Ok(verdict) => stats::verdict(&ctx, verdict),
        Err(reason) => stats::drop(&ctx, reason),
    }
}

/// Pass-through program for the peer of a veth that receives XDP_TX frames
/// (native XDP on veth delivers nothing to a peer without a program).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
