//! A data plane that only remembers: for tests of everything above the trait.

use std::collections::BTreeMap;

use super::{ApplyReport, Dataplane, Maintenance, SnapVip, Snapshot};
use crate::model::Vip;

#[derive(Default)]
pub struct FakeDataplane {
    pub applied: Vec<Snapshot>,
    current: Snapshot,
}

impl FakeDataplane {
    pub fn current(&self) -> &Snapshot {
        &self.current
    }
}

impl Dataplane for FakeDataplane {
    type Error = std::convert::Infallible;
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, Self::Error> {
        let mut report = ApplyReport::default();
        for (vip, backends) in &snapshot.vips {
            match self.current.vips.get(vip) {
                None => report.vips_added += 1,
                Some(old) if old != backends => report.vips_changed += 1,
                Some(_) => {}
            }
        }
        report.vips_removed = self.current.vips.keys().filter(|v| !snapshot.vips.contains_key(v)).count();
        report.writes = report.vips_added + report.vips_changed + report.vips_removed;
        if !report.is_noop() {
            self.current = snapshot.clone();
            self.applied.push(snapshot.clone());
        }
        Ok(report)
    }

    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, Self::Error> {
        let mut next = self.current.clone();
        for (vip, v) in changes {
            match v {
                Some(v) => next.vips.insert(*vip, v.clone()),
                None => next.vips.remove(vip),
            };
        }
        self.apply(&next)
    }

    /// The fake has no flows: every draining backend counts as empty.
    fn maintain(&mut self, _idle: std::time::Duration) -> Result<Maintenance, Self::Error> {
        let mut m = Maintenance::default();
        for (vip, v) in &self.current.vips {
            for b in v.backends.iter().filter(|b| b.draining) {
                m.live_flows.insert((*vip, b.addr), 0);
            }
        }
        Ok(m)
    }
}
