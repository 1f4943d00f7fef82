//! Adopting pinned maps after an agent restart: the data plane's bookkeeping is read
//! back from `VIPS` and `BACKENDS` (tables stay where they are), so the next apply writes
//! only what really changed, and ramp and drain state is handed back to the ramp.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use lb_common::{Backend, BACKEND_F_DRAINING, BACKEND_F_PRESENT};

use super::{BackendState, VipState, XdpDataplane, XdpError};
use crate::dataplane::xdp::loader::{LoadOptions, Maps};
use crate::model::{addr_from_bytes, Vip};

/// A backend found in adopted maps, with what the ramp needs to continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedBackend {
    pub vip: Vip,
    pub addr: IpAddr,
    pub target: u32,
    pub progress: u32,
    pub since_ms: u64,
    pub draining: bool,
    /// The MAC it was programmed with, if it was active.
    pub mac: Option<[u8; 6]>,
}

impl XdpDataplane {
    /// A data plane over pinned maps that an earlier agent wrote.
    pub fn adopt(maps: Maps, opts: &LoadOptions) -> Result<(Self, Vec<AdoptedBackend>), XdpError> {
        let read = |map, source| XdpError::Read { map, source };
        let mut dp = XdpDataplane::new(maps, opts);
        let metas: Vec<_> = dp.maps.vips.iter().collect::<Result<_, _>>().map_err(|e| read("VIPS", e))?;
        let mut by_vip_id: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
        for (id, b) in dp.maps.backends.iter().enumerate() {
            let b = b.map_err(|e| read("BACKENDS", e))?;
            if b.flags & BACKEND_F_PRESENT != 0 {
                by_vip_id.entry(b.vip_id).or_default().push((id as u32, b));
            }
        }
        let mut ranges = super::addrs::read_ranges(&dp.maps).map_err(|e| read("SRC_RANGES", e))?;
        let mut adopted = Vec::new();
        for (key, meta) in metas {
            let Some(vip) = Vip::from_key(&key) else { continue };
            dp.vip_ids.claim(meta.id);
            let mut backends = BTreeMap::new();
            for (id, b) in by_vip_id.remove(&meta.id).unwrap_or_default() {
                let addr = addr_from_bytes(b.family, &b.addr);
                dp.backend_ids.claim(id);
                backends.insert(addr, BackendState { id, written: b });
                adopted.push(AdoptedBackend {
                    vip,
                    addr,
                    target: b.target_weight,
                    progress: b.progress,
                    since_ms: b.since_unix_ms,
                    draining: b.flags & BACKEND_F_DRAINING != 0,
                    mac: (b.flags & lb_common::BACKEND_F_ACTIVE != 0).then_some(b.mac),
                });
            }
            let live = dp.maps.tables.read(&meta, meta.half).map_err(|source| XdpError::Table { vip, source })?;
            let state = VipState {
                id: meta.id,
                meta,
                backends,
                applied: None,
                table_changed_at: Instant::now(),
                in_transition: live.iter().any(|e| e.backend != e.prev),
                ranges: ranges.remove(&meta.id).unwrap_or_default(),
                live: true,
                addr_held: true,
            };
            dp.vips.insert(vip, state);
            // Rewrites what is there already, and counts the address's users.
            dp.addrs.add(&mut dp.maps, vip.addr).map_err(|source| XdpError::Map { vip, map: "VIP_ADDRS", source })?;
        }
        Ok((dp, adopted))
    }
}
