//! lb-agent: the control plane of the XDP direct-server-return load balancer.
//!
//! Data flows one way: sources -> `model::Desired` -> snapshot (with neighbour MACs)
//! -> `dataplane::Dataplane`. Side effects (netlink, BPF maps) stay at the edges.

pub mod agent;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod k8s;
pub mod kernel_log;
pub mod mem;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod ramp;
pub mod view;
