//! Restarting with other settings (`--table-size`, `--max-*`, `--hash-seed`): new maps
//! are created and filled before the new program takes over the link, and the
//! established flows' pins are carried over from the old maps, translated to the new
//! VIP and backend ids. Until the swap the old program keeps serving from the old maps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use lb_common::NO_BACKEND;

use super::{AdoptedBackend, XdpDataplane, XdpError};
use crate::dataplane::xdp::loader::{LoadOptions, Maps};
use crate::model::Vip;

/// The data plane an earlier agent left under `pin_dir`, if it was written with other
/// settings than `wanted` (same ABI): read before its pins are replaced, so its flow
/// pins and ramp state can be carried over.
pub fn previous(pin_dir: &Path, wanted: &LoadOptions) -> Option<(XdpDataplane, Vec<AdoptedBackend>)> {
    let (maps, meta) = Maps::from_pinned_writable(pin_dir).ok()?;
    if meta == wanted.meta() {
        return None;
    }
    let opts = LoadOptions {
        table_size: meta.table_size,
        max_vips: meta.max_vips,
        max_backends: meta.max_backends,
        max_flows: meta.max_flows,
        hash_seed: meta.hash_seed,
        ..wanted.clone()
    };
    match XdpDataplane::adopt(maps, &opts) {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(error = %e, "reading the maps being replaced; their flows and ramps are not carried over");
            None
        }
    }
}

impl XdpDataplane {
    /// Copies the confirmed flow pins of `old` whose VIP and backend this data plane
    /// holds too, with their ids translated. Returns how many were copied.
    pub fn carry_pins_from(&mut self, old: &XdpDataplane) -> Result<usize, XdpError> {
        let vip_by_id: HashMap<u32, Vip> = old.vips.iter().map(|(v, s)| (s.id, *v)).collect();
        let backend_by_id: HashMap<u32, (Vip, IpAddr)> =
            old.vips.iter().flat_map(|(v, s)| s.backends.iter().map(move |(a, b)| (b.id, (*v, *a)))).collect();
        let new_backend = |id: u32| -> Option<u32> {
            if id == NO_BACKEND {
                return Some(NO_BACKEND);
            }
            let (vip, addr) = backend_by_id.get(&id)?;
            self.vips.get(vip)?.backends.get(addr).map(|b| b.id)
        };
        let mut pins = Vec::new();
        for entry in old.maps.flows.iter() {
            let (mut key, mut value) = entry.map_err(|source| XdpError::Read { map: "FLOWS", source })?;
            let Some(vip) = vip_by_id.get(&key.vip_id) else { continue };
            let Some(state) = self.vips.get(vip) else { continue };
            let (Some(backend), Some(moved_from)) = (new_backend(value.backend), new_backend(value.moved_from)) else {
                continue;
            };
            key.vip_id = state.id;
            value.backend = backend;
            value.moved_from = moved_from;
            pins.push((*vip, key, value));
        }
        for (vip, key, value) in &pins {
            self.maps.flows.insert(key, value, 0).map_err(|source| XdpError::Map {
                vip: *vip,
                map: "FLOWS",
                source,
            })?;
        }
        Ok(pins.len())
    }
}
