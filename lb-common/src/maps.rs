//! Map keys and values, map names and default capacities.

/// Bumped whenever a map layout or the meaning of a field changes. The agent refuses
/// to adopt pinned maps written under another version.
pub const ABI_VERSION: u32 = 4;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Map names as `bpftool map list` shows them (the kernel keeps 15 characters).
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_BACKENDS: &str = "BACKENDS";
/// The arrays of table maps, one per table size (`TABLE_CLASSES`, in order).
pub const MAP_TABLES: [&str; 4] = ["TABLES_256", "TABLES_1K", "TABLES_8K", "TABLES_64K"];
pub const MAP_FLOWS: &str = "FLOWS";
pub const MAP_REASONS: &str = "REASONS";
pub const MAP_VIP_STATS: &str = "VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_META: &str = "META";
pub const MAP_FLOWS_NEW: &str = "FLOWS_NEW";
pub const MAP_VIP_ADDRS: &str = "VIP_ADDRS";
pub const MAP_VIP_FILTER: &str = "VIP_FILTER";
pub const MAP_SRC_RANGES: &str = "SRC_RANGES";
pub const ALL_MAPS: [&str; 15] = [
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_TABLES[0],
    MAP_TABLES[1],
    MAP_TABLES[2],
    MAP_TABLES[3],
    MAP_FLOWS,
    MAP_REASONS,
    MAP_VIP_STATS,
    MAP_BACKEND_STATS,
    MAP_META,
    MAP_FLOWS_NEW,
    MAP_VIP_ADDRS,
    MAP_VIP_FILTER,
    MAP_SRC_RANGES,
];

/// Capacities compiled into the object; the agent may resize them at load time
/// (`--max-vips`, `--max-backends`, `--max-flows`, `--table-size`). VIPs and backends
/// cost little until they exist: a VIP's Maglev tables are created with it (see
/// `table_size_for`), so `--max-vips` reserves only the `VIPS` hash and counters.
pub const DEFAULT_MAX_VIPS: u32 = 4096;
pub const DEFAULT_MAX_BACKENDS: u32 = 65_536;
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// `FLOWS_NEW` slots: the power of two at or above `--max-flows` (at least 1,024).
pub const fn new_flow_slots(max_flows: u32) -> u32 {
    let n = max_flows.next_power_of_two();
    if n < 1024 {
        1024
    } else {
        n
    }
}
/// Source ranges (CIDRs) over all VIPs.
pub const MAX_SRC_RANGES: u32 = 16_384;
/// 64-bit words of `VIP_FILTER`: a one-hash bit filter over the VIP addresses
/// (65,536 bits), read before any hash-map lookup so that packets to other addresses
/// cost one array read.
pub const VIP_FILTER_WORDS: u32 = 1024;
/// The table sizes a VIP can get: powers of two, each a multiple of the one before, so
/// that a table grows without moving established flows (see `table_size_for`). One
/// array of maps per size: the kernel then knows each table map's size and looks it
/// up inline (maps of different sizes in one array of maps cost a helper call, about
/// 8 ns a packet). 100 slots a backend give 1 % weight accuracy: up to 2, 10, 81 and
/// 655 backends.
pub const TABLE_CLASSES: [u32; 4] = [256, 1024, 8192, 65_536];
/// The largest table a VIP gets by default (`--table-size`, one of `TABLE_CLASSES`).
pub const DEFAULT_TABLE_SIZE: u32 = 65_536;
pub const MIN_TABLE_SIZE: u32 = TABLE_CLASSES[0];
/// Each VIP owns two tables ("halves"): the idle one is rewritten, then the VIP flips.
pub const TABLE_HALVES: u32 = 2;

/// The class (index in `TABLE_CLASSES`) of a table size.
pub const fn table_class(size: u32) -> Option<usize> {
    let mut i = 0;
    while i < TABLE_CLASSES.len() {
        if TABLE_CLASSES[i] == size {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The table size for a VIP with `backends` backends: the smallest of `TABLE_CLASSES`
/// with 100 slots a backend (1 % weight accuracy), at most `max`. A VIP's table grows
/// with its backends and never shrinks while it lives: a slot of the bigger table holds
/// the flows of exactly one slot of the smaller (`hash & mask`), so established flows
/// keep their backend across the growth (see `TableEntry`).
pub const fn table_size_for(backends: u32, max: u32) -> u32 {
    let want = backends.saturating_mul(100);
    let mut i = 0;
    while i < TABLE_CLASSES.len() {
        if TABLE_CLASSES[i] >= want || TABLE_CLASSES[i] >= max {
            return TABLE_CLASSES[i];
        }
        i += 1;
    }
    TABLE_CLASSES[TABLE_CLASSES.len() - 1]
}

/// `VIPS` key: the destination a packet must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// IPv4 in the first four bytes (rest zero), or IPv6; network order.
    pub addr: [u8; 16],
    pub port_be: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}

/// The VIP has no backend with weight: packets are dropped (`DropNoBackend`).
pub const VIP_F_NO_BACKENDS: u32 = 1;
/// Client-address affinity: all flows of a client address go to one backend while its
/// pin is younger than `affinity_timeout_s` (Kubernetes' `sessionAffinity: ClientIP`).
pub const VIP_F_AFFINITY: u32 = 2;

/// The VIP has source ranges: clients outside them are dropped (`SRC_RANGES`).
pub const VIP_F_SOURCE_RANGES: u32 = 4;

/// `VIPS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index of this VIP's counters in `VIP_STATS`; what its backends and pins name.
    pub id: u32,
    pub flags: u32,
    /// Which of the two halves of its table map is live (0 or 1).
    pub half: u32,
    /// With `VIP_F_AFFINITY`: how long a client's pin lives without traffic.
    pub affinity_timeout_s: u32,
    /// Where its table map is in the `TABLES_*` array of its size: `2 * id` or
    /// `2 * id + 1` (a grown table goes into the other place, and this one update
    /// switches map, size and half together).
    pub table: u32,
    /// Its table size - 1 (a power of two - 1): the slot of a hash is `hash & mask`.
    pub mask: u32,
}

impl VipMeta {
    pub const fn table_size(&self) -> u32 {
        self.mask.wrapping_add(1)
    }
}

/// The entry holds a backend (an id is never reused while the entry is live).
pub const BACKEND_F_ACTIVE: u8 = 1;
/// Informational: the backend is draining (weight 0, old flows continue).
pub const BACKEND_F_DRAINING: u8 = 2;
/// The entry is in use (set with or without `ACTIVE`; a backend whose MAC is not known
/// yet is present but not active). The kernel ignores it.
pub const BACKEND_F_PRESENT: u8 = 4;

/// `BACKENDS` value, indexed by backend id. The kernel reads `mac`, `flags` and
/// `vip_id`; the rest is the agent's record, kept here so that `status` works from the
/// pinned maps alone and a restarted agent reads ramp and drain state back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Destination MAC written into forwarded frames.
    pub mac: [u8; 6],
    pub flags: u8,
    pub family: u8,
    /// The VIP this backend serves: a flow-table hit for another VIP is ignored.
    pub vip_id: u32,
    /// Effective weight in the live table.
    pub weight: u32,
    /// Wanted weight once the ramp is done.
    pub target_weight: u32,
    /// Ramp progress, percent (100 = done).
    pub progress: u32,
    /// Unix ms: the last ramp step, or (draining) when the drain started.
    pub since_unix_ms: u64,
}

/// Marks a table slot with no backend (only in tables of VIPs without backends).
pub const NO_BACKEND: u32 = u32::MAX;
/// `TableEntry::prev` of a slot in transition that has no previous backend to send
/// unpinned flows to (it was removed, or the slot went back to it). Never an id.
pub const NO_PREV: u32 = u32::MAX - 1;

/// `TABLES` value. `backend == prev`: the slot is stable, every flow hashing here
/// goes to `backend` and the flow table is not consulted. `backend != prev`: the slot
/// changed since flows were last known to be settled; established flows that are not
/// in the flow table belong to `prev`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableEntry {
    pub backend: u32,
    pub prev: u32,
}

/// `FLOWS` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub vip_id: u32,
    pub src_port_be: u16,
    pub _pad: u16,
}

/// The client sent FIN or RST: the flow is ending (it still keeps its backend).
pub const FLOW_F_CLOSING: u32 = 1;
/// A client pin (affinity) that replaced one whose backend is still active: the
/// client's connections from before carry on to `moved_from`, each through a pin of its
/// own, and its new connections get a pin of their own too.
pub const FLOW_F_MOVED: u32 = 2;

/// `FLOWS` / `FLOWS_NEW` value. For an affinity VIP's client pin the key's port is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend: u32,
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// With `FLOW_F_MOVED`: the backend the client was pinned to before.
    pub moved_from: u32,
    pub _pad: u32,
}

/// `FLOWS_NEW` value: a flow's first packet, written into both slots `hash::new_pin_slots`
/// gives its key (stores only, no read); found in either. A pin is lost before its
/// flow's next packet only if other first packets overwrite both slots meanwhile. `check` (`hash::new_pin_check`) lets a reader tell a whole entry from one torn
/// by two CPUs writing the slot at once; an empty slot is all zeros.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewPin {
    pub key: FlowKey,
    pub value: FlowValue,
    pub check: u32,
    pub _pad: u32,
}

/// `VIP_ADDRS` key: an address that is some VIP's (any port, any protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    /// As in `VipKey::addr`.
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `SRC_RANGES` key data (after the LPM trie's prefix length): the VIP id (big-endian,
/// so it is matched first, in full) and the client address as in `VipKey::addr`. The
/// prefix length of an entry is 32 + the CIDR's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SrcRangeKey {
    pub vip_id_be: [u8; 4],
    pub addr: [u8; 16],
}

/// The LPM prefix length that matches a VIP id and a whole address.
pub const SRC_RANGE_FULL_PREFIX: u32 = 32 + 128;

/// Per-CPU packet and byte counter (`REASONS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-CPU traffic of a VIP or backend (`VIP_STATS`, `BACKEND_STATS`). `new_flows`
/// counts TCP SYNs (UDP has no flow start to count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// `META` value (one entry): what the maps were created with. A restarted agent adopts
/// pinned maps only if all of it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub abi_version: u32,
    /// The largest table a VIP may get.
    pub table_size: u32,
    pub hash_seed: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
}

/// Index of the entry for `slot` in a VIP's table map (its two halves, one after the other).
#[inline(always)]
pub fn table_index(half: u32, mask: u32, slot: u32) -> u32 {
    (half & 1) * (mask + 1) + (slot & mask)
}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(table_size_for(0, DEFAULT_TABLE_SIZE) == 256 && table_size_for(2, DEFAULT_TABLE_SIZE) == 256);
const _: () = assert!(table_size_for(3, DEFAULT_TABLE_SIZE) == 1024 && table_size_for(10, DEFAULT_TABLE_SIZE) == 1024);
const _: () =
    assert!(table_size_for(11, DEFAULT_TABLE_SIZE) == 8192 && table_size_for(656, DEFAULT_TABLE_SIZE) == 65_536);
const _: () = assert!(table_size_for(100, 1024) == 1024 && table_size_for(100_000, DEFAULT_TABLE_SIZE) == 65_536);
const _: () = assert!(core::mem::size_of::<VipMeta>() == 24);
const _: () = assert!(core::mem::size_of::<Backend>() == 48);
const _: () = assert!(core::mem::size_of::<Meta>() == 24);
const _: () = assert!(core::mem::size_of::<TableEntry>() == 8);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);
const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<NewPin>() == 56);
const _: () = assert!(core::mem::size_of::<SrcRangeKey>() == 20);
const _: () = assert!(core::mem::size_of::<Counter>() == 16);
const _: () = assert!(core::mem::size_of::<Traffic>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), made of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for TableEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for NewPin {}
    unsafe impl aya::Pod for SrcRangeKey {}
}
