//! The one interface between the wanted state and a data plane: whole snapshots,
//! applied level-triggered, or the VIPs that changed. An implementation diffs against
//! what it applied last, so applying the same snapshot twice writes nothing.

#[cfg(test)]
pub mod fake;
pub mod ipvs;
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
    /// The weight new flows are shared by: the target weight times the ramp progress
    /// (in hundredths of a weight), so a backend at progress p gets p % of what it gets
    /// at full weight, in every step, even with target weight 1 (every Kubernetes
    /// endpoint). 0 while draining or at weight 0.
    pub fn share_weight(&self) -> u32 {
        if self.draining || self.weight == 0 {
            return 0;
        }
        self.target.max(1).saturating_mul(self.progress.clamp(1, 100))
    }

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

/// What an apply changed, and the VIPs it could not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub vips_added: usize,
    pub vips_removed: usize,
    /// VIPs whose table or backends changed.
    pub vips_changed: usize,
    /// Individual writes to the data plane (map entries, table slots).
    pub writes: usize,
    /// VIPs left as they were (a new one: not programmed at all), each with why. The
    /// others were applied regardless.
    pub failed: Vec<VipFailure>,
    /// Parts of a change refused while the rest of the VIP was applied (e.g. turning
    /// session affinity on a live VIP), each with why.
    pub notices: Vec<(Vip, String)>,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.writes == 0
    }
}

/// A VIP a data plane could not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipFailure {
    pub vip: Vip,
    /// A map or id space is full: retrying helps only once something else leaves.
    pub capacity: bool,
    /// What went wrong, naming the VIP and the limit or the OS error.
    pub message: String,
}

/// A data plane: XDP maps, or (where XDP cannot run) the kernel's IPVS.
///
/// Errors are per VIP: a VIP that cannot be applied (a full map, a write the kernel
/// refuses) is left as it was and listed in `ApplyReport::failed`, and every other VIP
/// is applied. `Err` means the data plane as a whole is lost.
pub trait Dataplane {
    type Error: std::error::Error + Send + Sync + 'static;
    type Census: Census;
    /// Makes the data plane hold exactly `snapshot` (except the VIPs that fail).
    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, Self::Error>;
    /// Makes the data plane hold these VIPs as given (`None`: removed), the others as
    /// they are: what a change to a few VIPs costs, whatever the number of VIPs.
    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, Self::Error>;
    /// Periodic maintenance, in two halves so the slow one runs off the loop: `census`
    /// (on the loop, cheap) says what to read; its `run` (on a worker thread) walks the
    /// flow table; `maintain` (on the loop) takes the result: live flows for drains, and
    /// what can be tidied up. `idle` is how long a flow may be silent and still count.
    fn census(&self, idle: std::time::Duration) -> Self::Census;
    fn maintain(&mut self, found: <Self::Census as Census>::Found) -> Result<Maintenance, Self::Error>;
    /// What the data plane holds for `vip` now (`None`: nothing, the VIP is not served).
    fn programmed(&self, vip: &Vip) -> Option<Programmed>;
}

/// The slow half of maintenance: reads (never writes) the data plane, off the loop.
pub trait Census: Send + 'static {
    type Found: Send + 'static;
    fn run(self) -> Self::Found;
}

/// What a data plane holds for one VIP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// Backends that take new flows (weight above 0, reachable).
    pub serving: usize,
    /// Of those, backends still ramping up (slow start).
    pub ramping: usize,
    /// Backends that only keep established flows.
    pub draining: usize,
    /// Backends held but not reachable yet (no link-layer address).
    pub unresolved: usize,
}

/// An error with its sources, one line ("cannot add address ...: Operation not
/// permitted (os error 1)"): what logs, Events and conditions say.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}
