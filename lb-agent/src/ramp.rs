//! Slow start and drain: target weights -> effective weights over time. Pure: the
//! caller supplies the clock and the live-flow counts.
//!
//! A backend's ramp is recorded as (progress, time of its last step), so the ramp goes
//! on exactly where it was after a restart (the agent reads both back from `BACKENDS`).
//! Progress rises by `step` points every `interval` until 100 %. Backends that are in a
//! VIP when the VIP first appears start at 100 % (there is nothing to protect them
//! from); backends added later start at their start progress (default 0 %).
//!
//! A backend that leaves the wanted state, or is marked draining, gets weight 0 at once
//! and is kept (its established flows continue) until its live flows reach 0 (after at
//! least `min_drain`) or `drain_timeout` passes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use crate::model::Vip;

pub use crate::model::{DrainPolicy, RampPolicy};

/// One backend as wanted by a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub addr: IpAddr,
    pub target: u32,
    /// Starting progress for a new backend (percent); `None` = the default (0).
    pub start_progress: Option<u32>,
    /// Marked draining by its source (e.g. a terminating endpoint).
    pub draining: bool,
}

/// What the ramp remembers of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub target: u32,
    pub progress: u32,
    /// Unix ms of the last ramp step (or of the ramp start).
    pub step_at_ms: u64,
    /// Unix ms when the drain started.
    pub draining_since_ms: Option<u64>,
}

/// One backend's weights now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub addr: IpAddr,
    pub target: u32,
    pub weight: u32,
    pub progress: u32,
    pub draining: bool,
    /// Unix ms: last ramp step, or drain start when draining.
    pub since_ms: u64,
}

/// A state change worth telling the user about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    RampStarted { vip: Vip, backend: IpAddr, progress: u32 },
    RampFinished { vip: Vip, backend: IpAddr },
    DrainStarted { vip: Vip, backend: IpAddr },
    DrainFinished { vip: Vip, backend: IpAddr, live_flows: u64, timed_out: bool },
}

#[derive(Default)]
pub struct Ramp {
    records: BTreeMap<Vip, BTreeMap<IpAddr, Record>>,
    /// VIPs with a backend ramping or draining: time alone changes their weights.
    busy: BTreeSet<Vip>,
}

fn is_busy(r: &Record) -> bool {
    r.progress < 100 || r.draining_since_ms.is_some()
}

/// Effective weight for a target at a progress: never 0 while both are above 0.
pub fn effective_weight(target: u32, progress: u32) -> u32 {
    if target == 0 || progress == 0 {
        return 0;
    }
    ((target as u64 * progress.min(100) as u64) / 100).max(1) as u32
}

impl Ramp {
    /// Restores records read back from a data plane after a restart.
    pub fn restore(&mut self, vip: Vip, addr: IpAddr, record: Record) {
        if is_busy(&record) {
            self.busy.insert(vip);
        }
        self.records.entry(vip).or_default().insert(addr, record);
    }

    /// Is any backend ramping or draining (so that time alone changes weights)?
    pub fn busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// The VIPs with a backend ramping or draining.
    pub fn busy_vips(&self) -> &BTreeSet<Vip> {
        &self.busy
    }

    /// The VIPs with ramp records.
    pub fn vips(&self) -> impl Iterator<Item = Vip> + '_ {
        self.records.keys().copied()
    }

    /// Forgets a VIP that left the wanted state, with its backends (no VIP, no flows).
    pub fn remove_vip(&mut self, vip: &Vip) {
        self.records.remove(vip);
        self.busy.remove(vip);
    }

    pub fn record(&self, vip: &Vip, addr: IpAddr) -> Option<&Record> {
        self.records.get(vip)?.get(&addr)
    }

    /// Advances every ramp and drain to `now_ms` and returns the effective weights of
    /// every VIP. `live_flows(vip, addr)` counts a draining backend's live flows
    /// (`None`: unknown, so the drain runs to its timeout).
    pub fn advance(
        &mut self,
        wanted: &BTreeMap<Vip, (RampPolicy, Vec<Wanted>)>,
        drain: &DrainPolicy,
        now_ms: u64,
        live_flows: impl Fn(&Vip, IpAddr) -> Option<u64>,
        events: &mut Vec<Event>,
    ) -> BTreeMap<Vip, Vec<Effective>> {
        let gone: Vec<Vip> = self.records.keys().filter(|v| !wanted.contains_key(v)).copied().collect();
        for vip in gone {
            self.remove_vip(&vip);
        }
        wanted
            .iter()
            .map(|(vip, (policy, backends))| {
                (*vip, self.advance_vip(vip, policy, backends, drain, now_ms, &live_flows, events))
            })
            .collect()
    }

    /// Advances one VIP's ramps and drains to `now_ms` and returns its effective weights.
    #[allow(clippy::too_many_arguments)]
    pub fn advance_vip(
        &mut self,
        vip: &Vip,
        policy: &RampPolicy,
        backends: &[Wanted],
        drain: &DrainPolicy,
        now_ms: u64,
        live_flows: &impl Fn(&Vip, IpAddr) -> Option<u64>,
        events: &mut Vec<Event>,
    ) -> Vec<Effective> {
        // A VIP's first backends start at full weight: there is no one to protect from
        // them. (A Service is usually seen before its EndpointSlice, so "first" is "no
        // backend yet", not "VIP not seen yet".)
        let new_vip = self.records.get(vip).is_none_or(|r| r.is_empty());
        let recs = self.records.entry(*vip).or_default();
        let mut eff = Vec::with_capacity(backends.len());
        for w in backends {
            let rec = recs.entry(w.addr).or_insert_with(|| {
                let progress = if new_vip { w.start_progress.unwrap_or(100) } else { w.start_progress.unwrap_or(0) };
                let progress = progress.min(100);
                if progress < 100 {
                    events.push(Event::RampStarted { vip: *vip, backend: w.addr, progress });
                }
                Record { target: w.target, progress, step_at_ms: now_ms, draining_since_ms: None }
            });
            rec.target = w.target;
            if w.draining {
                start_drain(rec, vip, w.addr, now_ms, events);
            } else {
                if rec.draining_since_ms.take().is_some() {
                    // Back from a drain: ramp again from its start.
                    rec.progress = w.start_progress.unwrap_or(0).min(100);
                    rec.step_at_ms = now_ms;
                }
                step(rec, policy, now_ms, vip, w.addr, events);
            }
            eff.push(to_effective(w.addr, rec));
        }
        // Backends that left the wanted state drain, then go.
        if recs.len() > eff.len() {
            let listed: std::collections::HashSet<IpAddr> = backends.iter().map(|w| w.addr).collect();
            let leaving: Vec<IpAddr> = recs.keys().filter(|a| !listed.contains(a)).copied().collect();
            for addr in leaving {
                let rec = recs.get_mut(&addr).expect("listed above");
                start_drain(rec, vip, addr, now_ms, events);
                eff.push(to_effective(addr, rec));
            }
        }
        finish_drains(recs, &mut eff, vip, drain, now_ms, live_flows, events);
        floor_when_all_ramping(&mut eff, policy);
        if recs.values().any(is_busy) {
            self.busy.insert(*vip);
        } else {
            self.busy.remove(vip);
        }
        eff
    }
}

fn start_drain(rec: &mut Record, vip: &Vip, addr: IpAddr, now_ms: u64, events: &mut Vec<Event>) {
    if rec.draining_since_ms.is_none() {
        rec.draining_since_ms = Some(now_ms);
        events.push(Event::DrainStarted { vip: *vip, backend: addr });
    }
}

fn step(rec: &mut Record, policy: &RampPolicy, now_ms: u64, vip: &Vip, addr: IpAddr, events: &mut Vec<Event>) {
    if rec.progress >= 100 {
        return;
    }
    let interval = policy.interval.as_millis().max(1) as u64;
    let steps = now_ms.saturating_sub(rec.step_at_ms) / interval;
    if steps == 0 {
        return;
    }
    rec.progress = (rec.progress as u64 + steps * policy.step as u64).min(100) as u32;
    rec.step_at_ms += steps * interval;
    if rec.progress == 100 {
        events.push(Event::RampFinished { vip: *vip, backend: addr });
    }
}

fn to_effective(addr: IpAddr, rec: &Record) -> Effective {
    let draining = rec.draining_since_ms.is_some();
    Effective {
        addr,
        target: rec.target,
        weight: if draining { 0 } else { effective_weight(rec.target, rec.progress) },
        progress: rec.progress,
        draining,
        since_ms: rec.draining_since_ms.unwrap_or(rec.step_at_ms),
    }
}

/// Removes drained backends whose flows are gone (after `min_drain`) or whose time is up.
fn finish_drains(
    recs: &mut BTreeMap<IpAddr, Record>,
    eff: &mut Vec<Effective>,
    vip: &Vip,
    drain: &DrainPolicy,
    now_ms: u64,
    live_flows: &impl Fn(&Vip, IpAddr) -> Option<u64>,
    events: &mut Vec<Event>,
) {
    eff.retain(|e| {
        let Some(since) = recs.get(&e.addr).and_then(|r| r.draining_since_ms) else { return true };
        let age = Duration::from_millis(now_ms.saturating_sub(since));
        let live = live_flows(vip, e.addr);
        let timed_out = age >= drain.timeout;
        let empty = age >= drain.min_drain && live == Some(0);
        if timed_out || empty {
            events.push(Event::DrainFinished {
                vip: *vip,
                backend: e.addr,
                live_flows: live.unwrap_or(0),
                timed_out: !empty,
            });
            recs.remove(&e.addr);
            false
        } else {
            true
        }
    });
}

/// A VIP never goes dark because every backend is still ramping: if no backend has
/// weight but some want it, those ramp from at least one step.
fn floor_when_all_ramping(eff: &mut [Effective], policy: &RampPolicy) {
    if eff.iter().any(|e| e.weight > 0) {
        return;
    }
    for e in eff.iter_mut().filter(|e| !e.draining && e.target > 0) {
        e.weight = effective_weight(e.target, e.progress.max(policy.step));
    }
}

#[cfg(test)]
mod tests;
