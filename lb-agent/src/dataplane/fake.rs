//! A data plane that only remembers: for tests of everything above the trait.

use super::{ApplyReport, Dataplane, Snapshot};

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
}
