//! Where the wanted state comes from, behind one face: flags and the config file, or
//! Kubernetes (watches, the incremental wanted state and the reporter). The loop asks
//! a `Source` what changed and tells it what became of each sync; only this file knows
//! which kind it has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tracing::{info, warn};

use crate::dataplane::{Dataplane, VipFailure};
use crate::k8s::desired::{self, ServiceKey, ServiceProblem};
use crate::k8s::held::{Held, VipHeld};
use crate::k8s::report::{HostState, Report, ReportSender};
use crate::k8s::watch::KubeSource;
use crate::model::{Desired, Vip, VipSpec};
use crate::netlink::{self, Link};
use crate::ramp::{Effective, Event};

use super::failures::Failures;

pub enum Source {
    /// Flags and the config file (re-read on SIGHUP and when it changes).
    Static,
    Kube(Box<Kube>),
}

pub struct Kube {
    pub watch: KubeSource,
    pub report: ReportSender,
    pub state: desired::State,
    /// Services whose outcome (wanted or held) changed since the last report.
    pub changed: BTreeSet<ServiceKey>,
    /// What the reporter was last told of this host.
    pub reported_host: Option<HostState>,
    /// What was last reported as held, per VIP.
    pub held: BTreeMap<Vip, VipHeld>,
    /// Endpoints left out per VIP (not on the interface's subnets).
    pub off_link: BTreeMap<Vip, Vec<IpAddr>>,
    /// Live flows of draining backends last reported, per VIP.
    pub draining_flows: BTreeMap<Vip, u64>,
}

/// Everything a report needs from one sync.
pub struct Outcome<'a, D: Dataplane> {
    pub mode: &'a str,
    /// A failure of the sync as a whole (not of one VIP).
    pub error: Option<String>,
    /// The VIPs the sync covered.
    pub tried: &'a BTreeSet<Vip>,
    pub dp: &'a D,
    pub failures: &'a Failures,
    pub live: &'a BTreeMap<(Vip, IpAddr), u64>,
    pub effective: &'a [(Vip, Effective)],
    pub events: &'a [Event],
    /// Failures new in this sync (Warning Events).
    pub new_failures: &'a [VipFailure],
    /// Parts of changes refused in this sync (Warning Events).
    pub notices: &'a [(Vip, String)],
}

impl Source {
    pub fn is_static(&self) -> bool {
        matches!(self, Source::Static)
    }

    /// The watches to wait on (Kubernetes only).
    pub fn watch(&self) -> Option<KubeSource> {
        match self {
            Source::Kube(k) => Some(k.watch.clone()),
            Source::Static => None,
        }
    }

    /// After the caches listed: the whole wanted state.
    pub fn initial(&mut self, link: &Link) -> Option<Desired> {
        let Source::Kube(k) = self else { return None };
        {
            let mut cache = k.watch.lock();
            cache.take_dirty();
            k.state = cache.compute();
        }
        k.changed.extend(k.state.services.keys().cloned());
        let mut desired = k.state.desired.clone();
        for (vip, spec) in desired.vips.iter_mut() {
            k.off_link.insert(*vip, on_link_only(vip, spec, link));
        }
        Some(desired)
    }

    /// Takes what changed in the Kubernetes caches into `desired`: only the Services
    /// marked, and the VIPs they touch, which are returned.
    pub fn take_changes(&mut self, desired: &mut Desired, link: &Link) -> BTreeSet<Vip> {
        let Source::Kube(k) = self else { return BTreeSet::new() };
        let mut update = desired::Update::default();
        k.watch.lock().update(&mut k.state, &mut update);
        for vip in &update.vips {
            match k.state.desired.vips.get(vip) {
                Some(spec) => {
                    let mut spec = spec.clone();
                    let skipped = on_link_only(vip, &mut spec, link);
                    if k.off_link.insert(*vip, skipped.clone()).unwrap_or_default() != skipped {
                        k.changed.extend(k.state.owner(vip).cloned());
                    }
                    desired.vips.insert(*vip, spec);
                }
                None => {
                    k.off_link.remove(vip);
                    desired.vips.remove(vip);
                }
            }
        }
        k.changed.extend(update.services);
        update.vips
    }

    /// Tells the reporter (Kubernetes only) how this host is, what became of the
    /// Services that changed (wanted and held), the backends' progress and the events.
    pub fn report<D: Dataplane>(&mut self, o: &Outcome<'_, D>) {
        let Source::Kube(k) = self else { return };
        let host = HostState { mode: o.mode.to_string(), error: o.error.clone() };
        if k.reported_host.as_ref() != Some(&host) {
            k.report.send(Report::Host(host.clone()));
            k.reported_host = Some(host);
        }
        for vip in o.tried {
            let now = held_now(vip, o);
            let flows = live_of(vip, o.live);
            let flows_changed = k.draining_flows.insert(*vip, flows).unwrap_or(0) != flows;
            if k.held.get(vip) != Some(&now) || flows_changed {
                k.held.insert(*vip, now);
                k.changed.extend(k.state.owner(vip).cloned());
            }
        }
        for (vip, why) in o.notices {
            if let Some(owner) = k.state.owner(vip) {
                k.report.send(Report::Warning(owner.clone(), "ChangeRefused", why.clone()));
            }
        }
        for f in o.new_failures {
            if let Some(owner) = k.state.owner(&f.vip) {
                let reason = if f.capacity { "CapacityExceeded" } else { "NotProgrammed" };
                k.report.send(Report::Warning(owner.clone(), reason, f.message.clone()));
            }
        }
        if !k.changed.is_empty() {
            let keys = std::mem::take(&mut k.changed);
            let list = keys.into_iter().map(|key| {
                let outcome = k.state.services.get(&key).cloned().map(|mut out| {
                    out.held = held_of(&out.vips, &k.held, &k.off_link, o.live);
                    if !out.held.off_link.is_empty() {
                        out.problems.push(ServiceProblem::EndpointsSkipped { addrs: out.held.off_link.clone() });
                    }
                    out
                });
                (key, outcome)
            });
            k.report.send(Report::Services(list.collect()));
        }
        let progress: Vec<(IpAddr, (String, String), u32)> = o
            .effective
            .iter()
            .filter_map(|(vip, e)| Some((e.addr, k.state.pod_of(vip, e.addr)?.clone(), e.progress)))
            .collect();
        if !progress.is_empty() {
            k.report.send(Report::Progress(progress));
        }
        for ev in o.events {
            let (vip, note, reason) = match ev {
                Event::RampFinished { vip, backend } => {
                    (vip, format!("backend {backend} reached full weight"), "RampFinished")
                }
                Event::DrainFinished { vip, backend, live_flows, timed_out } => (
                    vip,
                    format!(
                        "backend {backend} drained ({}; {live_flows} live flows)",
                        if *timed_out { "timed out" } else { "no flows left" }
                    ),
                    "DrainFinished",
                ),
                _ => continue,
            };
            if let Some(key) = k.state.owner(vip) {
                k.report.send(Report::Event(key.clone(), reason, format!("{vip}: {note}")));
            }
        }
    }
}

fn held_now<D: Dataplane>(vip: &Vip, o: &Outcome<'_, D>) -> VipHeld {
    match (o.failures.get(vip), o.dp.programmed(vip)) {
        (Some(f), _) => VipHeld::Failed(f.message.clone()),
        (None, Some(p)) => VipHeld::Programmed(p),
        (None, None) => VipHeld::Missing,
    }
}

fn held_of(
    vips: &[Vip],
    held: &BTreeMap<Vip, VipHeld>,
    off_link: &BTreeMap<Vip, Vec<IpAddr>>,
    live: &BTreeMap<(Vip, IpAddr), u64>,
) -> Held {
    let mut out = Held::default();
    for vip in vips {
        out.vips.insert(*vip, held.get(vip).cloned().unwrap_or(VipHeld::Missing));
        out.off_link.extend(off_link.get(vip).into_iter().flatten().copied());
        out.draining_flows += live_of(vip, live);
    }
    out.off_link.sort();
    out.off_link.dedup();
    out
}

fn live_of(vip: &Vip, live: &BTreeMap<(Vip, IpAddr), u64>) -> u64 {
    live.range((*vip, IpAddr::from([0u8; 4]))..).take_while(|((v, _), _)| v == vip).map(|(_, n)| n).sum()
}

/// Leaves out the backends that are not on the interface's subnets (direct server
/// return cannot reach them), with a log line; returns them. The rest of the VIP stays.
pub fn on_link_only(vip: &Vip, spec: &mut VipSpec, link: &Link) -> Vec<IpAddr> {
    let mut skipped = Vec::new();
    spec.backends.retain(|b| {
        let ok = netlink::on_link(link, b.addr);
        if !ok {
            skipped.push(b.addr);
        }
        ok
    });
    if !skipped.is_empty() {
        warn!(%vip, skipped = ?skipped, iface = %link.name, "backends skipped: not on the interface's subnets");
    }
    skipped
}

/// Logs the ramp's events.
pub fn log_events(events: &[Event]) {
    for e in events {
        match e {
            Event::RampStarted { vip, backend, progress } => info!(%vip, %backend, progress, "ramp started"),
            Event::RampFinished { vip, backend } => info!(%vip, %backend, "ramp finished"),
            Event::DrainStarted { vip, backend } => info!(%vip, %backend, "drain started: no new flows"),
            Event::DrainFinished { vip, backend, live_flows, timed_out } => {
                info!(%vip, %backend, live_flows, timed_out, "drain finished: backend removed")
            }
        }
    }
}
