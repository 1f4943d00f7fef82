//! The XDP data plane: turns snapshots into writes to the program's maps.
//!
//! Per VIP: backends get ids and `BACKENDS` entries; a weighted Maglev table is built
//! and turned into the next generation of the VIP's table (see `table`); the slots that
//! differ are written into the idle half, then one `VIPS` update flips the VIP to it,
//! so a packet never sees half a table. A VIP whose input did not change is skipped, so
//! a repeat of the same snapshot writes nothing.

mod addrs;
mod adopt;
mod apply;
pub mod carry;
pub mod counters;
pub mod explain;
mod flows;
mod ids;
pub mod loader;
pub mod pins;
pub mod read;
pub mod tables;
mod transition;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::maglev::{self, Member};
use lb_common::{
    table_size_for, Backend, TableEntry, Traffic, VipMeta, BACKEND_F_ACTIVE, BACKEND_F_DRAINING, BACKEND_F_PRESENT,
    NO_BACKEND, VIP_F_AFFINITY, VIP_F_NO_BACKENDS, VIP_F_SOURCE_RANGES,
};

pub use adopt::AdoptedBackend;
pub use flows::monotonic_coarse_ns;
use ids::IdPool;

use super::{ApplyReport, SnapBackend, SnapVip};
use crate::dataplane::xdp::loader::{LoadOptions, Maps};
use crate::model::{addr_bytes, family, Vip};

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("VIP {vip}: no room for another VIP (capacity {capacity}; raise --max-vips)")]
    VipCapacity { vip: Vip, capacity: u32 },
    #[error("VIP {vip}: no room for backend {backend} (capacity {capacity}; raise --max-backends)")]
    BackendCapacity { vip: Vip, backend: IpAddr, capacity: u32 },
    #[error("VIP {vip}: writing map {map}: {source}")]
    Map {
        vip: Vip,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("VIP {vip}: {source}")]
    Table {
        vip: Vip,
        #[source]
        source: tables::TableError,
    },
    #[error("removing replaced tables: {source}")]
    Sweep {
        #[source]
        source: tables::TableError,
    },
    #[error("reading map {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// The rest of a VIP's apply, after its table is written: see `apply::finish_vip`.
struct Finish {
    vip: Vip,
    meta: VipMeta,
    ranges: BTreeSet<ipnet::IpNet>,
    removed: Vec<u32>,
    is_new: bool,
    writes: usize,
    digest: u64,
}

struct BackendState {
    id: u32,
    written: Backend,
}

struct VipState {
    id: u32,
    meta: VipMeta,
    backends: BTreeMap<IpAddr, BackendState>,
    /// A digest of the input last applied: the same input again is skipped.
    applied: Option<u64>,
    /// When the table last changed, and whether slots may be in transition.
    table_changed_at: Instant,
    in_transition: bool,
    /// The source ranges written to `SRC_RANGES`.
    ranges: BTreeSet<ipnet::IpNet>,
    /// Its `VIPS` entry is written: packets reach its table.
    live: bool,
    /// Its address is counted in `VIP_ADDRS` and the filter.
    addr_held: bool,
}

pub struct XdpDataplane {
    maps: Maps,
    opts: LoadOptions,
    vips: BTreeMap<Vip, VipState>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    nr_cpus: usize,
    addrs: addrs::AddrBook,
}

impl XdpDataplane {
    /// A data plane over freshly created (empty) maps.
    pub fn new(maps: Maps, opts: &LoadOptions) -> Self {
        let vip_capacity = maps.tables.vip_capacity();
        let nr_cpus = aya::util::nr_cpus().map(|n| n.max(1)).unwrap_or(1);
        XdpDataplane {
            maps,
            opts: opts.clone(),
            vips: BTreeMap::new(),
            vip_ids: IdPool::new(vip_capacity),
            backend_ids: IdPool::new(opts.max_backends),
            nr_cpus,
            addrs: addrs::AddrBook::default(),
        }
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The id the data plane gave a backend of a VIP.
    pub fn backend_id(&self, vip: &Vip, addr: IpAddr) -> Option<u32> {
        self.vips.get(vip)?.backends.get(&addr).map(|b| b.id)
    }

    /// The addresses of the VIPs it holds (adopted ones included).
    pub fn vip_addrs(&self) -> BTreeSet<IpAddr> {
        self.vips.keys().map(|v| v.addr).collect()
    }

    pub fn vip_id(&self, vip: &Vip) -> Option<u32> {
        self.vips.get(vip).map(|v| v.id)
    }

    /// Removes a VIP. If its `VIPS` entry cannot be removed the VIP stays whole (and
    /// the error says so); after that, every step is tried and the first error returned.
    fn remove_vip(&mut self, vip: Vip) -> Result<usize, XdpError> {
        let Some(state) = self.vips.get(&vip) else { return Ok(0) };
        let map_err = |map, source| XdpError::Map { vip, map, source };
        let mut writes = 0;
        // Unmatch first (packets pass to the kernel), then free what it used.
        if state.live {
            self.maps.vips.remove(&vip.key()).map_err(|e| map_err("VIPS", e))?;
            writes += 1;
        }
        let state = self.vips.remove(&vip).expect("present");
        let mut first: Option<XdpError> = None;
        for b in state.backends.values() {
            match self.maps.backends.set(b.id, Backend::default(), 0) {
                Ok(()) => writes += 1,
                Err(e) => _ = first.get_or_insert(map_err("BACKENDS", e)),
            }
            self.backend_ids.give(b.id);
        }
        // Its table maps go with `sweep`, when no packet can still be using them.
        for index in [2 * state.id, 2 * state.id + 1] {
            let live_size = (state.live && state.meta.table == index).then(|| state.meta.table_size());
            self.maps.tables.retire(index, live_size);
        }
        match addrs::sync_ranges(&mut self.maps, state.id, &state.ranges, &BTreeSet::new(), true) {
            Ok(n) => writes += n,
            Err(e) => _ = first.get_or_insert(map_err("SRC_RANGES", e)),
        }
        if state.addr_held {
            match self.addrs.remove(&mut self.maps, vip.addr) {
                Ok(n) => writes += n,
                Err(e) => _ = first.get_or_insert(map_err("VIP_ADDRS", e)),
            }
        }
        self.vip_ids.give(state.id);
        first.map_or(Ok(writes), Err)
    }

    fn new_vip(&mut self, vip: Vip) -> Result<(), XdpError> {
        let id = self.vip_ids.take().ok_or(XdpError::VipCapacity { vip, capacity: self.vip_ids.capacity })?;
        reset_counter(&mut self.maps.vip_stats, self.nr_cpus, id).map_err(|source| XdpError::Map {
            vip,
            map: "VIP_STATS",
            source,
        })?;
        let state = VipState {
            id,
            meta: VipMeta::default(),
            backends: BTreeMap::new(),
            applied: None,
            table_changed_at: Instant::now(),
            in_transition: false,
            ranges: BTreeSet::new(),
            live: false,
            addr_held: false,
        };
        self.vips.insert(vip, state);
        Ok(())
    }

    /// Applies one VIP up to its flip: backends, source ranges, the new table written.
    /// What is left ([`Finish`]) is done once a new table map is in `TABLES`. None: the
    /// VIP's input did not change. On an error the VIP is left for `recover`.
    fn apply_vip(&mut self, vip: Vip, wanted: &SnapVip, report: &mut ApplyReport) -> Result<Option<Finish>, XdpError> {
        let is_new = !self.vips.contains_key(&vip);
        if is_new {
            self.new_vip(vip)?;
        } else if self.vips[&vip].applied == Some(digest(wanted)) {
            return Ok(None);
        }
        let mut writes = self.write_backends(vip, &wanted.backends)?;
        // A table grows with the VIP's backends and never shrinks while it lives.
        let live_size = if is_new { 0 } else { self.vips[&vip].meta.table_size() };
        let size = table_size_for(wanted.backends.len() as u32, self.opts.table_size).max(live_size);
        let grow = size > live_size;
        let assigned = self.assign(&wanted.backends, &vip, size);
        let state = self.vips.get_mut(&vip).expect("present");
        let removed: Vec<u32> = state
            .backends
            .iter()
            .filter(|(a, _)| !wanted.backends.iter().any(|w| w.addr == **a))
            .map(|(_, b)| b.id)
            .collect();
        let next: Option<Vec<TableEntry>> = if is_new {
            Some(transition::fresh_entries(&assigned))
        } else {
            let live = self
                .maps
                .tables
                .read(&state.meta, state.meta.half)
                .map_err(|source| XdpError::Table { vip, source })?;
            let next = transition::next_entries(&live, &assigned, |id| removed.contains(&id));
            (grow || next != live).then_some(next)
        };
        let mut meta = state.meta;
        meta.id = state.id;
        let (timeout, refused) = affinity_timeout(vip, &state.meta, wanted, is_new);
        meta.affinity_timeout_s = timeout;
        report.notices.extend(refused.map(|why| (vip, why)));
        // Only the VIP's family's ranges can match; a list with none of them admits no one.
        let ranges: BTreeSet<ipnet::IpNet> =
            wanted.source_ranges.iter().filter(|n| n.addr().is_ipv4() == vip.addr.is_ipv4()).copied().collect();
        meta.flags = if meta.affinity_timeout_s > 0 { VIP_F_AFFINITY } else { 0 }
            | if wanted.source_ranges.is_empty() { 0 } else { VIP_F_SOURCE_RANGES }
            | (meta.flags & VIP_F_NO_BACKENDS);
        // New ranges are in place before the flag (or the flip) makes them count.
        writes += addrs::sync_ranges(&mut self.maps, state.id, &state.ranges, &ranges, false)
            .map_err(|source| XdpError::Map { vip, map: "SRC_RANGES", source })?;
        if let Some(next) = &next {
            let table_err = |source| XdpError::Table { vip, source };
            if grow {
                // A new map in the VIP's other place in `TABLES`; the flip below
                // switches map, size and half at once.
                meta.table = if is_new { 2 * state.id } else { state.meta.table ^ 1 };
                meta.mask = size - 1;
                meta.half = 0;
                self.maps.tables.create(meta.table, size).map_err(table_err)?;
            } else {
                meta.half = 1 - state.meta.half;
            }
            writes += self.maps.tables.write_diff(&meta, meta.half, next).map_err(table_err)?;
            let empty = next.iter().all(|e| e.backend == NO_BACKEND && e.prev == NO_BACKEND);
            meta.flags = (meta.flags & !VIP_F_NO_BACKENDS) | if empty { VIP_F_NO_BACKENDS } else { 0 };
            state.table_changed_at = Instant::now();
            state.in_transition = next.iter().any(|e| e.backend != e.prev);
        }
        Ok(Some(Finish { vip, meta, ranges, removed, is_new, writes, digest: digest(wanted) }))
    }

    /// The Maglev assignment (backend ids per slot) over the backends that can take
    /// new flows (a known MAC, `share_weight` above 0).
    fn assign(&self, wanted: &[SnapBackend], vip: &Vip, size: u32) -> Vec<u32> {
        let state = &self.vips[vip];
        let keys: Vec<[u8; 16]> = wanted.iter().map(|b| addr_bytes(b.addr)).collect();
        let members: Vec<Member<'_>> = wanted
            .iter()
            .zip(&keys)
            .map(|(b, k)| Member { key: k, weight: if b.mac.is_some() { b.share_weight() } else { 0 } })
            .collect();
        let ids: Vec<u32> = wanted.iter().map(|b| state.backends[&b.addr].id).collect();
        maglev::build(&members, size)
            .into_iter()
            .map(|i| if i == maglev::NO_ENTRY { NO_BACKEND } else { ids[i as usize] })
            .collect()
    }

    /// Gives every wanted backend an id and writes the `BACKENDS` entries that changed.
    fn write_backends(&mut self, vip: Vip, wanted: &[SnapBackend]) -> Result<usize, XdpError> {
        let map_err = |map, source| XdpError::Map { vip, map, source };
        let vip_id = self.vips[&vip].id;
        let mut writes = 0;
        for b in wanted {
            let value = backend_value(b, vip_id);
            let existing = self.vips[&vip].backends.get(&b.addr).map(|s| (s.id, s.written));
            let id = match existing {
                Some((id, written)) if written == value => id,
                Some((id, _)) => {
                    self.maps.backends.set(id, value, 0).map_err(|e| map_err("BACKENDS", e))?;
                    writes += 1;
                    id
                }
                None => {
                    let capacity = self.backend_ids.capacity;
                    let id =
                        self.backend_ids.take().ok_or(XdpError::BackendCapacity { vip, backend: b.addr, capacity })?;
                    reset_counter(&mut self.maps.backend_stats, self.nr_cpus, id)
                        .map_err(|e| map_err("BACKEND_STATS", e))?;
                    self.maps.backends.set(id, value, 0).map_err(|e| map_err("BACKENDS", e))?;
                    writes += 2;
                    id
                }
            };
            self.vips.get_mut(&vip).expect("present").backends.insert(b.addr, BackendState { id, written: value });
        }
        Ok(writes)
    }
}

/// The affinity timeout to program. Affinity cannot be turned on or off on a live VIP:
/// the hash would change for every flow (with affinity it leaves the ports out) and
/// established connections would move. Such a change is refused with a log line and the
/// VIP keeps its mode; removing the VIP and adding it again applies it.
fn affinity_timeout(vip: Vip, live: &VipMeta, wanted: &SnapVip, is_new: bool) -> (u32, Option<String>) {
    let was = live.flags & VIP_F_AFFINITY != 0;
    let want = wanted.affinity_timeout_s > 0;
    if is_new || was == want {
        return (wanted.affinity_timeout_s, None);
    }
    let kept = if was { "ClientIP" } else { "None" };
    let why = format!(
        "VIP {vip}: session affinity cannot be turned on or off while the VIP is live (established connections \
         would move to other backends); it stays {kept}: remove the VIP and add it again to change it"
    );
    tracing::warn!(%vip, field = "session_affinity", kept, "{why}");
    (live.affinity_timeout_s, Some(why))
}

/// A digest of a VIP's input (kept instead of the input itself: 8 bytes per VIP rather
/// than ~56 per backend).
fn digest(v: &SnapVip) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn backend_value(b: &SnapBackend, vip_id: u32) -> Backend {
    let mut flags = BACKEND_F_PRESENT;
    if b.mac.is_some() {
        flags |= BACKEND_F_ACTIVE;
    }
    if b.draining {
        flags |= BACKEND_F_DRAINING;
    }
    Backend {
        addr: addr_bytes(b.addr),
        mac: b.mac.unwrap_or_default(),
        flags,
        family: family(b.addr),
        vip_id,
        weight: if b.mac.is_some() && !b.draining { b.weight } else { 0 },
        target_weight: b.target,
        progress: b.progress,
        since_unix_ms: b.since_ms,
    }
}

/// Zeroes a reused id's counters.
fn reset_counter(stats: &mut PerCpuArray<MapData, Traffic>, nr_cpus: usize, id: u32) -> Result<(), MapError> {
    let zero = PerCpuValues::try_from(vec![Traffic::default(); nr_cpus]).map_err(MapError::IoError)?;
    stats.set(id, zero, 0)
}
