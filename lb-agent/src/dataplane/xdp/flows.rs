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
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError};
use lb_common::{
    hash, maglev, FlowKey, FlowValue, TableEntry, VipMeta, BACKEND_F_DRAINING, FLOW_F_CLOSING, VIP_F_AFFINITY,
};

use super::{XdpDataplane, XdpError};
use crate::dataplane::xdp::pins::NewPins;
use crate::dataplane::{Census, Maintenance};
use crate::model::{addr_bytes, addr_from_bytes, family, Vip};

/// CLOCK_MONOTONIC_COARSE, the clock of the kernel's `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A VIP whose transition slots may settle, as it was when the census began.
struct SettleJob {
    vip: Vip,
    id: u32,
    meta: VipMeta,
    /// When its table last changed: a census older than a change is not used.
    changed_at: Instant,
}

/// The flow-table walk, on a worker thread: its own handles on `FLOWS` and
/// `FLOWS_NEW` (duplicated descriptors), and what to look for.
pub struct FlowCensus {
    maps: Option<(HashMap<MapData, FlowKey, FlowValue>, NewPins)>,
    idle_ns: u64,
    draining: Vec<(Vip, IpAddr, u32)>,
    settle: Vec<SettleJob>,
    hash_seed: u32,
}

/// Live flows per backend id, and per VIP to settle the (slot, backend) of its live flows.
type Walk = (BTreeMap<u32, u64>, Vec<Vec<(u32, u32)>>);

/// What the walk found: live flows per backend id, and per VIP to settle the (slot,
/// backend) of each of its live flows.
pub struct FlowsFound {
    census: FlowCensus,
    result: Result<Walk, XdpError>,
}

impl Census for FlowCensus {
    type Found = FlowsFound;
    fn run(mut self) -> FlowsFound {
        let result = match self.maps.take() {
            None => Ok((BTreeMap::new(), Vec::new())),
            Some((flows, new)) => self.walk(&flows, &new),
        };
        FlowsFound { census: self, result }
    }
}

impl FlowCensus {
    fn walk(&self, flows: &HashMap<MapData, FlowKey, FlowValue>, new: &NewPins) -> Result<Walk, XdpError> {
        let all = read_flows(flows, new)?;
        let now_ns = monotonic_coarse_ns();
        let recent = |v: &FlowValue| now_ns.saturating_sub(v.last_seen_ns) <= self.idle_ns;
        let mut live: BTreeMap<u32, u64> = BTreeMap::new();
        for (_, v) in all.iter().filter(|(_, v)| recent(v) && v.flags & FLOW_F_CLOSING == 0) {
            *live.entry(v.backend).or_default() += 1;
        }
        let keep = self
            .settle
            .iter()
            .map(|job| {
                let affinity = job.meta.flags & VIP_F_AFFINITY != 0;
                let mine = all.iter().filter(|(k, v)| k.vip_id == job.id && recent(v));
                mine.map(|(k, v)| (slot_of(self.hash_seed, job.meta.mask, &job.vip, affinity, k), v.backend)).collect()
            })
            .collect();
        Ok((live, keep))
    }
}

pub(super) fn census(dp: &XdpDataplane, idle: Duration) -> FlowCensus {
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
    let settle: Vec<SettleJob> = dp
        .vips
        .iter()
        .filter(|(_, s)| s.live && s.in_transition && now.duration_since(s.table_changed_at) >= idle)
        .map(|(vip, s)| SettleJob { vip: *vip, id: s.id, meta: s.meta, changed_at: s.table_changed_at })
        .collect();
    let idle_ns = idle.as_nanos() as u64;
    let hash_seed = dp.opts.hash_seed;
    let mut job = FlowCensus { maps: None, idle_ns, draining, settle, hash_seed };
    if job.draining.is_empty() && job.settle.is_empty() {
        return job;
    }
    match readers(dp) {
        Ok(maps) => job.maps = Some(maps),
        Err(e) => tracing::warn!(error = %e, "opening the flow tables for a census"),
    }
    job
}

/// Duplicated handles on the flow tables, for the worker thread.
fn readers(dp: &XdpDataplane) -> Result<(HashMap<MapData, FlowKey, FlowValue>, NewPins), XdpError> {
    let read = |map, e: std::io::Error| XdpError::Read { map, source: MapError::IoError(e) };
    let fd = dp.maps.flows.map().fd().as_fd().try_clone_to_owned().map_err(|e| read("FLOWS", e))?;
    let data = MapData::from_fd(fd).map_err(|source| XdpError::Read { map: "FLOWS", source })?;
    let flows = HashMap::try_from(Map::LruHashMap(data)).map_err(|source| XdpError::Read { map: "FLOWS", source })?;
    let new = dp.maps.flows_new.try_clone().map_err(|e| read("FLOWS_NEW", e))?;
    Ok((flows, new))
}

/// Takes a census: live flows of draining backends, and settles the transition slots
/// that no live flow needs (for a VIP whose table did not change since the census).
pub(super) fn maintain(dp: &mut XdpDataplane, found: FlowsFound) -> Result<Maintenance, XdpError> {
    let FlowsFound { census, result } = found;
    let (live, keep) = result?;
    let mut m = Maintenance::default();
    // Table maps replaced by grown ones: a second is ages for a packet still holding
    // its VIP's old entry.
    dp.maps.tables.sweep(Duration::from_secs(1)).map_err(|source| XdpError::Sweep { source })?;
    for (vip, addr, id) in &census.draining {
        let still = dp.vips.get(vip).and_then(|s| s.backends.get(addr)).is_some_and(|b| b.id == *id);
        if still {
            m.live_flows.insert((*vip, *addr), live.get(id).copied().unwrap_or(0));
        }
    }
    for (job, keep) in census.settle.iter().zip(keep) {
        let current = dp.vips.get(&job.vip).is_some_and(|s| s.id == job.id && s.table_changed_at == job.changed_at);
        if current {
            m.settled_slots += settle_vip(dp, job.vip, &keep)?;
        }
    }
    Ok(m)
}

/// Every pin, confirmed (`FLOWS`) or not yet (`FLOWS_NEW`); a key in both counts once,
/// as its confirmed entry.
fn read_flows(
    flows: &HashMap<MapData, FlowKey, FlowValue>,
    new: &NewPins,
) -> Result<Vec<(FlowKey, FlowValue)>, XdpError> {
    let mut out: std::collections::HashMap<FlowKey, FlowValue> = std::collections::HashMap::new();
    let pins = new.all().map_err(|e| XdpError::Read { map: "FLOWS_NEW", source: MapError::IoError(e) })?;
    out.extend(pins);
    for entry in flows.iter() {
        let (k, v) = entry.map_err(|source| XdpError::Read { map: "FLOWS", source })?;
        out.insert(k, v);
    }
    Ok(out.into_iter().collect())
}

/// The slot a pinned flow of `vip` hashes to.
fn slot_of(seed: u32, mask: u32, vip: &Vip, affinity: bool, key: &FlowKey) -> u32 {
    let src = addr_from_bytes(family(vip.addr), &key.src_addr);
    let ports = hash::vip_ports_word(affinity, key.src_port_be, vip.port.to_be());
    let (s, d) = (hash::addr_words(&addr_bytes(src)), hash::addr_words(&addr_bytes(vip.addr)));
    let h = hash::flow_hash_words(family(vip.addr), &s, &d, ports, vip.proto.number(), seed);
    maglev::slot_of(h, mask)
}

/// Makes every transition slot of `vip` stable unless a live flow pinned in it goes to
/// another backend than the slot's. Returns how many slots were settled.
fn settle_vip(dp: &mut XdpDataplane, vip: Vip, flows: &[(u32, u32)]) -> Result<usize, XdpError> {
    let state = &dp.vips[&vip];
    let meta = state.meta;
    let live = dp.maps.tables.read(&meta, meta.half).map_err(|source| XdpError::Table { vip, source })?;
    let keep: BTreeSet<u32> = flows
        .iter()
        .filter(|(slot, backend)| live.get(*slot as usize).is_some_and(|e| e.backend != *backend))
        .map(|(slot, _)| *slot)
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
    dp.maps.tables.write_diff(&meta, idle_half, &next).map_err(|source| XdpError::Table { vip, source })?;
    let mut flipped = meta;
    flipped.half = idle_half;
    dp.maps.vips.insert(vip.key(), flipped, 0).map_err(|source| XdpError::Map { vip, map: "VIPS", source })?;
    state.meta = flipped;
    Ok(settled)
}
