//! Kubernetes objects -> the wanted state. Pure: every Service is judged on its own, and
//! a problem with one Service (reported as an Event on it) never affects the others.
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

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::core::PartialObjectMeta;
use kube::ResourceExt;

use crate::config::DEFAULT_AFFINITY_TIMEOUT_S;
use crate::model::{BackendSpec, Desired, Protocol, Vip, VipSpec};

pub const DEFAULT_CLASS: &str = "lb-agent.io/xdp";
pub const ADDRESS_ANNOTATION: &str = "lb-agent.io/load-balancer-ip";
pub const PROGRESS_LABEL: &str = "progress";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A problem with one Service, reported as a Warning Event on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceProblem {
    NoAddress,
    BadAddress { value: String },
    UnsupportedProtocol { port: i32, protocol: String },
    PortMismatch { port: i32, endpoint_port: i32 },
    Conflict { vip: Vip, owner: ServiceKey },
    NoReadyEndpoints,
}

impl ServiceProblem {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceProblem::NoAddress => "NoAddress",
            ServiceProblem::BadAddress { .. } => "InvalidAddress",
            ServiceProblem::UnsupportedProtocol { .. } => "UnsupportedProtocol",
            ServiceProblem::PortMismatch { .. } => "PortMismatch",
            ServiceProblem::Conflict { .. } => "AddressConflict",
            ServiceProblem::NoReadyEndpoints => "NoReadyEndpoints",
        }
    }
}

impl fmt::Display for ServiceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceProblem::NoAddress => {
                write!(f, "no address requested: set spec.loadBalancerIP or the {ADDRESS_ANNOTATION} annotation")
            }
            ServiceProblem::BadAddress { value } => write!(f, "requested address {value:?} is not an IP address"),
            ServiceProblem::UnsupportedProtocol { port, protocol } => {
                write!(f, "port {port}: protocol {protocol} is not supported (TCP and UDP are)")
            }
            ServiceProblem::PortMismatch { port, endpoint_port } => write!(
                f,
                "port {port}: endpoints listen on {endpoint_port}; direct server return cannot translate ports, so targetPort must equal port"
            ),
            ServiceProblem::Conflict { vip, owner } => write!(f, "{vip} is already used by Service {owner} (the older one keeps it)"),
            ServiceProblem::NoReadyEndpoints => write!(f, "no ready endpoints: traffic to its VIPs is dropped"),
        }
    }
}

/// What became of one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceOutcome {
    pub address: Option<IpAddr>,
    /// VIPs this Service owns in the wanted state.
    pub vips: Vec<Vip>,
    pub problems: Vec<ServiceProblem>,
}

#[derive(Clone, Debug, Default)]
pub struct Computed {
    pub desired: Desired,
    pub services: BTreeMap<ServiceKey, ServiceOutcome>,
    /// Backend address -> (namespace, pod name), for writing progress back.
    pub pods: BTreeMap<IpAddr, (String, String)>,
}

#[derive(Clone, Debug)]
pub struct Selection {
    pub class: String,
    /// Also take Services without a `loadBalancerClass`.
    pub default_class: bool,
}

pub fn key_of(s: &Service) -> ServiceKey {
    ServiceKey { namespace: s.namespace().unwrap_or_default(), name: s.name_any() }
}

/// Is this Service one we program?
pub fn is_ours(s: &Service, sel: &Selection) -> bool {
    let Some(spec) = &s.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(c) => c == sel.class,
        None => sel.default_class,
    }
}

fn requested_address(s: &Service) -> Result<IpAddr, ServiceProblem> {
    let from_spec = s.spec.as_ref().and_then(|sp| sp.load_balancer_ip.clone()).filter(|v| !v.is_empty());
    let value =
        from_spec.or_else(|| s.annotations().get(ADDRESS_ANNOTATION).cloned()).ok_or(ServiceProblem::NoAddress)?;
    value.trim().parse().map_err(|_| ServiceProblem::BadAddress { value })
}

/// One endpoint's verdict: (in, draining) or out.
fn endpoint_state(e: &Endpoint) -> Option<bool> {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(false)
    } else if serving && terminating {
        Some(true)
    } else {
        None
    }
}

/// The backends of one Service port, from its EndpointSlices.
fn backends(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    vip: &Vip,
    pods: &BTreeMap<(String, String), Option<u32>>,
    out: &mut Computed,
) -> Result<Vec<BackendSpec>, ServiceProblem> {
    let family = if vip.addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let mut list: Vec<BackendSpec> = Vec::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        let slice_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""));
        if let Some(ep) = slice_port.and_then(|p| p.port) {
            if ep != port.port {
                return Err(ServiceProblem::PortMismatch { port: port.port, endpoint_port: ep });
            }
        }
        for e in &slice.endpoints {
            let Some(draining) = endpoint_state(e) else { continue };
            let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"));
            let pod_key = pod.map(|r| (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default()));
            for a in &e.addresses {
                let Ok(addr) = a.parse::<IpAddr>() else { continue };
                if list.iter().any(|b| b.addr == addr) {
                    continue;
                }
                let start_progress = pod_key.as_ref().and_then(|k| pods.get(k).copied().flatten());
                if let Some(k) = &pod_key {
                    out.pods.insert(addr, k.clone());
                }
                list.push(BackendSpec { addr, weight: 1, start_progress, draining });
            }
        }
    }
    Ok(list)
}

/// Computes the wanted state from the watched objects.
pub fn compute(
    services: &[&Service],
    slices: &[&EndpointSlice],
    pods: &[&PartialObjectMeta<Pod>],
    sel: &Selection,
) -> Computed {
    let mut out = Computed::default();
    let progress: BTreeMap<(String, String), Option<u32>> = pods
        .iter()
        .map(|p| {
            let v = p.labels().get(PROGRESS_LABEL).and_then(|v| v.parse::<u32>().ok()).filter(|v| *v <= 100);
            ((p.namespace().unwrap_or_default(), p.name_any()), v)
        })
        .collect();
    let mut ours: Vec<&Service> = services.iter().copied().filter(|s| is_ours(s, sel)).collect();
    // Older Services first: they keep a contested VIP.
    ours.sort_by_key(|s| (s.metadata.creation_timestamp.clone().map(|t| t.0), key_of(s)));
    // EndpointSlices by the Service they belong to, indexed once (not scanned per Service).
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let (Some(ns), Some(name)) = (s.namespace(), s.labels().get(SERVICE_NAME_LABEL)) {
            by_service.entry((ns, name.clone())).or_default().push(s);
        }
    }
    let mut owners: BTreeMap<Vip, ServiceKey> = BTreeMap::new();
    for svc in ours {
        let key = key_of(svc);
        let mine = by_service.get(&(key.namespace.clone(), key.name.clone())).map(Vec::as_slice).unwrap_or(&[]);
        let outcome = service(svc, &key, mine, &progress, &mut owners, &mut out);
        out.services.insert(key, outcome);
    }
    out
}

fn service(
    svc: &Service,
    key: &ServiceKey,
    mine: &[&EndpointSlice],
    progress: &BTreeMap<(String, String), Option<u32>>,
    owners: &mut BTreeMap<Vip, ServiceKey>,
    out: &mut Computed,
) -> ServiceOutcome {
    let mut outcome = ServiceOutcome::default();
    let address = match requested_address(svc) {
        Ok(a) => a,
        Err(p) => {
            outcome.problems.push(p);
            return outcome;
        }
    };
    outcome.address = Some(address);
    let spec = svc.spec.as_ref().expect("is_ours checked spec");
    let affinity_timeout_s = if spec.session_affinity.as_deref() == Some("ClientIP") {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map(|t| t.max(1) as u32)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
    } else {
        0
    };
    let mut any_ready = false;
    for port in spec.ports.iter().flatten() {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let proto = match protocol.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            _ => {
                outcome.problems.push(ServiceProblem::UnsupportedProtocol { port: port.port, protocol });
                continue;
            }
        };
        let vip = Vip { addr: address, port: port.port as u16, proto };
        if let Some(owner) = owners.get(&vip) {
            outcome.problems.push(ServiceProblem::Conflict { vip, owner: owner.clone() });
            continue;
        }
        match backends(mine, port, &vip, progress, out) {
            Ok(list) => {
                any_ready |= list.iter().any(|b| !b.draining);
                owners.insert(vip, key.clone());
                out.desired.vips.insert(vip, VipSpec { backends: list, ramp: None, affinity_timeout_s });
                outcome.vips.push(vip);
            }
            Err(p) => outcome.problems.push(p),
        }
    }
    if !outcome.vips.is_empty() && !any_ready {
        outcome.problems.push(ServiceProblem::NoReadyEndpoints);
    }
    outcome
}

#[cfg(test)]
mod tests;
