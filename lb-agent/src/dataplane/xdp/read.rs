//! A typed reading of the maps: every VIP with its backends, weights, ramp and drain
//! state, counters and live flows. Used by `status`, `top` and the metrics endpoint;
//! works on pinned maps while no agent runs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use aya::maps::MapError;
use lb_common::{
    Backend, Counter, Meta, Traffic, VipMeta, BACKEND_F_ACTIVE, BACKEND_F_DRAINING, BACKEND_F_PRESENT, FLOW_F_CLOSING,
    VIP_F_AFFINITY,
};
use serde::Serialize;

use crate::dataplane::xdp::counters;
use crate::dataplane::xdp::loader::Maps;
use crate::dataplane::xdp::monotonic_coarse_ns;
use crate::model::{addr_from_bytes, Vip};

/// Packets, bytes and new flows (new flows: TCP SYNs; 0 for verdict reasons).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl From<Traffic> for Counts {
    fn from(t: Traffic) -> Self {
        Counts { packets: t.packets, bytes: t.bytes, new_flows: t.new_flows }
    }
}

impl From<Counter> for Counts {
    fn from(c: Counter) -> Self {
        Counts { packets: c.packets, bytes: c.bytes, new_flows: 0 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub table_size: u32,
    pub hash_seed: u32,
    pub vips: Vec<VipInfo>,
    /// Verdict reasons with their counters, in index order.
    pub reasons: Vec<(String, Counts)>,
    /// Flow-table entries, and how many of them are live.
    pub flows: usize,
    pub live_flows: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VipInfo {
    pub vip: String,
    pub id: u32,
    /// Client-address affinity timeout, seconds (0 = none).
    pub affinity_timeout_s: u32,
    pub traffic: Counts,
    pub backends: Vec<BackendInfo>,
    /// Table slots still consulting the flow table after a change.
    pub changed_slots: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    pub addr: IpAddr,
    pub id: u32,
    pub mac: String,
    /// MAC known: can take traffic.
    pub active: bool,
    pub draining: bool,
    pub weight: u32,
    pub target_weight: u32,
    pub progress: u32,
    /// Unix ms of the last ramp step, or of the drain start.
    pub since_unix_ms: u64,
    pub traffic: Counts,
    /// Flows pinned to this backend that are live (not closing, seen within the idle time).
    pub live_flows: u64,
}

fn mac_text(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// Reads everything. `flow_idle`: how long a silent flow still counts as live.
pub fn inspect(maps: &Maps, meta: &Meta, flow_idle: Duration) -> Result<Inspection, MapError> {
    let now = monotonic_coarse_ns();
    let idle = flow_idle.as_nanos() as u64;
    let mut live_by_backend: BTreeMap<u32, u64> = BTreeMap::new();
    // Confirmed pins, and first packets not confirmed yet (a key in both counts once).
    let mut pins: std::collections::HashMap<lb_common::FlowKey, lb_common::FlowValue> =
        std::collections::HashMap::new();
    pins.extend(maps.flows_new.all().map_err(MapError::IoError)?);
    for entry in maps.flows.iter() {
        let (k, v) = entry?;
        pins.insert(k, v);
    }
    let flows = pins.len();
    for v in pins.values() {
        if v.flags & FLOW_F_CLOSING == 0 && now.saturating_sub(v.last_seen_ns) <= idle {
            *live_by_backend.entry(v.backend).or_default() += 1;
        }
    }
    let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
    for (id, b) in maps.backends.iter().enumerate() {
        let b = b?;
        if b.flags & BACKEND_F_PRESENT != 0 {
            by_vip.entry(b.vip_id).or_default().push((id as u32, b));
        }
    }
    let mut vips = Vec::new();
    for entry in maps.vips.iter() {
        let (key, vm): (_, VipMeta) = entry?;
        let Some(vip) = Vip::from_key(&key) else { continue };
        let backends = by_vip
            .remove(&vm.id)
            .unwrap_or_default()
            .into_iter()
            .map(|(id, b)| {
                Ok(BackendInfo {
                    addr: addr_from_bytes(b.family, &b.addr),
                    id,
                    mac: mac_text(&b.mac),
                    active: b.flags & BACKEND_F_ACTIVE != 0,
                    draining: b.flags & BACKEND_F_DRAINING != 0,
                    weight: b.weight,
                    target_weight: b.target_weight,
                    progress: b.progress,
                    since_unix_ms: b.since_unix_ms,
                    traffic: counters::traffic(&maps.backend_stats, id)?.into(),
                    live_flows: live_by_backend.get(&id).copied().unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, MapError>>()?;
        let changed_slots = maps.tables.read(&vm, vm.half)?.iter().filter(|e| e.backend != e.prev).count();
        vips.push(VipInfo {
            vip: vip.to_string(),
            id: vm.id,
            affinity_timeout_s: if vm.flags & VIP_F_AFFINITY != 0 { vm.affinity_timeout_s } else { 0 },
            traffic: counters::traffic(&maps.vip_stats, vm.id)?.into(),
            backends,
            changed_slots,
        });
    }
    vips.sort_by(|a, b| a.vip.cmp(&b.vip));
    let reasons = counters::reasons(&maps.reasons)?.into_iter().map(|(n, c)| (n.to_string(), c.into())).collect();
    Ok(Inspection {
        table_size: meta.table_size,
        hash_seed: meta.hash_seed,
        vips,
        reasons,
        flows,
        live_flows: live_by_backend.values().sum(),
    })
}
