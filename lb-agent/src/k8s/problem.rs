//! What became of one Service, and its problems: what its Warning Events and condition say.

use std::fmt;
use std::net::IpAddr;

use super::objects::{ServiceKey, ADDRESS_ANNOTATION};
use crate::model::Vip;

/// A problem with one Service, reported as a Warning Event on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceProblem {
    NoAddress,
    BadAddress {
        value: String,
    },
    UnsupportedProtocol {
        port: i32,
        protocol: String,
    },
    PortMismatch {
        port: i32,
        endpoint_port: i32,
    },
    Conflict {
        vip: Vip,
        owner: ServiceKey,
    },
    NoReadyEndpoints,
    /// `spec.loadBalancerSourceRanges` has an entry that is no CIDR of the VIP's family.
    BadSourceRange {
        error: crate::config::FieldError,
    },
    /// The requested address can be no VIP (loopback, multicast, ...).
    UnusableAddress {
        addr: IpAddr,
        kind: &'static str,
    },
    /// Endpoints not on the LB interface's subnets: left out (found by the agent).
    EndpointsSkipped {
        addrs: Vec<IpAddr>,
    },
}

impl ServiceProblem {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ServiceProblem::NoAddress => "NoAddress",
            ServiceProblem::BadAddress { .. } | ServiceProblem::UnusableAddress { .. } => "InvalidAddress",
            ServiceProblem::UnsupportedProtocol { .. } => "UnsupportedProtocol",
            ServiceProblem::PortMismatch { .. } => "PortMismatch",
            ServiceProblem::Conflict { .. } => "AddressConflict",
            ServiceProblem::NoReadyEndpoints => "NoReadyEndpoints",
            ServiceProblem::BadSourceRange { .. } => "InvalidSourceRange",
            ServiceProblem::EndpointsSkipped { .. } => "EndpointsSkipped",
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
            ServiceProblem::UnusableAddress { addr, kind } => write!(
                f,
                "requested address {addr} (spec.loadBalancerIP or the {ADDRESS_ANNOTATION} annotation) is a {kind} \
                 address: a VIP must be a unicast address that clients reach"
            ),
            ServiceProblem::UnsupportedProtocol { port, protocol } => {
                write!(f, "port {port}: protocol {protocol} is not supported (TCP and UDP are)")
            }
            ServiceProblem::PortMismatch { port, endpoint_port } => write!(
                f,
                "port {port}: endpoints listen on {endpoint_port}; direct server return cannot translate ports, so targetPort must equal port"
            ),
            ServiceProblem::Conflict { vip, owner } => write!(f, "{vip} is already used by Service {owner} (the older one keeps it)"),
            ServiceProblem::NoReadyEndpoints => write!(f, "no ready endpoints: traffic to its VIPs is dropped"),
            ServiceProblem::BadSourceRange { error } => write!(f, "{error}; the Service is not served"),
            ServiceProblem::EndpointsSkipped { addrs } => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{} endpoints skipped: not on the LB interface's subnets (direct server return needs them on its link): {}",
                    addrs.len(),
                    list.join(", ")
                )
            }
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
    /// What the data plane holds: filled in by the agent after a sync, never here.
    pub held: super::held::Held,
}
