//! The host side of the wanted state: VIP addresses on the interface, and managed
//! neighbour entries for the backends, with the MAC each one resolved to.
//!
//! The whole neighbour table is read on a thread of its own (`spawn_mac_reader`): at
//! 100,000 backends a dump costs ~85 ms of parsing, which must not stall the loop that
//! applies changes. The reader sends only the entries that are new or changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::dataplane::error_chain;
use crate::model::{Desired, Vip};
use crate::netlink::{Link, Netlink, NetlinkError};

/// Individual neighbour look-ups per check of unresolved backends (one request each).
const LOOKUPS_PER_CHECK: usize = 256;

/// VIP addresses the kernel refused, with why (the whole error chain).
pub type Refused = std::collections::BTreeMap<IpAddr, String>;

pub struct Host {
    pub nl: Netlink,
    pub link: Link,
    /// VIP addresses this agent (or the one it took over from) added.
    pub added: BTreeSet<IpAddr>,
    /// Backends whose neighbour entries this agent asked the kernel to manage.
    pub resolving: BTreeSet<IpAddr>,
    /// Last MAC seen per backend: a managed entry is briefly FAILED while it re-resolves
    /// after a MAC change, and traffic should not stop meanwhile.
    pub last_mac: HashMap<IpAddr, [u8; 6]>,
    unresolved: BTreeSet<IpAddr>,
}

/// The VIP addresses `desired` needs, among `addrs`.
fn wanted_addresses<'a>(desired: &Desired, addrs: impl Iterator<Item = &'a IpAddr>) -> BTreeSet<IpAddr> {
    addrs.filter(|a| has_vip_on(desired, **a)).copied().collect()
}

/// Does some VIP of `desired` use this address?
fn has_vip_on(desired: &Desired, addr: IpAddr) -> bool {
    let from = Vip { addr, port: 0, proto: crate::model::Protocol::Tcp };
    desired.vips.range(from..).next().is_some_and(|(v, _)| v.addr == addr)
}

impl Host {
    pub fn new(nl: Netlink, link: Link) -> Self {
        Host {
            nl,
            link,
            added: BTreeSet::new(),
            resolving: BTreeSet::new(),
            last_mac: HashMap::new(),
            unresolved: BTreeSet::new(),
        }
    }

    /// Addresses and neighbour entries for every VIP of `desired`. Each address and
    /// entry on its own: returns the VIP addresses the kernel refused (with why); the
    /// others are in place.
    pub async fn sync_all(&mut self, desired: &Desired) -> Refused {
        let wanted: BTreeSet<IpAddr> = desired.vips.keys().map(|v| v.addr).collect();
        let check: BTreeSet<IpAddr> = wanted.union(&self.added).copied().collect();
        let refused = self.sync_addresses(desired, &check).await;
        let backends: BTreeSet<IpAddr> = desired.vips.values().flat_map(|v| &v.backends).map(|b| b.addr).collect();
        self.sync_neighbours(backends).await;
        refused
    }

    /// Addresses and neighbour entries for the VIPs in `vips` (which may have left
    /// `desired`); the rest is as it was.
    pub async fn sync_vips(&mut self, desired: &Desired, vips: &BTreeSet<Vip>) -> Refused {
        let check: BTreeSet<IpAddr> = vips.iter().map(|v| v.addr).collect();
        let refused = self.sync_addresses(desired, &check).await;
        let backends = vips.iter().filter_map(|v| desired.vips.get(v)).flat_map(|s| &s.backends).map(|b| b.addr);
        self.sync_neighbours(backends.collect()).await;
        refused
    }

    /// Are some wanted backends still without a MAC?
    pub fn has_unresolved(&self) -> bool {
        !self.unresolved.is_empty()
    }

    /// Adds or removes the addresses in `check` as `desired` needs them.
    async fn sync_addresses(&mut self, desired: &Desired, check: &BTreeSet<IpAddr>) -> Refused {
        let wanted = wanted_addresses(desired, check.iter());
        let mut refused = Refused::new();
        for addr in &wanted {
            if self.added.contains(addr) {
                continue;
            }
            if let Some(why) = crate::netlink::host_conflict(&self.link, &self.added, *addr) {
                refused.insert(*addr, format!("refused as a VIP: {why}"));
                continue;
            }
            match self.nl.add_address(self.link.index, *addr).await {
                Ok(true) => {
                    info!(%addr, iface = %self.link.name, "VIP address added");
                    self.added.insert(*addr);
                }
                Ok(false) => {}
                Err(e) => _ = refused.insert(*addr, error_chain(&e)),
            }
        }
        let stale: Vec<IpAddr> =
            check.iter().filter(|a| self.added.contains(a) && !wanted.contains(a)).copied().collect();
        for addr in stale {
            match self.nl.del_address(self.link.index, addr).await {
                Ok(_) => {
                    self.added.remove(&addr);
                    info!(%addr, iface = %self.link.name, "VIP address removed");
                }
                Err(e) => warn!(%addr, error = error_chain(&e), "removing a VIP address; retried"),
            }
        }
        refused
    }

    /// Asks the kernel to keep the new ones among `backends` resolved, and takes the
    /// MACs of those already usable.
    async fn sync_neighbours(&mut self, backends: BTreeSet<IpAddr>) {
        let new: Vec<IpAddr> = backends.difference(&self.resolving).copied().collect();
        let mut asked = Vec::with_capacity(new.len());
        for addr in new {
            match self.nl.resolve(self.link.index, addr).await {
                Ok(_) => {
                    self.resolving.insert(addr);
                    asked.push(addr);
                }
                // Not marked resolving: asked again on the next sync of its VIP.
                Err(e) => warn!(backend = %addr, error = error_chain(&e), "asking the kernel to resolve a backend"),
            }
        }
        let new = asked;
        // A new backend whose entry is already usable (or resolves at once) can take
        // traffic now rather than when the neighbour table is next read.
        for addr in new {
            if self.last_mac.contains_key(&addr) {
                continue;
            }
            match self.nl.neighbour_mac(self.link.index, addr).await {
                Ok(Some(mac)) => _ = self.last_mac.insert(addr, mac),
                Ok(None) | Err(_) => {
                    if self.unresolved.insert(addr) {
                        warn!(backend = %addr, "backend's MAC not resolved yet: no traffic for it until it is");
                    }
                }
            }
        }
    }

    /// Looks the backends still waiting for their MAC up one by one (at most
    /// `LOOKUPS_PER_CHECK` of them: more wait for the next read of the whole table);
    /// returns those that resolved.
    pub async fn check_unresolved(&mut self) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut resolved = Vec::new();
        let some: Vec<IpAddr> = self.unresolved.iter().take(LOOKUPS_PER_CHECK).copied().collect();
        for addr in some {
            if let Some(mac) = self.nl.neighbour_mac(self.link.index, addr).await? {
                self.last_mac.insert(addr, mac);
                self.unresolved.remove(&addr);
                info!(backend = %addr, "backend's MAC resolved");
                resolved.push(addr);
            }
        }
        Ok(resolved)
    }

    /// Stops managing the neighbours of backends no VIP uses any more.
    pub async fn forget(&mut self, unused: &[IpAddr]) {
        for addr in unused {
            if self.resolving.remove(addr) {
                if let Err(e) = self.nl.forget(self.link.index, *addr).await {
                    warn!(backend = %addr, error = error_chain(&e), "removing a neighbour entry");
                }
            }
            self.last_mac.remove(addr);
            self.unresolved.remove(addr);
        }
    }

    /// Takes MACs read from the neighbour table (new or changed entries); returns the
    /// backends whose MAC changed or became known. Entries of addresses that are not
    /// (yet) backends are kept too: a backend added later needs no lookup.
    pub fn apply_macs(&mut self, entries: &[(IpAddr, [u8; 6])]) -> Vec<IpAddr> {
        let mut changed = Vec::new();
        for (addr, mac) in entries {
            let old = self.last_mac.insert(*addr, *mac);
            if !self.resolving.contains(addr) || old == Some(*mac) {
                continue;
            }
            if old.is_some() {
                info!(backend = %addr, "backend's MAC changed");
            }
            if self.unresolved.remove(addr) {
                info!(backend = %addr, "backend's MAC resolved");
            }
            changed.push(*addr);
        }
        changed
    }

    pub fn mac(&self, addr: IpAddr) -> Option<[u8; 6]> {
        self.last_mac.get(&addr).copied()
    }
}

/// Reads interface `ifindex`'s neighbour table every `every` on a thread of its own and
/// sends the usable entries that are new or changed since the previous read (the first
/// read sends them all).
pub fn spawn_mac_reader(ifindex: u32, every: Duration) -> mpsc::Receiver<Vec<(IpAddr, [u8; 6])>> {
    let (tx, rx) = mpsc::channel(1);
    let spawned = std::thread::Builder::new().name("lb-neigh".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return warn!(error = %e, "neighbour reader: no runtime; MAC changes are not followed"),
        };
        rt.block_on(async move {
            let nl = match Netlink::new() {
                Ok(nl) => nl,
                Err(e) => return warn!(error = %e, "neighbour reader: MAC changes are not followed"),
            };
            let mut last: HashMap<IpAddr, [u8; 6]> = HashMap::new();
            let mut tick = tokio::time::interval(every);
            for round in 0u64.. {
                tick.tick().await;
                if round % TRIM_EVERY_ROUNDS == 1 {
                    crate::mem::give_back_free_memory();
                }
                let now = match nl.neighbours(ifindex).await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "reading the neighbour table");
                        continue;
                    }
                };
                let diff: Vec<(IpAddr, [u8; 6])> =
                    now.iter().filter(|(a, m)| last.get(*a) != Some(*m)).map(|(a, m)| (*a, *m)).collect();
                last = now;
                if !diff.is_empty() && tx.send(diff).await.is_err() {
                    return;
                }
            }
        })
    });
    if let Err(e) = spawned {
        warn!(error = %e, "neighbour reader: no thread; MAC changes are not followed");
    }
    rx
}

/// Reads between two `give_back_free_memory` calls (every 30 s at a 5 s period).
const TRIM_EVERY_ROUNDS: u64 = 6;

/// Which VIPs use each backend: what a MAC change or a backend leaving concerns.
#[derive(Default)]
pub struct Users {
    /// How many VIPs use each backend.
    count: HashMap<IpAddr, u32>,
    by_vip: BTreeMap<Vip, Vec<IpAddr>>,
}

impl Users {
    /// Records the backends `vip` uses now; returns those no VIP uses any more.
    pub fn set(&mut self, vip: Vip, backends: Vec<IpAddr>) -> Vec<IpAddr> {
        let old = self.by_vip.remove(&vip).unwrap_or_default();
        let (old_set, new_set): (HashSet<IpAddr>, HashSet<IpAddr>) =
            (old.iter().copied().collect(), backends.iter().copied().collect());
        for a in new_set.difference(&old_set) {
            *self.count.entry(*a).or_default() += 1;
        }
        let mut unused = Vec::new();
        for a in old_set.difference(&new_set) {
            if let Some(n) = self.count.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(a);
                    unused.push(*a);
                }
            }
        }
        if !backends.is_empty() {
            self.by_vip.insert(vip, backends);
        }
        unused
    }

    /// The VIPs that use any of `addrs`.
    pub fn vips_using(&self, addrs: &HashSet<IpAddr>) -> Vec<Vip> {
        if !addrs.iter().any(|a| self.count.contains_key(a)) {
            return Vec::new();
        }
        self.by_vip.iter().filter(|(_, list)| list.iter().any(|a| addrs.contains(a))).map(|(v, _)| *v).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        s.parse().unwrap()
    }
    fn a(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn users_report_backends_no_vip_uses() {
        let mut u = Users::default();
        let (v1, v2) = (vip("192.0.2.1:80/tcp"), vip("192.0.2.1:443/tcp"));
        assert!(u.set(v1, vec![a(1), a(2)]).is_empty());
        assert!(u.set(v2, vec![a(2), a(3)]).is_empty());
        let of = |u: &Users, x: IpAddr| u.vips_using(&HashSet::from([x]));
        assert_eq!(of(&u, a(2)), vec![v1, v2]);
        // a(1) leaves v1 and nobody else uses it; a(2) is still v2's.
        assert_eq!(u.set(v1, vec![a(2)]), vec![a(1)]);
        let mut gone = u.set(v2, vec![]);
        gone.sort();
        assert_eq!(gone, vec![a(3)]);
        assert_eq!(of(&u, a(2)), vec![v1]);
        assert_eq!(u.set(v1, vec![]), vec![a(2)]);
        assert!(of(&u, a(2)).is_empty());
    }

    #[test]
    fn vip_addresses_are_found_by_range() {
        let mut d = Desired::default();
        d.vips.insert(vip("192.0.2.1:443/udp"), Default::default());
        assert!(has_vip_on(&d, "192.0.2.1".parse().unwrap()));
        assert!(!has_vip_on(&d, "192.0.2.2".parse().unwrap()));
        assert!(!has_vip_on(&d, "192.0.2.0".parse().unwrap()));
    }
}
