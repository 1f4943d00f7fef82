//! XDP load balancer: VIP match -> weighted Maglev (+ flow table) -> MAC rewrite -> XDP_TX.
#![no_std]
#![no_main]

mod forward;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    stats::REASON_COUNT, Backend, Counter, FlowKey, FlowValue, Meta, TableEntry, Traffic, VipKey, VipMeta,
    DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE, TABLE_HALVES,
};

const MAX_VIPS: usize = DEFAULT_MAX_VIPS as usize;
const MAX_BACKENDS: usize = DEFAULT_MAX_BACKENDS as usize;
const TABLE_ENTRIES: usize = (DEFAULT_MAX_VIPS * TABLE_HALVES * DEFAULT_TABLE_SIZE) as usize;

// Capacities are the compiled defaults; the agent resizes them at load time.
#[btf_map]
static VIPS: HashMap<VipKey, VipMeta, MAX_VIPS> = HashMap::new();
#[btf_map]
static BACKENDS: Array<Backend, MAX_BACKENDS> = Array::new();
/// Memory-mappable: the agent writes tables with plain stores, not one syscall a slot.
#[btf_map]
static TABLES: Array<TableEntry, TABLE_ENTRIES, { BPF_F_MMAPABLE as usize }> = Array::new();
#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowValue, { DEFAULT_MAX_FLOWS as usize }> = LruHashMap::new();
#[btf_map]
static REASONS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();
#[btf_map]
static VIP_STATS: PerCpuArray<Traffic, MAX_VIPS> = PerCpuArray::new();
#[btf_map]
static BACKEND_STATS: PerCpuArray<Traffic, MAX_BACKENDS> = PerCpuArray::new();
/// What the maps were created with (written by the agent, never read here).
#[btf_map]
static META: Array<Meta, 1> = Array::new();

// Load-time knobs, written by the agent with `EbpfLoader::set_global`.
#[no_mangle]
static HASH_SEED: u32 = 0;
#[no_mangle]
static TABLE_SIZE: u32 = DEFAULT_TABLE_SIZE;
/// The MAC of the interface the program is attached to (source of forwarded frames).
#[no_mangle]
static LB_MAC: [u8; 6] = [0; 6];

/// The load balancer. One exit: every verdict and every drop is counted by reason.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match select::try_lb(&ctx) {
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
