//! The `Dataplane` face of the XDP maps: VIP by VIP, so that one VIP that does not fit
//! or whose write the kernel refuses is reported and the others are applied.

use std::collections::BTreeMap;

use lb_common::{BACKEND_F_ACTIVE, BACKEND_F_DRAINING};

use super::{flows, XdpDataplane, XdpError};
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

    fn apply_or_report(&mut self, vip: Vip, wanted: Option<&SnapVip>, report: &mut ApplyReport) {
        let result = match wanted {
            Some(w) => self.apply_vip(vip, w, report),
            None if self.vips.contains_key(&vip) => self.remove_vip(vip).map(|writes| {
                report.writes += writes;
                report.vips_removed += 1;
            }),
            None => Ok(()),
        };
        if let Err(e) = result {
            if wanted.is_some() {
                self.recover(vip);
            }
            report.failed.push(VipFailure { vip, capacity: e.is_capacity(), message: error_chain(&e) });
        }
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
        let mut report = ApplyReport::default();
        let gone: Vec<Vip> = self.vips.keys().filter(|v| !snapshot.vips.contains_key(v)).copied().collect();
        // Removals first: they make room for what is added.
        for vip in gone {
            self.apply_or_report(vip, None, &mut report);
        }
        for (vip, wanted) in &snapshot.vips {
            self.apply_or_report(*vip, Some(wanted), &mut report);
        }
        Ok(report)
    }

    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, XdpError> {
        let mut report = ApplyReport::default();
        let removals = changes.iter().filter(|(_, w)| w.is_none());
        for (vip, wanted) in removals.chain(changes.iter().filter(|(_, w)| w.is_some())) {
            self.apply_or_report(*vip, wanted.as_ref(), &mut report);
        }
        Ok(report)
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
