//! The kernel's IPVS as a data plane, for hosts where XDP cannot run: the same wanted
//! state as virtual services (one per VIP) with real servers in direct-routing mode.
//! `genl` is the generic netlink family, `client` a socket speaking it, `apply` the
//! `Dataplane` bookkeeping. (Issue 12 in progress: the agent does not start it yet.)

mod apply;
pub mod client;
pub mod genl;

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use apply::{service_of, IpvsDataplane, IpvsPlaneError, DEFAULT_SCHEDULER};

use crate::dataplane::{ApplyReport, Census, Dataplane, Maintenance, Programmed, SnapVip, Snapshot};
use crate::model::Vip;

/// Connections still on each draining real server, counted by the kernel (active +
/// inactive), read on a worker thread over a socket of its own.
pub struct IpvsCensus {
    draining: Vec<(Vip, genl::Service, IpAddr)>,
}

pub type ConnCounts = Result<BTreeMap<(Vip, IpAddr), u64>, String>;

impl Census for IpvsCensus {
    type Found = ConnCounts;
    fn run(self) -> ConnCounts {
        if self.draining.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut ipvs = client::Ipvs::open().map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for (vip, service, addr) in self.draining {
            let dests = ipvs.dests(&service).map_err(|e| e.to_string())?;
            if let Some(d) = dests.iter().find(|d| d.addr == Some(addr)) {
                out.insert((vip, addr), u64::from(d.active_conns) + u64::from(d.inactive_conns));
            }
        }
        Ok(out)
    }
}

impl Dataplane for IpvsDataplane {
    type Error = IpvsPlaneError;
    type Census = IpvsCensus;

    fn apply(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, IpvsPlaneError> {
        self.apply_snapshot(snapshot)
    }

    fn apply_vips(&mut self, changes: &BTreeMap<Vip, Option<SnapVip>>) -> Result<ApplyReport, IpvsPlaneError> {
        let removals = changes.iter().filter(|(_, w)| w.is_none()).map(|(v, _)| (*v, None));
        let adds = changes.iter().filter_map(|(v, w)| w.as_ref().map(|w| (*v, Some(w))));
        self.apply_each(removals.chain(adds))
    }

    fn census(&self, _idle: std::time::Duration) -> IpvsCensus {
        IpvsCensus { draining: self.draining() }
    }

    fn maintain(&mut self, found: ConnCounts) -> Result<Maintenance, IpvsPlaneError> {
        match found {
            Ok(live_flows) => Ok(Maintenance { live_flows, settled_slots: 0 }),
            Err(why) => {
                tracing::warn!(error = why, "counting the connections of draining real servers");
                Ok(Maintenance::default())
            }
        }
    }

    fn programmed(&self, vip: &Vip) -> Option<Programmed> {
        self.programmed_vip(vip)
    }
}
