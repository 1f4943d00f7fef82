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
    /// Unix ms of the loop's last turn (`/healthz` fails when it stops turning).
    pub heartbeat_ms: u64,
    /// Why the data path is not in place, if it is not (`/healthz`).
    pub detached: Option<String>,
    /// The last sync failed as a whole (`/readyz`).
    pub sync_failing: bool,
}

/// The loop is stuck when it has not turned for this long (a full sync of 10,000
/// Services takes about a second).
pub const STUCK_AFTER_MS: u64 = 30_000;

impl AgentView {
    /// `/healthz`: `Err(why)` when the loop is stuck or the program is not attached.
    pub fn health(&self, now_ms: u64) -> Result<(), String> {
        if let Some(why) = &self.detached {
            return Err(why.clone());
        }
        let age = now_ms.saturating_sub(self.heartbeat_ms);
        if self.heartbeat_ms > 0 && age > STUCK_AFTER_MS {
            return Err(format!("the agent's loop has not turned for {} s", age / 1000));
        }
        Ok(())
    }

    /// `/readyz`: `Err(why)` before the first successful sync and while syncs fail.
    pub fn readiness(&self) -> Result<(), String> {
        match (self.ready, self.sync_failing) {
            (false, _) => Err("no successful sync yet".into()),
            (true, true) => Err("the last sync failed; retrying".into()),
            (true, false) => Ok(()),
        }
    }
}

/// A draining backend and its remaining live flows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DrainView {
    pub vip: String,
    pub backend: IpAddr,
    pub live_flows: u64,
}

pub type SharedView = Arc<Mutex<AgentView>>;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
