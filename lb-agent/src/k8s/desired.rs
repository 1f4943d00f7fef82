//! Kubernetes objects -> the wanted state. Pure and incremental: every Service is judged
//! on its own (a problem with one Service, reported as an Event on it, never affects the
//! others), and a change to one Service or its EndpointSlices recomputes that Service
//! and the VIPs it touches, nothing else.
//!
//! * A Service of type LoadBalancer is ours when its `spec.loadBalancerClass` is our
//!   class (or, with `--kube-default-class`, when it has none).
//! * Its address: `spec.loadBalancerIP`, or the annotation `ADDRESS_ANNOTATION`.
//! * Every TCP/UDP port becomes a VIP (address, port, protocol). Direct server return
//!   cannot translate ports: an endpoint's port must equal the Service port.
//! * Endpoints (EndpointSlices labelled with the Service name): ready -> in; serving and
//!   terminating -> draining (weight 0, flows continue); anything else -> out. The pod's
//!   `progress` label sets a new backend's starting ramp percentage.
//! * Two Services claiming the same VIP: the older one keeps it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::jiff::Timestamp;

use super::objects::{EndpointState, Family, PortView, ServiceView, SliceView};
use crate::model::{BackendSpec, Desired, Protocol, Vip, VipSpec};

pub const DEFAULT_CLASS: &str = "lb-agent.io/xdp";
pub use super::objects::{ServiceKey, ADDRESS_ANNOTATION, PROGRESS_LABEL};
pub use super::problem::{ServiceOutcome, ServiceProblem};

/// One port of a Service, judged on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PortOutcome {
    /// The VIP and what it would hold, unless an older Service claims it.
    Vip(Vip, VipSpec),
    Problem(ServiceProblem),
}

/// One Service judged on its own, before contested VIPs are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    address: Option<IpAddr>,
    ports: Vec<PortOutcome>,
    /// Backend address -> its pod (namespace, name), for writing progress back.
    pods: HashMap<IpAddr, (String, String)>,
}

/// Who claims a VIP, oldest first: (creation time, Service).
type Claim = (Option<Timestamp>, ServiceKey);

/// The wanted state, kept up to date one Service at a time.
#[derive(Debug, Default)]
pub struct State {
    candidates: HashMap<ServiceKey, (Claim, Candidate)>,
    claims: BTreeMap<Vip, BTreeSet<Claim>>,
    pub desired: Desired,
    /// Every Service of ours, with what became of it.
    pub services: BTreeMap<ServiceKey, ServiceOutcome>,
}

/// What an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// VIPs whose wanted state changed (added, removed or different).
    pub vips: BTreeSet<Vip>,
    /// Services whose outcome changed or that are no longer ours.
    pub services: BTreeSet<ServiceKey>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.services.is_empty()
    }
}

fn requested_address(s: &ServiceView) -> Result<IpAddr, ServiceProblem> {
    let value = s.requested.clone().ok_or(ServiceProblem::NoAddress)?;
    let addr: IpAddr = value.trim().parse().map_err(|_| ServiceProblem::BadAddress { value })?;
    match crate::config::unusable_vip(addr) {
        Some(kind) => Err(ServiceProblem::UnusableAddress { addr, kind }),
        None => Ok(addr),
    }
}

/// The backends of one Service port, from its EndpointSlices.
fn backends(
    slices: &[&SliceView],
    port: &PortView,
    vip: &Vip,
    progress: &impl Fn(&str, &str) -> Option<u32>,
    pods: &mut HashMap<IpAddr, (String, String)>,
) -> Result<Vec<BackendSpec>, ServiceProblem> {
    let family = if vip.addr.is_ipv4() { Family::V4 } else { Family::V6 };
    let mut list: Vec<BackendSpec> = Vec::new();
    for slice in slices.iter().filter(|s| s.family == family) {
        let slice_port = slice.ports.iter().find(|(name, _)| *name == port.name);
        if let Some(ep) = slice_port.and_then(|(_, p)| *p) {
            if ep != port.port {
                return Err(ServiceProblem::PortMismatch { port: port.port, endpoint_port: ep });
            }
        }
        for e in slice.endpoints.iter() {
            let draining = e.state == EndpointState::Draining;
            for &addr in e.addrs.iter() {
                if list.iter().any(|b| b.addr == addr) {
                    continue;
                }
                let start_progress = e.pod.as_ref().and_then(|p| progress(&p.0, &p.1));
                if let Some(p) = &e.pod {
                    pods.insert(addr, (**p).clone());
                }
                list.push(BackendSpec { addr, weight: 1, start_progress, draining });
            }
        }
    }
    Ok(list)
}

fn candidate(svc: &ServiceView, slices: &[&SliceView], progress: &impl Fn(&str, &str) -> Option<u32>) -> Candidate {
    let mut c = Candidate { address: None, ports: vec![], pods: HashMap::new() };
    let address = match requested_address(svc) {
        Ok(a) => a,
        Err(p) => {
            c.ports.push(PortOutcome::Problem(p));
            return c;
        }
    };
    c.address = Some(address);
    let ranges = match crate::config::parse_source_ranges("spec.loadBalancerSourceRanges", &svc.source_ranges) {
        Ok(r) => r,
        Err(error) => {
            c.ports.push(PortOutcome::Problem(ServiceProblem::BadSourceRange { error }));
            return c;
        }
    };
    for port in &svc.ports {
        let proto = match port.protocol.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => {
                let problem = ServiceProblem::UnsupportedProtocol { port: port.port, protocol: port.protocol.clone() };
                c.ports.push(PortOutcome::Problem(problem));
                continue;
            }
        };
        let vip = Vip { addr: address, port: port.port as u16, proto };
        if c.ports.iter().any(|p| matches!(p, PortOutcome::Vip(v, _) if *v == vip)) {
            let problem = ServiceProblem::Conflict { vip, owner: svc.key.clone() };
            c.ports.push(PortOutcome::Problem(problem));
            continue;
        }
        c.ports.push(match backends(slices, port, &vip, progress, &mut c.pods) {
            Ok(backends) => {
                let spec = VipSpec {
                    backends,
                    ramp: None,
                    affinity_timeout_s: svc.affinity_timeout_s,
                    source_ranges: ranges.clone(),
                };
                PortOutcome::Vip(vip, spec)
            }
            Err(p) => PortOutcome::Problem(p),
        });
    }
    c
}

fn claimed(c: &Candidate) -> impl Iterator<Item = &Vip> {
    c.ports.iter().filter_map(|p| match p {
        PortOutcome::Vip(v, _) => Some(v),
        PortOutcome::Problem(_) => None,
    })
}

impl State {
    /// The wanted state from every Service and EndpointSlice at once.
    pub fn compute(
        services: &[&ServiceView],
        slices: &[&SliceView],
        progress: impl Fn(&str, &str) -> Option<u32>,
    ) -> State {
        let mut by_service: HashMap<&ServiceKey, Vec<&SliceView>> = HashMap::new();
        for s in slices {
            if let Some(k) = &s.service {
                by_service.entry(k).or_default().push(s);
            }
        }
        let mut state = State::default();
        let mut update = Update::default();
        for svc in services {
            let mine = by_service.get(&svc.key).map(Vec::as_slice).unwrap_or(&[]);
            state.update(&svc.key, Some(svc), mine, &progress, &mut update);
        }
        state
    }

    /// Brings one Service up to date: `svc` is the Service now (`None`: deleted), `slices`
    /// its EndpointSlices, `progress` a pod's `progress` label. What changed is added to
    /// `out`.
    pub fn update(
        &mut self,
        key: &ServiceKey,
        svc: Option<&ServiceView>,
        slices: &[&SliceView],
        progress: &impl Fn(&str, &str) -> Option<u32>,
        out: &mut Update,
    ) {
        let new = svc.filter(|s| s.ours).map(|s| ((s.created, key.clone()), candidate(s, slices, progress)));
        let old = self.candidates.remove(key);
        if old == new {
            if let Some(old) = old {
                self.candidates.insert(key.clone(), old);
            }
            return;
        }
        let mut touched: BTreeSet<Vip> = BTreeSet::new();
        if let Some((claim, c)) = &old {
            for vip in claimed(c) {
                touched.insert(*vip);
                if let Some(set) = self.claims.get_mut(vip) {
                    set.remove(claim);
                    if set.is_empty() {
                        self.claims.remove(vip);
                    }
                }
            }
        }
        if let Some((claim, c)) = &new {
            for vip in claimed(c) {
                touched.insert(*vip);
                self.claims.entry(*vip).or_default().insert(claim.clone());
            }
        }
        if let Some(new) = new {
            self.candidates.insert(key.clone(), new);
        }
        let mut affected: BTreeSet<ServiceKey> = BTreeSet::from([key.clone()]);
        for vip in &touched {
            affected.extend(self.claims.get(vip).into_iter().flatten().map(|(_, k)| k.clone()));
            let wanted = self.owner(vip).and_then(|k| self.spec(k, vip)).cloned();
            let changed = match wanted {
                Some(spec) => self.desired.vips.insert(*vip, spec.clone()).as_ref() != Some(&spec),
                None => self.desired.vips.remove(vip).is_some(),
            };
            if changed {
                out.vips.insert(*vip);
            }
        }
        for k in affected {
            let outcome = self.candidates.get(&k).map(|(_, c)| self.outcome(&k, c));
            let changed = match outcome {
                Some(o) => self.services.insert(k.clone(), o.clone()).as_ref() != Some(&o),
                None => self.services.remove(&k).is_some(),
            };
            if changed {
                out.services.insert(k);
            }
        }
    }

    /// The Service that owns a VIP: the oldest one claiming it.
    pub fn owner(&self, vip: &Vip) -> Option<&ServiceKey> {
        self.claims.get(vip)?.first().map(|(_, k)| k)
    }

    fn spec(&self, key: &ServiceKey, vip: &Vip) -> Option<&VipSpec> {
        self.candidates.get(key)?.1.ports.iter().find_map(|p| match p {
            PortOutcome::Vip(v, spec) if v == vip => Some(spec),
            _ => None,
        })
    }

    /// The pod (namespace, name) behind a backend of a VIP.
    pub fn pod_of(&self, vip: &Vip, addr: IpAddr) -> Option<&(String, String)> {
        self.candidates.get(self.owner(vip)?)?.1.pods.get(&addr)
    }

    fn outcome(&self, key: &ServiceKey, c: &Candidate) -> ServiceOutcome {
        let mut outcome = ServiceOutcome { address: c.address, ..Default::default() };
        let mut any_ready = false;
        for p in &c.ports {
            match p {
                PortOutcome::Problem(p) => outcome.problems.push(p.clone()),
                PortOutcome::Vip(vip, spec) => match self.owner(vip) {
                    Some(owner) if owner != key => {
                        outcome.problems.push(ServiceProblem::Conflict { vip: *vip, owner: owner.clone() })
                    }
                    _ => {
                        any_ready |= spec.backends.iter().any(|b| !b.draining);
                        outcome.vips.push(*vip);
                    }
                },
            }
        }
        if !outcome.vips.is_empty() && !any_ready {
            outcome.problems.push(ServiceProblem::NoReadyEndpoints);
        }
        outcome
    }
}

#[cfg(test)]
mod tests;
