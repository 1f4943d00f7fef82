//! What the agent keeps of each watched object: a compact projection made as the object
//! arrives, after which the typed object is dropped.
//!
//! At 10,000 Services and 100,000 endpoints the typed `EndpointSlice`s alone took
//! ~140 MiB (strings for every address, condition and reference); the projection keeps
//! parsed addresses, one verdict per endpoint and the pod's name, about a tenth of that.
//! Comparing two projections also tells whether an event changed anything the agent
//! reads (its own status writes come back as Service events that change nothing here).

use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::ResourceExt;

use crate::config::DEFAULT_AFFINITY_TIMEOUT_S;

pub const ADDRESS_ANNOTATION: &str = "lb-agent.io/load-balancer-ip";
pub const PROGRESS_LABEL: &str = "progress";

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

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Services are ours.
#[derive(Clone, Debug)]
pub struct Selection {
    pub class: String,
    /// Also take Services without a `loadBalancerClass`.
    pub default_class: bool,
}

/// A Service as the agent reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub key: ServiceKey,
    pub uid: Option<String>,
    /// Older Services keep a contested VIP.
    pub created: Option<Timestamp>,
    /// Of type LoadBalancer and of our class: the rest is only kept to know it exists.
    pub ours: bool,
    /// `spec.loadBalancerIP`, else the address annotation (unparsed: a bad value is
    /// reported as it was written).
    pub requested: Option<String>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// `spec.loadBalancerSourceRanges`, as written.
    pub source_ranges: Vec<String>,
    pub ports: Vec<PortView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortView {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

/// What an endpoint contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Ready: takes new flows.
    In,
    /// Serving and terminating: established flows continue, no new ones.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointView {
    pub addrs: Box<[IpAddr]>,
    pub state: EndpointState,
    /// The pod behind it: (namespace, name).
    pub pod: Option<Box<(String, String)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    Other,
}

/// An EndpointSlice as the agent reads it (endpoints that are out are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceView {
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<ServiceKey>,
    pub family: Family,
    /// (port name, port number).
    pub ports: Box<[(String, Option<i32>)]>,
    pub endpoints: Box<[EndpointView]>,
}

pub fn service_key(namespace: Option<String>, name: String) -> ServiceKey {
    ServiceKey { namespace: namespace.unwrap_or_default(), name }
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

impl ServiceView {
    pub fn new(s: &Service, sel: &Selection) -> ServiceView {
        let key = service_key(s.namespace(), s.name_any());
        let uid = s.metadata.uid.clone();
        let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let ours = is_ours(s, sel);
        let mut view = ServiceView {
            key,
            uid,
            created,
            ours,
            requested: None,
            affinity_timeout_s: 0,
            source_ranges: vec![],
            ports: vec![],
        };
        let Some(spec) = s.spec.as_ref().filter(|_| ours) else { return view };
        view.requested = spec
            .load_balancer_ip
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| s.annotations().get(ADDRESS_ANNOTATION).cloned());
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()?.timeout_seconds);
            view.affinity_timeout_s = timeout.map(|t| t.max(1) as u32).unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
        }
        view.source_ranges = spec.load_balancer_source_ranges.clone().unwrap_or_default();
        view.ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| PortView {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
            .collect();
        view
    }
}

/// One endpoint's verdict: in, draining, or out (`None`).
fn endpoint_state(e: &Endpoint) -> Option<EndpointState> {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::In)
    } else if serving && terminating {
        Some(EndpointState::Draining)
    } else {
        None
    }
}

impl SliceView {
    pub fn new(s: &EndpointSlice) -> SliceView {
        let service = s.labels().get(SERVICE_NAME_LABEL).map(|name| service_key(s.namespace(), name.clone()));
        let family = match s.address_type.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            _ => Family::Other,
        };
        let ports = s.ports.iter().flatten().map(|p| (p.name.clone().unwrap_or_default(), p.port)).collect();
        let endpoints =
            s.endpoints
                .iter()
                .filter_map(|e| {
                    let state = endpoint_state(e)?;
                    let addrs = e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                    let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).map(|r| {
                        Box::new((r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default()))
                    });
                    Some(EndpointView { addrs, state, pod })
                })
                .collect();
        SliceView { service, family, ports, endpoints }
    }
}

/// A pod's starting ramp progress from its `progress` label (0-100), if it has one.
pub fn pod_progress(p: &PartialObjectMeta<Pod>) -> Option<u32> {
    p.labels().get(PROGRESS_LABEL).and_then(|v| v.parse::<u32>().ok()).filter(|v| *v <= 100)
}
