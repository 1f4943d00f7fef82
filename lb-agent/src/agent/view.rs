//! What the running agent knows that the maps do not: sync health, and live-flow
//! counts of draining backends. Shared with the metrics endpoint.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentView {
    /// True after the first successful sync (`/readyz`).
    pub ready: bool,
    pub syncs: u64,
    pub sync_errors: u64,
    pub last_sync_seconds: f64,
    /// Config reloads that failed or skipped VIPs.
    pub config_errors: u64,
    /// VIPs wanted but not in the data plane (refused or no room), retried.
    pub vip_failures: u64,
    /// Of those, VIPs for which a map is full.
    pub vip_capacity_failures: u64,
    pub draining: Vec<DrainView>,
}

/// A draining backend and its remaining live flows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DrainView {
    pub vip: String,
    pub backend: IpAddr,
    pub live_flows: u64,
}

pub type SharedView = Arc<Mutex<AgentView>>;
