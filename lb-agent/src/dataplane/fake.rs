//! A data plane that only remembers, for unit tests of everything above the trait. It
//! can be given a VIP capacity and VIPs whose writes fail, like a full or refusing map,
//! and live flows to report for draining backends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{ApplyReport, Census, Dataplane, Maintenance, Programmed, SnapVip, Snapshot, VipFailure};
use crate::model::Vip;

#[derive(Default)]
pub struct FakeDataplane {
    /// Every state it was brought to, in order.
    pub applied: Vec<Snapshot>,
    pub current: Snapshot,
    /// At most this many VIPs (`None`: no limit).
    pub capacity: Option<usize>,
    /// VIPs whose every write fails.
    pub refuse: BTreeSet<Vip>,
    /// Live flows per draining backend (absent: 0).
    pub live: BTreeMap<(Vip, IpAddr), u64>,
}

impl FakeDataplane {
    pub fn current(&self) -> &Snapshot {
        &self.current
    }

    fn apply_one(&mut self, vip: Vip, wanted: Option<&SnapVip>, report: &mut ApplyReport) {
        if self.refuse.contains(&vip) {
            let message = format!("VIP {vip}: writing map VIPS: Operation not permitted (os error 1)");
            report.failed.push(VipFailure { vip, capacity: false, message });
            return;
        }
        match (self.current.vips.get(&vip), wanted) {
            (None, None) => {}
            (Some(_), None) => {
                self.current.vips.remove(&vip);
                report.vips_removed += 1;
                report.writes += 1;
            }
            (None, Some(w)) => {
                if self.capacity.is_some_and(|c| self.current.vips.len() >= c) {
                    let message = format!("VIP {vip}: no room for another VIP (capacity {})", self.capacity.unwrap());
                    report.failed.push(VipFailure { vip, capacity: true, message });
                    return;
                }
                self.current.vips.insert(vip, w.clone());
                report.vips_added += 1;
                report.writes += 1;
            }
            (Some(old), Some(w)) if old != w => {
                self.current.vips.insert(vip, w.clone());
                report.vips_changed += 1;
                report.writes += 1;
            }
            (Some(_), Some(_)) => {}
        }
    }

    fn finish(&mut self, report: ApplyReport) -> ApplyReport {
        if !report.is_noop() {
            self.applied.push(self.current.clone());
        }
        report
    }
}

/// The fake has nothing to read off the loop: its live flows are set by the test.
pub struct NoCensus;

impl Census for NoCensus {
    type Found = ();
    fn run(self) {}
}

impl Dataplane for FakeDataplane {
    type Error = std::convert::Infallible;
    type Census = NoCensus;

    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, Self::Error> {
        let mut report = ApplyReport::default();
        let gone: Vec<Vip> = self.current.vips.keys().filter(|v| !snapshot.vips.contains_key(v)).copied().collect();
        for vip in gone {
            self.apply_one(vip, None, &mut report);
        }
        for (vip, wanted) in &snapshot.vips {
            self.apply_one(*vip, Some(wanted), &mut report);
        }
        Ok(self.finish(report))
    }

    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, Self::Error> {
        let mut report = ApplyReport::default();
        for (vip, wanted) in changes {
            self.apply_one(*vip, wanted.as_ref(), &mut report);
        }
        Ok(self.finish(report))
    }

    fn census(&self, _idle: std::time::Duration) -> NoCensus {
        NoCensus
    }

    fn maintain(&mut self, _found: ()) -> Result<Maintenance, Self::Error> {
        let mut m = Maintenance::default();
        for (vip, v) in &self.current.vips {
            for b in v.backends.iter().filter(|b| b.draining) {
                let live = self.live.get(&(*vip, b.addr)).copied().unwrap_or(0);
                m.live_flows.insert((*vip, b.addr), live);
            }
        }
        Ok(m)
    }

    fn programmed(&self, vip: &Vip) -> Option<Programmed> {
        let v = self.current.vips.get(vip)?;
        let mut p = Programmed::default();
        for b in &v.backends {
            match (b.draining, b.mac.is_some(), b.weight > 0) {
                (true, _, _) => p.draining += 1,
                (false, false, _) => p.unresolved += 1,
                (false, true, true) => {
                    p.serving += 1;
                    p.ramping += usize::from(b.progress < 100);
                }
                (false, true, false) => {}
            }
        }
        Some(p)
    }
}
