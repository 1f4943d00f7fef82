//! VIPs that could not be applied (a full map, a write or an address the kernel
//! refused): each is retried on its own while every other VIP goes on, and reported
//! when its problem appears or changes, and again if it comes back after a fix.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::dataplane::VipFailure;
use crate::model::Vip;

/// How soon a failed VIP is tried again.
pub const RETRY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub capacity: bool,
    pub message: String,
    pub retry_at: Instant,
}

/// What one pass changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Failures that are new, or whose problem changed: to report.
    pub new: Vec<VipFailure>,
    /// VIPs that failed before and were applied now.
    pub fixed: Vec<Vip>,
}

#[derive(Debug, Default)]
pub struct Failures {
    current: BTreeMap<Vip, Failure>,
}

impl Failures {
    /// Takes the outcome of a pass over `tried`: the VIPs in `failed` failed, the rest
    /// of `tried` were applied (or removed).
    pub fn update(&mut self, tried: &BTreeSet<Vip>, failed: &[VipFailure], now: Instant) -> Changes {
        let mut changes = Changes::default();
        let failed_now: BTreeSet<Vip> = failed.iter().map(|f| f.vip).collect();
        for vip in tried.iter().filter(|v| !failed_now.contains(v)) {
            if self.current.remove(vip).is_some() {
                changes.fixed.push(*vip);
            }
        }
        for f in failed {
            let next = Failure { capacity: f.capacity, message: f.message.clone(), retry_at: now + RETRY };
            let old = self.current.insert(f.vip, next);
            if old.is_none_or(|o| o.message != f.message) {
                changes.new.push(f.clone());
            }
        }
        changes
    }

    /// Failed VIPs due for another try.
    pub fn due(&self, now: Instant) -> Vec<Vip> {
        self.current.iter().filter(|(_, f)| f.retry_at <= now).map(|(v, _)| *v).collect()
    }

    /// Forgets a VIP that is no longer wanted.
    pub fn forget(&mut self, vip: &Vip) {
        self.current.remove(vip);
    }

    pub fn get(&self, vip: &Vip) -> Option<&Failure> {
        self.current.get(vip)
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn capacity_count(&self) -> usize {
        self.current.values().filter(|f| f.capacity).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(port: u16) -> Vip {
        format!("192.0.2.1:{port}/tcp").parse().unwrap()
    }

    fn fail(port: u16, message: &str) -> VipFailure {
        VipFailure { vip: vip(port), capacity: false, message: message.into() }
    }

    #[test]
    fn reported_when_new_changed_or_back_after_a_fix() {
        let (mut f, t0) = (Failures::default(), Instant::now());
        let tried: BTreeSet<Vip> = [vip(80), vip(81)].into();
        let c = f.update(&tried, &[fail(80, "full")], t0);
        assert_eq!(c.new, vec![fail(80, "full")]);
        // The same problem again: not reported again.
        assert!(f.update(&tried, &[fail(80, "full")], t0).new.is_empty());
        // Another problem: reported.
        assert_eq!(f.update(&tried, &[fail(80, "refused")], t0).new.len(), 1);
        // Fixed, then back: fixed once, reported again.
        let c = f.update(&tried, &[], t0);
        assert_eq!((c.fixed, c.new.len()), (vec![vip(80)], 0));
        assert_eq!(f.update(&tried, &[fail(80, "refused")], t0).new.len(), 1);
    }

    #[test]
    fn only_tried_vips_count_as_fixed_and_retries_wait() {
        let (mut f, t0) = (Failures::default(), Instant::now());
        f.update(&[vip(80)].into(), &[fail(80, "full")], t0);
        // A pass over other VIPs says nothing about this one.
        assert!(f.update(&[vip(81)].into(), &[], t0).fixed.is_empty());
        assert!(f.due(t0).is_empty());
        assert_eq!(f.due(t0 + RETRY), vec![vip(80)]);
        f.forget(&vip(80));
        assert_eq!(f.len(), 0);
    }
}
