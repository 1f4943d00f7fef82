//! The `Dataplane` face of the XDP maps: VIP by VIP, so that one VIP that does not fit
//! or whose write the kernel refuses is reported and the others are applied.

use std::collections::BTreeMap;

use lb_common::{Backend, BACKEND_F_ACTIVE, BACKEND_F_DRAINING};

use super::{addrs, flows, Finish, XdpDataplane, XdpError};
use crate::dataplane::{error_chain, ApplyReport, Dataplane, Maintenance, Programmed, SnapVip, Snapshot, VipFailure};
use crate::model::Vip;

impl XdpDataplane {
    /// After a failed apply of `vip`: a VIP that packets never reached is taken out
    /// whole (its ids go back, the next try starts afresh); a live one keeps what it
    /// had and is written again in full on the next try.
    fn recover(&mut self, vip: Vip) {
        let Some(state) = self.vips.get_mut(&vip) else { return };
        if state.live {
            state.applied = None;
        } else if let Err(e) = self.remove_vip(vip) {
            tracing::warn!(%vip, error = %e, "undoing a VIP that could not be applied");
        }
    }

    fn fail(&mut self, vip: Vip, e: XdpError, recover: bool, report: &mut ApplyReport) {
        if recover {
            self.recover(vip);
        }
        report.failed.push(VipFailure { vip, capacity: e.is_capacity(), message: error_chain(&e) });
    }

    /// Applies VIPs in two passes: each VIP up to its flip (removals first: they make
    /// room), then every new table map into `TABLES` in one batch (the kernel waits an
    /// RCU grace period per update of an array of maps, however many entries it holds),
    /// then each VIP's flip and what follows. A VIP that fails is reported and the
    /// others applied.
    fn apply_each<'a>(&mut self, changes: impl Iterator<Item = (Vip, Option<&'a SnapVip>)>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut finishing = Vec::new();
        for (vip, wanted) in changes {
            let result = match wanted {
                Some(w) => self.apply_vip(vip, w, &mut report).map(|f| finishing.extend(f)),
                None if self.vips.contains_key(&vip) => self.remove_vip(vip).map(|writes| {
                    report.writes += writes;
                    report.vips_removed += 1;
                }),
                None => Ok(()),
            };
            if let Err(e) = result {
                self.fail(vip, e, wanted.is_some(), &mut report);
            }
        }
        let mut refused = self.maps.tables.commit();
        for f in finishing {
            let vip = f.vip;
            let result = match refused.remove(&f.meta.table) {
                Some(source) => Err(XdpError::Table { vip, source }),
                None => self.finish_vip(f, &mut report),
            };
            if let Err(e) = result {
                self.fail(vip, e, true, &mut report);
            }
        }
        report
    }

    /// The flip (one `VIPS` update makes the new table and settings live) and what
    /// follows it: the ranges no longer wanted, the backends that left.
    fn finish_vip(&mut self, f: Finish, report: &mut ApplyReport) -> Result<(), XdpError> {
        let Finish { vip, meta, ranges, removed, is_new, mut writes, digest } = f;
        let state = self.vips.get_mut(&vip).expect("present");
        if !state.addr_held {
            // Closed to all but its ports from before it serves.
            writes += self.addrs.add(&mut self.maps, vip.addr).map_err(|source| XdpError::Map {
                vip,
                map: "VIP_ADDRS",
                source,
            })?;
            state.addr_held = true;
        }
        if !state.live || meta != state.meta {
            // The flip: one update makes the new table (and settings) live.
            self.maps.vips.insert(vip.key(), meta, 0).map_err(|source| XdpError::Map { vip, map: "VIPS", source })?;
            if state.live && meta.table != state.meta.table {
                self.maps.tables.retire(state.meta.table, Some(state.meta.table_size()));
            }
            state.meta = meta;
            state.live = true;
            writes += 1;
        }
        writes += addrs::sync_ranges(&mut self.maps, state.id, &state.ranges, &ranges, true)
            .map_err(|source| XdpError::Map { vip, map: "SRC_RANGES", source })?;
        state.ranges = ranges;
        // Backends that left are unreachable from the live table now.
        for id in removed {
            state.backends.retain(|_, b| b.id != id);
            self.maps.backends.set(id, Backend::default(), 0).map_err(|source| XdpError::Map {
                vip,
                map: "BACKENDS",
                source,
            })?;
            self.backend_ids.give(id);
            writes += 1;
        }
        state.applied = Some(digest);
        if is_new {
            report.vips_added += 1;
        } else if writes > 0 {
            report.vips_changed += 1;
        }
        report.writes += writes;
        Ok(())
    }
}

impl XdpError {
    /// A full map or id space (as opposed to a write the kernel refused).
    pub fn is_capacity(&self) -> bool {
        matches!(self, XdpError::VipCapacity { .. } | XdpError::BackendCapacity { .. })
    }
}

impl Dataplane for XdpDataplane {
    type Error = XdpError;
    type Census = flows::FlowCensus;

    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, XdpError> {
        let gone: Vec<Vip> = self.vips.keys().filter(|v| !snapshot.vips.contains_key(v)).copied().collect();
        let removals = gone.into_iter().map(|v| (v, None));
        Ok(self.apply_each(removals.chain(snapshot.vips.iter().map(|(v, w)| (*v, Some(w))))))
    }

    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, XdpError> {
        let removals = changes.iter().filter(|(_, w)| w.is_none()).map(|(v, _)| (*v, None));
        let adds = changes.iter().filter_map(|(v, w)| w.as_ref().map(|w| (*v, Some(w))));
        Ok(self.apply_each(removals.chain(adds)))
    }

    fn census(&self, idle: std::time::Duration) -> flows::FlowCensus {
        flows::census(self, idle)
    }

    fn maintain(&mut self, found: flows::FlowsFound) -> Result<Maintenance, XdpError> {
        flows::maintain(self, found)
    }

    /// Read from what was written to `BACKENDS` for the VIP (kept beside the maps, so no
    /// syscall), and only once its `VIPS` entry is live.
    fn programmed(&self, vip: &Vip) -> Option<Programmed> {
        let state = self.vips.get(vip).filter(|s| s.live)?;
        let mut p = Programmed::default();
        for b in state.backends.values() {
            let flags = b.written.flags;
            if flags & BACKEND_F_DRAINING != 0 {
                p.draining += 1;
            } else if flags & BACKEND_F_ACTIVE == 0 {
                p.unresolved += 1;
            } else if b.written.weight > 0 {
                p.serving += 1;
                p.ramping += usize::from(b.written.progress < 100);
            }
        }
        Some(p)
    }
}
