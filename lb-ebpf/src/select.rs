//! VIP match, then backend choice: Maglev slot, consulting the flow table only for
//! slots whose backend changed.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    hash, maglev, stats, table_index, Backend, FlowKey, FlowValue, TableEntry, VipKey, VipMeta, BACKEND_F_ACTIVE,
    BACKEND_F_DRAINING, FAMILY_V4, FLOW_F_CLOSING, NO_BACKEND, PROTO_TCP, VIP_F_AFFINITY, VIP_F_NO_BACKENDS,
};

use crate::{
    forward,
    parse::{self, Flow},
    stats::{note, traffic, Verdict},
    BACKENDS, BACKEND_STATS, FLOWS, HASH_SEED, TABLES, TABLE_SIZE, VIPS, VIP_STATS,
};

/// A flow-table entry's `last_seen_ns` is refreshed when older than this.
const REFRESH_NS: u64 = 1_000_000_000;

/// The balancer: `Ok` is a verdict, `Err` a drop reason.
#[inline(always)]
pub fn try_lb(ctx: &XdpContext) -> Result<Verdict, u32> {
    let flow = match parse::flow(ctx) {
        Ok(f) => f,
        Err(v) => return Ok(v),
    };
    let Some(meta) = vip(&flow) else {
        return Ok(Verdict::Pass(stats::PASS_NOT_VIP));
    };
    if meta.flags & VIP_F_NO_BACKENDS != 0 {
        return Err(stats::DROP_NO_BACKEND);
    }
    let (id, backend) = backend(&flow, &meta)?;
    let len = (ctx.data_end() - ctx.data()) as u64;
    traffic(&VIP_STATS, meta.id, len, flow.syn);
    traffic(&BACKEND_STATS, id, len, flow.syn);
    forward::to_backend(ctx, backend)
}

#[inline(always)]
fn vip(flow: &Flow) -> Option<VipMeta> {
    let mut key = VipKey { addr: [0; 16], port_be: flow.dst_port_be, proto: flow.proto, family: flow.family };
    let words = key.addr.as_mut_ptr() as *mut [u32; 4];
    // SAFETY: `addr` is 16 bytes; unaligned store of four words.
    unsafe { words.write_unaligned(flow.dst) };
    // SAFETY: the value is copied out at once.
    unsafe { VIPS.get(&key).copied() }
}

#[inline(always)]
fn seed() -> u32 {
    // SAFETY: a load-time constant in .rodata.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[inline(always)]
fn table_size() -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TABLE_SIZE) }
}

#[inline(always)]
fn flow_hash(flow: &Flow, affinity: bool) -> u32 {
    let ports = hash::vip_ports_word(affinity, flow.src_port_be, flow.dst_port_be);
    if flow.family == FAMILY_V4 {
        hash::flow_hash_v4(flow.src[0], flow.dst[0], ports, flow.proto, seed())
    } else {
        hash::flow_hash_v6(&flow.src, &flow.dst, ports, flow.proto, seed())
    }
}

/// The backend for this packet, with its id.
#[inline(always)]
fn backend(flow: &Flow, meta: &VipMeta) -> Result<(u32, &'static Backend), u32> {
    let size = table_size();
    if size == 0 {
        return Err(stats::DROP_TABLE);
    }
    let affinity = meta.flags & VIP_F_AFFINITY != 0;
    let slot = maglev::slot_of(flow_hash(flow, affinity), size);
    let entry: TableEntry = *TABLES.get(table_index(meta.id, meta.half, size, slot)).ok_or(stats::DROP_TABLE)?;
    // Affinity VIPs pin every client (their pins must outlive table changes even for a
    // client with no open connection), so they always take the flow-table path.
    let (id, found) = if entry.backend == entry.prev && !affinity {
        (entry.backend, None)
    } else {
        changed_slot(flow, meta, &entry, affinity)
    };
    if id == NO_BACKEND {
        return Err(stats::DROP_NO_BACKEND);
    }
    // A backend the flow-table path already validated is not looked up twice.
    match found.or_else(|| active(id, meta.id)) {
        Some(b) => Ok((id, b)),
        None => Err(stats::DROP_BACKEND_GONE),
    }
}

#[inline(always)]
fn active(id: u32, vip_id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    (b.flags & BACKEND_F_ACTIVE != 0 && b.vip_id == vip_id).then_some(b)
}

/// A slot whose backend changed (or any slot of an affinity VIP): a usable pin (see `maglev::pin_usable`) keeps its
/// backend; otherwise `maglev::unpinned_choice` decides (an established TCP packet goes
/// to the slot's previous backend) and the choice is pinned, so flow-table writes happen
/// only in changed slots. With affinity the pin is per client address (port 0).
/// `NO_BACKEND` (nothing to send a new flow to) is returned unpinned.
#[inline(always)]
fn changed_slot(flow: &Flow, meta: &VipMeta, entry: &TableEntry, affinity: bool) -> (u32, Option<&'static Backend>) {
    note(stats::NOTE_FLOW_LOOKUP);
    let src_port_be = if affinity { 0 } else { flow.src_port_be };
    let key = FlowKey { src_addr: addr_bytes(&flow.src), vip_id: meta.id, src_port_be, _pad: 0 };
    let timeout = if affinity { meta.affinity_timeout_s } else { 0 };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    let mark_closing = flow.closing && !affinity;
    if affinity || !flow.syn {
        if let Some(v) = FLOWS.get_ptr_mut(&key) {
            // SAFETY: the map value stays valid for this program run.
            let pinned = unsafe { &mut *v };
            let b = active(pinned.backend, meta.id);
            let pin = maglev::Pin {
                active: b.is_some(),
                draining: b.is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0),
                age_ns: now.saturating_sub(pinned.last_seen_ns),
            };
            if maglev::pin_usable(timeout, flow.syn, &pin) {
                if pin.age_ns > REFRESH_NS {
                    pinned.last_seen_ns = now;
                }
                if mark_closing && pinned.flags & FLOW_F_CLOSING == 0 {
                    pinned.flags |= FLOW_F_CLOSING;
                }
                return (pinned.backend, b);
            }
        }
    }
    let tcp = flow.proto == PROTO_TCP;
    let prev = if tcp && !flow.syn { active(entry.prev, meta.id) } else { None };
    let (chosen, used_prev) = maglev::unpinned_choice(entry, tcp, flow.syn, prev.is_some());
    let found = if used_prev {
        note(stats::NOTE_PREV_BACKEND);
        prev
    } else {
        None
    };
    if chosen == NO_BACKEND {
        return (chosen, None);
    }
    let flags = if mark_closing { FLOW_F_CLOSING } else { 0 };
    let value = FlowValue { backend: chosen, flags, last_seen_ns: now };
    if FLOWS.insert(&key, &value, 0).is_ok() {
        note(stats::NOTE_FLOW_PINNED);
    }
    (chosen, found)
}

#[inline(always)]
fn addr_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: 16 bytes, unaligned store.
    unsafe { (out.as_mut_ptr() as *mut [u32; 4]).write_unaligned(*words) };
    out
}
