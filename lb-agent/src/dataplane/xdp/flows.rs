//! Reading the flow table: live flows per backend (for drains), and settling slots that
//! changed back to stable once no flow needs their transition any more.
//!
//! A slot stays in transition (the kernel consults the flow table) after its backend
//! changed. Once a VIP's table has not changed for the flow idle timeout, every flow
//! older than the change has either sent a packet since (and is pinned) or is dead; a
//! slot can then become stable unless a live pinned flow in it belongs to a backend other
//! than the slot's current one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use aya::maps::MapError;
use lb_common::{hash, maglev, FlowKey, FlowValue, TableEntry, BACKEND_F_DRAINING, FLOW_F_CLOSING, VIP_F_AFFINITY};

use super::{XdpDataplane, XdpError};
use crate::dataplane::Maintenance;
use crate::model::{addr_bytes, addr_from_bytes, family, Vip};

/// CLOCK_MONOTONIC_COARSE, the clock of the kernel's `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub(super) fn maintain(dp: &mut XdpDataplane, idle: Duration) -> Result<Maintenance, XdpError> {
    let draining: Vec<(Vip, IpAddr, u32)> = dp
        .vips
        .iter()
        .flat_map(|(vip, s)| {
            s.backends
                .iter()
                .filter(|(_, b)| b.written.flags & BACKEND_F_DRAINING != 0)
                .map(move |(addr, b)| (*vip, *addr, b.id))
        })
        .collect();
    let now = Instant::now();
    let settle: Vec<Vip> = dp
        .vips
        .iter()
        .filter(|(_, s)| s.in_transition && now.duration_since(s.table_changed_at) >= idle)
        .map(|(v, _)| *v)
        .collect();
    let mut m = Maintenance::default();
    if draining.is_empty() && settle.is_empty() {
        return Ok(m);
    }
    let flows = read_flows(dp)?;
    let now_ns = monotonic_coarse_ns();
    let idle_ns = idle.as_nanos() as u64;
    let recent = |v: &FlowValue| now_ns.saturating_sub(v.last_seen_ns) <= idle_ns;

    let mut live: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, v) in flows.iter().filter(|(_, v)| recent(v) && v.flags & FLOW_F_CLOSING == 0) {
        *live.entry(v.backend).or_default() += 1;
    }
    for (vip, addr, id) in draining {
        m.live_flows.insert((vip, addr), live.get(&id).copied().unwrap_or(0));
    }
    for vip in settle {
        m.settled_slots += settle_vip(dp, vip, flows.iter().filter(|(_, v)| recent(v)))?;
    }
    Ok(m)
}

/// Every pin, confirmed (`FLOWS`) or not yet (`FLOWS_NEW`); a key in both counts once,
/// as its confirmed entry.
fn read_flows(dp: &XdpDataplane) -> Result<Vec<(FlowKey, FlowValue)>, XdpError> {
    let mut out: std::collections::HashMap<FlowKey, FlowValue> = std::collections::HashMap::new();
    let new = dp.maps.flows_new.all().map_err(|e| XdpError::Read { map: "FLOWS_NEW", source: MapError::IoError(e) })?;
    out.extend(new);
    for entry in dp.maps.flows.iter() {
        let (k, v) = entry.map_err(|source| XdpError::Read { map: "FLOWS", source })?;
        out.insert(k, v);
    }
    Ok(out.into_iter().collect())
}

/// The slot a pinned flow of `vip` hashes to.
fn slot_of(dp: &XdpDataplane, vip: &Vip, affinity: bool, key: &FlowKey) -> u32 {
    let src = addr_from_bytes(family(vip.addr), &key.src_addr);
    let ports = hash::vip_ports_word(affinity, key.src_port_be, vip.port.to_be());
    let (s, d) = (hash::addr_words(&addr_bytes(src)), hash::addr_words(&addr_bytes(vip.addr)));
    let h = hash::flow_hash_words(family(vip.addr), &s, &d, ports, vip.proto.number(), dp.opts.hash_seed);
    maglev::slot_of(h, dp.opts.table_size)
}

/// Makes every transition slot of `vip` stable unless a live flow pinned in it goes to
/// another backend than the slot's. Returns how many slots were settled.
fn settle_vip<'a>(
    dp: &mut XdpDataplane,
    vip: Vip,
    flows: impl Iterator<Item = &'a (FlowKey, FlowValue)>,
) -> Result<usize, XdpError> {
    let state = &dp.vips[&vip];
    let (id, meta) = (state.id, state.meta);
    let affinity = meta.flags & VIP_F_AFFINITY != 0;
    let live = dp.maps.tables.read(id, meta.half).map_err(|source| XdpError::Table { vip, source })?;
    let keep: BTreeSet<u32> = flows
        .filter(|(k, _)| k.vip_id == id)
        .filter_map(|(k, v)| {
            let slot = slot_of(dp, &vip, affinity, k);
            (live[slot as usize].backend != v.backend).then_some(slot)
        })
        .collect();
    let mut settled = 0;
    let next: Vec<TableEntry> = live
        .iter()
        .enumerate()
        .map(|(slot, e)| {
            if e.backend != e.prev && !keep.contains(&(slot as u32)) {
                settled += 1;
                TableEntry { backend: e.backend, prev: e.backend }
            } else {
                *e
            }
        })
        .collect();
    let state = dp.vips.get_mut(&vip).expect("present");
    state.in_transition = !keep.is_empty();
    state.table_changed_at = Instant::now();
    if settled == 0 {
        return Ok(0);
    }
    let idle_half = 1 - meta.half;
    dp.maps.tables.write_diff(id, idle_half, &next).map_err(|source| XdpError::Table { vip, source })?;
    let mut flipped = meta;
    flipped.half = idle_half;
    dp.maps.vips.insert(vip.key(), flipped, 0).map_err(|source| XdpError::Map { vip, map: "VIPS", source })?;
    state.meta = flipped;
    Ok(settled)
}
