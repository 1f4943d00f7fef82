//! The snapshot builder: wanted state, ramp, link-layer addresses, live flows and the
//! clock in; the changes for the data plane out. No I/O, so it is tested with tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::dataplane::{SnapBackend, SnapVip};
use crate::model::{Desired, Vip};
use crate::ramp::{DrainPolicy, Effective, Event, Ramp, RampPolicy, Wanted};

use super::host::Users;

/// What the builder reads.
pub struct Inputs<'a> {
    pub desired: &'a Desired,
    /// The ramp for VIPs that set none of their own.
    pub ramp: RampPolicy,
    pub drain: &'a DrainPolicy,
    /// Live flows per draining backend, as the data plane last counted them.
    pub live: &'a BTreeMap<(Vip, IpAddr), u64>,
    /// A backend's link-layer address, when known.
    pub mac: &'a dyn Fn(IpAddr) -> Option<[u8; 6]>,
    pub now_ms: u64,
}

/// The changes for the VIPs planned.
#[derive(Debug, Default)]
pub struct Plan {
    /// `None`: the VIP is removed.
    pub changes: BTreeMap<Vip, Option<SnapVip>>,
    pub events: Vec<Event>,
    /// Backends taking new flows, with their effective weights.
    pub effective: Vec<(Vip, Effective)>,
    /// Backends no VIP uses any more.
    pub unused: Vec<IpAddr>,
}

/// Advances the ramp of every VIP in `vips` and builds what the data plane must hold
/// for it. `users` learns which VIPs use which backends.
pub fn plan(vips: &BTreeSet<Vip>, input: &Inputs<'_>, ramp: &mut Ramp, users: &mut Users) -> Plan {
    let mut plan = Plan::default();
    for vip in vips {
        let Some(spec) = input.desired.vips.get(vip) else {
            // A VIP that leaves takes its backends with it (no VIP, no flows).
            ramp.remove_vip(vip);
            plan.unused.extend(users.set(*vip, Vec::new()));
            plan.changes.insert(*vip, None);
            continue;
        };
        let wanted: Vec<Wanted> = spec
            .backends
            .iter()
            .map(|b| Wanted { addr: b.addr, target: b.weight, start_progress: b.start_progress, draining: b.draining })
            .collect();
        let live = input.live;
        let effective = ramp.advance_vip(
            vip,
            &spec.ramp.unwrap_or(input.ramp),
            &wanted,
            input.drain,
            input.now_ms,
            &|v, a| live.get(&(*v, a)).copied(),
            &mut plan.events,
        );
        let backends = effective
            .iter()
            .map(|e| SnapBackend {
                addr: e.addr,
                weight: e.weight,
                mac: (input.mac)(e.addr),
                draining: e.draining,
                target: e.target,
                progress: e.progress,
                since_ms: e.since_ms,
            })
            .collect();
        plan.unused.extend(users.set(*vip, effective.iter().map(|e| e.addr).collect()));
        plan.effective.extend(effective.iter().filter(|e| !e.draining).map(|e| (*vip, *e)));
        let snap = SnapVip {
            backends,
            affinity_timeout_s: spec.affinity_timeout_s,
            source_ranges: spec.source_ranges.clone(),
        };
        plan.changes.insert(*vip, Some(snap));
    }
    plan
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
