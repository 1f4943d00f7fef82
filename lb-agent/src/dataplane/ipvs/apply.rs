//! `IpvsDataplane`: the wanted state as IPVS virtual services, one per VIP, with the
//! backends as direct-routing real servers. Ramp and drain are real-server weights
//! (a draining backend keeps weight 0 until the agent drops it); client affinity is
//! persistence with the same timeout. It touches only services it created: their keys
//! are kept in a state file, so a restarted agent adopts its own and removes the stale
//! ones, and never sees kube-proxy's (IPVS mode may share the table).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use super::client::{Ipvs, IpvsError};
use super::genl::{self, Dest, Service};
use crate::dataplane::{error_chain, ApplyReport, Programmed, SnapVip, Snapshot, VipFailure};
use crate::model::{Protocol, Vip};

/// The default scheduler: weighted round robin (weights are what ramps and drains move).
pub const DEFAULT_SCHEDULER: &str = "wrr";

#[derive(Debug, thiserror::Error)]
pub enum IpvsPlaneError {
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What this data plane programmed for one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    service: Service,
    /// Backend → (weight, draining).
    dests: BTreeMap<IpAddr, (u32, bool)>,
}

pub struct IpvsDataplane {
    pub(super) ipvs: Ipvs,
    scheduler: String,
    state_file: PathBuf,
    vips: BTreeMap<Vip, Applied>,
}

/// The service a VIP is, as IPVS keys and schedules it.
pub fn service_of(vip: &Vip, wanted: &SnapVip, scheduler: &str) -> Service {
    let persistent = wanted.affinity_timeout_s > 0;
    Service {
        family: if vip.addr.is_ipv4() { libc::AF_INET as u16 } else { libc::AF_INET6 as u16 },
        protocol: match vip.proto {
            Protocol::Tcp => libc::IPPROTO_TCP as u16,
            Protocol::Udp => libc::IPPROTO_UDP as u16,
        },
        addr: Some(vip.addr),
        port: vip.port,
        scheduler: scheduler.to_string(),
        flags: if persistent { genl::SVC_F_PERSISTENT } else { 0 },
        timeout: wanted.affinity_timeout_s,
        ..Service::default()
    }
}

fn dest(addr: IpAddr, port: u16, weight: u32) -> Dest {
    Dest { addr: Some(addr), port, forward: genl::FWD_DIRECT_ROUTE, weight, ..Dest::default() }
}

/// Scheduled the same way? (The kernel adds flags of its own, e.g. "hashed", and keeps a
/// timeout only for persistent services.)
fn same_settings(a: &Service, b: &Service) -> bool {
    let persistent = |s: &Service| s.flags & genl::SVC_F_PERSISTENT != 0;
    a.scheduler == b.scheduler && persistent(a) == persistent(b) && (!persistent(a) || a.timeout == b.timeout)
}

/// The same service? (The key: family, protocol, address, port.)
fn same_key(a: &Service, b: &Service) -> bool {
    (a.family, a.protocol, a.addr, a.port) == (b.family, b.protocol, b.addr, b.port)
}

impl IpvsDataplane {
    /// Opens IPVS and adopts the services an earlier agent left (listed in `state_file`):
    /// the next apply changes only what differs and removes what is no longer wanted.
    pub fn open(scheduler: &str, state_file: PathBuf) -> Result<Self, IpvsPlaneError> {
        let mut ipvs = Ipvs::open()?;
        let owned = read_state(&state_file)?;
        let mut vips = BTreeMap::new();
        for service in ipvs.services()? {
            let Some(vip) = owned.iter().find(|v| same_key(&service_of(v, &SnapVip::default(), ""), &service)) else {
                continue;
            };
            let dests = ipvs.dests(&service)?;
            let dests = dests.iter().filter_map(|d| Some((d.addr?, (d.weight, d.weight == 0)))).collect();
            vips.insert(*vip, Applied { service, dests });
        }
        Ok(IpvsDataplane { ipvs, scheduler: scheduler.to_string(), state_file, vips })
    }

    fn save(&self) -> Result<(), IpvsPlaneError> {
        let text: String = self.vips.keys().map(|v| format!("{v}\n")).collect();
        let err = |source| IpvsPlaneError::State { path: self.state_file.clone(), source };
        if let Some(dir) = self.state_file.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &self.state_file).map_err(err)
    }

    /// Makes one VIP what `wanted` says (`None`: removes it). Returns the requests made.
    fn apply_vip(&mut self, vip: Vip, wanted: Option<&SnapVip>) -> Result<usize, IpvsError> {
        let Some(wanted) = wanted else {
            let Some(old) = self.vips.remove(&vip) else { return Ok(0) };
            return self.ipvs.run(genl::CMD_DEL_SERVICE, &old.service, None).map(|_| 1);
        };
        let service = service_of(&vip, wanted, &self.scheduler);
        let mut writes = 0;
        let old = self.vips.get(&vip).cloned();
        match &old {
            None => {
                match self.ipvs.run(genl::CMD_NEW_SERVICE, &service, None) {
                    Err(IpvsError::Request { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                        self.ipvs.run(genl::CMD_SET_SERVICE, &service, None)?
                    }
                    other => other?,
                }
                writes += 1;
            }
            Some(a) if !same_settings(&a.service, &service) => {
                self.ipvs.run(genl::CMD_SET_SERVICE, &service, None)?;
                writes += 1;
            }
            Some(_) => {}
        }
        let mut dests = old.map(|a| a.dests).unwrap_or_default();
        self.vips.insert(vip, Applied { service: service.clone(), dests: dests.clone() });
        let want: BTreeMap<IpAddr, (u32, bool)> =
            wanted.backends.iter().map(|b| (b.addr, (b.share_weight(), b.draining))).collect();
        for (addr, (weight, draining)) in &want {
            let cmd = match dests.get(addr) {
                None => genl::CMD_NEW_DEST,
                Some((w, _)) if w != weight => genl::CMD_SET_DEST,
                Some(_) => continue,
            };
            self.ipvs.run(cmd, &service, Some(&dest(*addr, vip.port, *weight)))?;
            dests.insert(*addr, (*weight, *draining));
            self.vips.get_mut(&vip).expect("inserted").dests = dests.clone();
            writes += 1;
        }
        let gone: Vec<IpAddr> = dests.keys().filter(|a| !want.contains_key(a)).copied().collect();
        for addr in gone {
            self.ipvs.run(genl::CMD_DEL_DEST, &service, Some(&dest(addr, vip.port, 0)))?;
            dests.remove(&addr);
            self.vips.get_mut(&vip).expect("inserted").dests = dests.clone();
            writes += 1;
        }
        for (addr, (_, draining)) in &want {
            if let Some(d) = dests.get_mut(addr) {
                d.1 = *draining;
            }
        }
        self.vips.get_mut(&vip).expect("inserted").dests = dests;
        Ok(writes)
    }

    pub(super) fn apply_each<'a>(
        &mut self,
        changes: impl Iterator<Item = (Vip, Option<&'a SnapVip>)>,
    ) -> Result<ApplyReport, IpvsPlaneError> {
        let mut report = ApplyReport::default();
        for (vip, wanted) in changes {
            let existed = self.vips.contains_key(&vip);
            match self.apply_vip(vip, wanted) {
                Ok(0) => {}
                Ok(n) => {
                    report.writes += n;
                    match (existed, wanted.is_some()) {
                        (false, true) => report.vips_added += 1,
                        (true, false) => report.vips_removed += 1,
                        _ => report.vips_changed += 1,
                    }
                }
                Err(e) => report.failed.push(VipFailure { vip, capacity: false, message: error_chain(&e) }),
            }
        }
        self.save()?;
        Ok(report)
    }

    pub(super) fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<ApplyReport, IpvsPlaneError> {
        let gone: Vec<Vip> = self.vips.keys().filter(|v| !snapshot.vips.contains_key(v)).copied().collect();
        let removals = gone.into_iter().map(|v| (v, None));
        self.apply_each(removals.chain(snapshot.vips.iter().map(|(v, w)| (*v, Some(w)))))
    }

    pub(super) fn programmed_vip(&self, vip: &Vip) -> Option<Programmed> {
        let a = self.vips.get(vip)?;
        let mut p = Programmed::default();
        for (weight, draining) in a.dests.values() {
            if *draining {
                p.draining += 1;
            } else if *weight > 0 {
                p.serving += 1;
            }
        }
        Some(p)
    }

    /// The VIPs it holds, with their services' keys (for census).
    pub(super) fn draining(&self) -> Vec<(Vip, Service, IpAddr)> {
        let each = self.vips.iter().flat_map(|(v, a)| {
            a.dests.iter().filter(|(_, (_, d))| *d).map(move |(addr, _)| (*v, a.service.clone(), *addr))
        });
        each.collect()
    }
}

fn read_state(path: &PathBuf) -> Result<BTreeSet<Vip>, IpvsPlaneError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(source) => Err(IpvsPlaneError::State { path: path.clone(), source }),
    }
}
