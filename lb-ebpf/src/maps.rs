//! The maps and the load-time globals. Capacities here are the compiled defaults; the
//! agent sets the real sizes at load time.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    new_flow_slots, stats::REASON_COUNT, AddrKey, Backend, Counter, FlowKey, FlowValue, Meta, NewPin, SrcRangeKey,
    TableEntry, Traffic, VipKey, VipMeta, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS,
    MAX_SRC_RANGES, TABLE_CLASSES, VIP_FILTER_WORDS,
};

const MAX_VIPS: usize = DEFAULT_MAX_VIPS as usize;
const MAX_BACKENDS: usize = DEFAULT_MAX_BACKENDS as usize;
/// A VIP's table map: its two halves of `TABLE_CLASSES[c]` slots each.
type TableMap<const ENTRIES: usize> = Array<TableEntry, ENTRIES, { BPF_F_MMAPABLE as usize }>;
const PLACES: usize = 2 * MAX_VIPS;
/// Per-CPU LRU lists: an insert takes no lock shared with the other CPUs.
const LRU_FLAGS: usize = BPF_F_NO_COMMON_LRU as usize;

/// (address, port, protocol) -> the VIP's id, flags and live table half.
#[btf_map]
pub static VIPS: HashMap<VipKey, VipMeta, MAX_VIPS> = HashMap::new();
/// Every VIP address (any port): what is closed on it is dropped, not passed.
#[btf_map]
pub static VIP_ADDRS: HashMap<AddrKey, u32, MAX_VIPS> = HashMap::new();
/// A bit per hashed VIP address (`hash::filter_bit`): a clear bit means "no VIP address"
/// after one array read.
#[btf_map]
pub static VIP_FILTER: Array<u64, { VIP_FILTER_WORDS as usize }> = Array::new();
/// Allowed client ranges of the VIPs that have them, keyed by VIP id then address.
#[btf_map]
pub static SRC_RANGES: LpmTrie<SrcRangeKey, u32, { MAX_SRC_RANGES as usize }, { BPF_F_NO_PREALLOC as usize }> =
    LpmTrie::new();
#[btf_map]
pub static BACKENDS: Array<Backend, MAX_BACKENDS> = Array::new();
/// Each VIP's table map (the two halves of its Maglev table), at `VipMeta::table` in the
/// array of its size: created with the VIP, sized from its backends, so VIPs that do not
/// exist cost nothing. Memory-mappable: the agent writes tables with plain stores.
#[btf_map]
pub static TABLES_256: ArrayOfMaps<TableMap<{ 2 * TABLE_CLASSES[0] as usize }>, PLACES> = ArrayOfMaps::new();
#[btf_map]
pub static TABLES_1K: ArrayOfMaps<TableMap<{ 2 * TABLE_CLASSES[1] as usize }>, PLACES> = ArrayOfMaps::new();
#[btf_map]
pub static TABLES_8K: ArrayOfMaps<TableMap<{ 2 * TABLE_CLASSES[2] as usize }>, PLACES> = ArrayOfMaps::new();
#[btf_map]
pub static TABLES_64K: ArrayOfMaps<TableMap<{ 2 * TABLE_CLASSES[3] as usize }>, PLACES> = ArrayOfMaps::new();
/// Confirmed flows: pinned once a flow sent a second packet.
#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue, { DEFAULT_MAX_FLOWS as usize }, LRU_FLAGS> = LruHashMap::new();
/// First packets (SYNs, a UDP flow's first datagram), direct-mapped: writing one is a
/// store into its slot, with no lock, allocation or eviction, and a flood of one-packet
/// flows only churns this table, never the confirmed pins of other VIPs. Mmapable, so
/// the agent reads it without a syscall per slot.
#[btf_map]
pub static FLOWS_NEW: Array<NewPin, { new_flow_slots(DEFAULT_MAX_FLOWS) as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();
#[btf_map]
pub static REASONS: PerCpuArray<Counter, { REASON_COUNT as usize }> = PerCpuArray::new();
#[btf_map]
pub static VIP_STATS: PerCpuArray<Traffic, MAX_VIPS> = PerCpuArray::new();
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Traffic, MAX_BACKENDS> = PerCpuArray::new();
/// What the maps were created with (written by the agent, never read here).
#[btf_map]
pub static META: Array<Meta, 1> = Array::new();

// Load-time knobs, written by the agent with `EbpfLoader::override_global`.
#[no_mangle]
static HASH_SEED: u32 = 0;
/// The MAC of the interface the program is attached to (source of forwarded frames).
#[no_mangle]
static LB_MAC: [u8; 6] = [0; 6];
/// A flow silent for longer than this is dead: its pin is not followed (0 = no limit).
#[no_mangle]
static FLOW_IDLE_NS: u64 = 0;
/// `FLOWS_NEW` slots - 1.
#[no_mangle]
static NEW_MASK: u32 = new_flow_slots(DEFAULT_MAX_FLOWS) - 1;

#[inline(always)]
pub fn new_mask() -> u32 {
    // SAFETY: a load-time constant in .rodata.
    unsafe { core::ptr::read_volatile(&NEW_MASK) }
}

#[inline(always)]
pub fn flow_idle_ns() -> u64 {
    // SAFETY: a load-time constant in .rodata.
    unsafe { core::ptr::read_volatile(&FLOW_IDLE_NS) }
}

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: a load-time constant in .rodata; volatile so it is not folded at build time.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
pub fn lb_mac() -> [u8; 6] {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&LB_MAC) }
}
