//! The host side of the wanted state: VIP addresses on the interface, and managed
//! neighbour entries for the backends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use tracing::{info, warn};

use crate::model::Desired;
use crate::netlink::{Link, Netlink, NetlinkError};

pub struct Host {
    pub nl: Netlink,
    pub link: Link,
    /// VIP addresses this agent (or the one it took over from) added.
    pub added: BTreeSet<IpAddr>,
    /// Backends whose neighbour entries this agent asked the kernel to manage.
    pub resolving: BTreeSet<IpAddr>,
    /// Last MAC seen per backend: a managed entry is briefly FAILED while it re-resolves
    /// after a MAC change, and traffic should not stop meanwhile.
    pub last_mac: BTreeMap<IpAddr, [u8; 6]>,
    unresolved_reported: BTreeSet<IpAddr>,
}

impl Host {
    pub fn new(nl: Netlink, link: Link) -> Self {
        Host {
            nl,
            link,
            added: BTreeSet::new(),
            resolving: BTreeSet::new(),
            last_mac: BTreeMap::new(),
            unresolved_reported: BTreeSet::new(),
        }
    }

    /// Addresses and neighbour entries for `desired`; with `read_macs`, also re-reads
    /// the neighbour table (a dump of every entry: done on the periodic tick, not on
    /// every change, since a new backend's MAC is not resolved within a change anyway).
    pub async fn sync(&mut self, desired: &Desired, read_macs: bool) -> Result<(), NetlinkError> {
        self.sync_addresses(desired).await?;
        self.sync_neighbours(desired).await?;
        if read_macs {
            let neigh = self.nl.neighbours(self.link.index).await?;
            self.remember_macs(desired, &neigh);
        } else {
            // Backends still waiting for their MAC are looked up one by one.
            for addr in self.unresolved_reported.clone() {
                if let Some(mac) = self.nl.neighbour_mac(self.link.index, addr).await? {
                    self.last_mac.insert(addr, mac);
                    self.unresolved_reported.remove(&addr);
                    info!(backend = %addr, "backend's MAC resolved");
                }
            }
        }
        Ok(())
    }

    /// Are some wanted backends still without a MAC?
    pub fn has_unresolved(&self) -> bool {
        !self.unresolved_reported.is_empty()
    }

    async fn sync_addresses(&mut self, desired: &Desired) -> Result<(), NetlinkError> {
        let wanted: BTreeSet<IpAddr> = desired.vips.keys().map(|v| v.addr).collect();
        for addr in &wanted {
            if !self.added.contains(addr) && self.nl.add_address(self.link.index, *addr).await? {
                info!(%addr, iface = %self.link.name, "VIP address added");
                self.added.insert(*addr);
            }
        }
        let stale: Vec<IpAddr> = self.added.difference(&wanted).copied().collect();
        for addr in stale {
            self.nl.del_address(self.link.index, addr).await?;
            self.added.remove(&addr);
            info!(%addr, iface = %self.link.name, "VIP address removed");
        }
        Ok(())
    }

    /// Backends stay resolved while they are wanted or still draining (`extra`).
    async fn sync_neighbours(&mut self, desired: &Desired) -> Result<(), NetlinkError> {
        let wanted: BTreeSet<IpAddr> = desired.vips.values().flat_map(|v| &v.backends).map(|b| b.addr).collect();
        let new: Vec<IpAddr> = wanted.difference(&self.resolving).copied().collect();
        for addr in &new {
            self.nl.resolve(self.link.index, *addr).await?;
            self.resolving.insert(*addr);
        }
        // A new backend whose entry is already usable (or resolves at once) can take
        // traffic now rather than at the next full read of the table.
        for addr in new {
            if let Some(mac) = self.nl.neighbour_mac(self.link.index, addr).await? {
                self.last_mac.insert(addr, mac);
            } else if self.unresolved_reported.insert(addr) {
                warn!(backend = %addr, "backend's MAC not resolved yet: no traffic for it until it is");
            }
        }
        Ok(())
    }

    /// Stops managing neighbours that are neither wanted nor draining any more.
    pub async fn forget_unused(&mut self, in_use: &BTreeSet<IpAddr>) -> Result<(), NetlinkError> {
        let stale: Vec<IpAddr> = self.resolving.difference(in_use).copied().collect();
        for addr in stale {
            self.nl.forget(self.link.index, addr).await?;
            self.resolving.remove(&addr);
            self.last_mac.remove(&addr);
        }
        Ok(())
    }

    fn remember_macs(&mut self, desired: &Desired, neigh: &HashMap<IpAddr, [u8; 6]>) {
        for addr in &self.resolving {
            if let Some(mac) = neigh.get(addr) {
                if self.last_mac.insert(*addr, *mac).is_some_and(|old| old != *mac) {
                    info!(backend = %addr, "backend's MAC changed");
                }
                if self.unresolved_reported.remove(addr) {
                    info!(backend = %addr, "backend's MAC resolved");
                }
            }
        }
        for spec in desired.vips.values() {
            for b in &spec.backends {
                if !self.last_mac.contains_key(&b.addr) && self.unresolved_reported.insert(b.addr) {
                    warn!(backend = %b.addr, "backend's MAC not resolved yet: no traffic for it until it is");
                }
            }
        }
    }

    pub fn mac(&self, addr: IpAddr) -> Option<[u8; 6]> {
        self.last_mac.get(&addr).copied()
    }
}
