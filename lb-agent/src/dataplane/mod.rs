//! The one interface between the wanted state and a data plane: whole snapshots,
//! applied level-triggered, or the VIPs that changed. An implementation diffs against
//! what it applied last, so applying the same snapshot twice writes nothing.

pub mod fake;
pub mod table;
pub mod xdp;

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::Vip;

/// One backend as a data plane must program it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapBackend {
    pub addr: IpAddr,
    /// Effective weight now (after ramp and drain); 0 takes no new flows.
    pub weight: u32,
    /// Link-layer address, when the neighbour is resolved (XDP needs it; IPVS not).
    pub mac: Option<[u8; 6]>,
    /// Leaving: weight 0, established flows continue.
    pub draining: bool,
    /// For the record (status, restart): target weight, ramp progress in percent, and
    /// Unix ms of the last ramp step or of the drain start.
    pub target: u32,
    pub progress: u32,
    pub since_ms: u64,
}

impl SnapBackend {
    /// A backend at full weight, with nothing ramping or draining.
    pub fn steady(addr: IpAddr, weight: u32, mac: Option<[u8; 6]>) -> Self {
        SnapBackend { addr, weight, mac, draining: false, target: weight, progress: 100, since_ms: 0 }
    }
}

/// One VIP as a data plane must program it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapVip {
    pub backends: Vec<SnapBackend>,
    /// Client-address affinity timeout; 0 = no affinity.
    pub affinity_timeout_s: u32,
    /// Clients allowed (`loadBalancerSourceRanges`); empty = every client.
    pub source_ranges: Vec<ipnet::IpNet>,
}

/// Everything a data plane must hold: every VIP with its backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub vips: BTreeMap<Vip, SnapVip>,
}

/// What periodic maintenance found: live flows per backend (`None` where the data plane
/// cannot count them) and how many table slots it settled back to stable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub live_flows: BTreeMap<(Vip, IpAddr), u64>,
    pub settled_slots: usize,
}

/// What an apply changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    /// VIPs whose table or backends changed.
    pub vips_changed: usize,
    /// Individual writes to the data plane (map entries, table slots).
    pub writes: usize,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.writes == 0
    }
}

pub trait Dataplane {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Makes the data plane hold exactly `snapshot`.
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, Self::Error>;
    /// Makes the data plane hold these VIPs as given (`None`: removed), the others as
    /// they are: what a change to a few VIPs costs, whatever the number of VIPs.
    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, Self::Error>;
    /// Counts live flows (for drains) and tidies up; `idle` is how long a flow may be
    /// silent and still count as live.
    fn maintain(&mut self, idle: std::time::Duration) -> Result<Maintenance, Self::Error>;
}

/// The data plane in use: a closed set, chosen once at startup.
pub enum AnyDataplane {
    Xdp(Box<xdp::XdpDataplane>),
    Fake(fake::FakeDataplane),
}

#[derive(Debug, thiserror::Error)]
pub enum AnyError {
    #[error(transparent)]
    Xdp(#[from] xdp::XdpError),
    #[error(transparent)]
    Fake(#[from] std::convert::Infallible),
}

impl Dataplane for AnyDataplane {
    type Error = AnyError;
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, AnyError> {
        Ok(match self {
            AnyDataplane::Xdp(d) => d.apply(snapshot)?,
            AnyDataplane::Fake(d) => d.apply(snapshot)?,
        })
    }
    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, AnyError> {
        Ok(match self {
            AnyDataplane::Xdp(d) => d.apply_vips(changes)?,
            AnyDataplane::Fake(d) => d.apply_vips(changes)?,
        })
    }
    fn maintain(&mut self, idle: std::time::Duration) -> Result<Maintenance, AnyError> {
        Ok(match self {
            AnyDataplane::Xdp(d) => d.maintain(idle)?,
            AnyDataplane::Fake(d) => d.maintain(idle)?,
        })
    }
}
