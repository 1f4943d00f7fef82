//! The running agent: programs the data plane from the wanted state and keeps the
//! interface's VIP addresses and the backends' neighbour entries in step with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::config::{self, Config, FieldError, Problem, RawVip};
use crate::dataplane::xdp::{XdpDataplane, XdpError};
use crate::dataplane::{Dataplane, SnapBackend, Snapshot};
use crate::loader::{self, LoadError, LoadOptions};
use crate::model::Desired;
use crate::netlink::{self, Link, Netlink, NetlinkError};

/// Everything `run` needs.
pub struct RunOptions {
    pub config: Config,
    /// Re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// VIPs given as flags (kept across reloads).
    pub flag_vips: Vec<RawVip>,
    pub load: LoadOptions,
    /// Maps are pinned under `<pin_root>/<iface>/`.
    pub pin_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad input: reported as one line, exit code 64.
    #[error("{0}")]
    Usage(#[from] FieldError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Dataplane(#[from] XdpError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
}

struct Agent {
    nl: Netlink,
    link: Link,
    dp: XdpDataplane,
    desired: Desired,
    /// VIP addresses this agent added to the interface (and so must remove).
    added: BTreeSet<IpAddr>,
    /// Backends whose neighbour entry this agent asked the kernel to resolve.
    resolving: BTreeSet<IpAddr>,
    unresolved_reported: BTreeSet<IpAddr>,
    /// Last MAC seen per backend: a managed neighbour entry is briefly FAILED while it
    /// re-resolves after a MAC change, and traffic should not stop meanwhile.
    last_mac: BTreeMap<IpAddr, [u8; 6]>,
}

/// Checks the parts of the config that depend on this host, before anything is touched.
fn check_host(link: &Link, desired: &Desired) -> Result<(), FieldError> {
    for (vip, backends) in &desired.vips {
        for b in backends {
            if !netlink::on_link(link, b.addr) {
                let value = format!("{} (VIP {vip})", b.addr);
                return Err(FieldError::new("--backend", value, Problem::OffLink { iface: link.name.clone() }));
            }
        }
    }
    Ok(())
}

pub async fn run(opts: RunOptions) -> Result<(), AgentError> {
    let nl = Netlink::new()?;
    let iface = opts.config.iface.clone();
    let link = match nl.link(&iface).await {
        Err(NetlinkError::NoSuchInterface { .. }) => {
            return Err(FieldError::new("--iface", &iface, Problem::NoSuchInterface).into())
        }
        other => other?,
    };
    check_host(&link, &opts.config.desired)?;
    let load = LoadOptions { lb_mac: link.mac, ..opts.load.clone() };
    let pin_dir = opts.pin_root.join(&iface);
    let mut loaded = loader::load(&load, Some(&pin_dir))?;
    let mode = loaded.attach(&iface, opts.config.xdp_mode)?;
    info!(iface, ?mode, pins = %pin_dir.display(), "XDP program attached");
    let loader::Loaded { ebpf, maps, .. } = loaded;
    let mut agent = Agent {
        nl,
        link,
        dp: XdpDataplane::new(maps, load.max_backends),
        desired: opts.config.desired.clone(),
        added: BTreeSet::new(),
        resolving: BTreeSet::new(),
        unresolved_reported: BTreeSet::new(),
        last_mac: BTreeMap::new(),
    };
    let result = agent.serve(&opts).await;
    agent.cleanup().await;
    drop(ebpf); // detaches the program
    if let Err(e) = std::fs::remove_dir_all(&pin_dir) {
        warn!(path = %pin_dir.display(), error = %e, "removing pinned maps");
    }
    info!(iface, "detached and cleaned up");
    result
}

impl Agent {
    async fn serve(&mut self, opts: &RunOptions) -> Result<(), AgentError> {
        let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.sync().await?,
                _ = hup.recv() => {
                    self.reload(opts);
                    self.sync().await?;
                }
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }

    /// Re-reads the config file. Invalid VIPs are reported by name and skipped; the
    /// others are applied. A file that cannot be read at all keeps the current state.
    fn reload(&mut self, opts: &RunOptions) {
        let file = match opts.config_path.as_deref().map(config::read_file).transpose() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reload: keeping the current configuration");
                return;
            }
        };
        let mut raw = opts.flag_vips.clone();
        if let Some(f) = &file {
            raw.extend(f.raw_vips());
        }
        let (mut desired, errors) = config::validate_vips(&raw);
        for e in &errors {
            warn!(error = %e, "reload: skipping invalid VIP");
        }
        if let Err(e) = check_host(&self.link, &desired) {
            warn!(error = %e, "reload: skipping VIPs with off-link backends");
            desired.vips.retain(|vip, backends| {
                let ok = backends.iter().all(|b| netlink::on_link(&self.link, b.addr));
                if !ok {
                    warn!(%vip, "reload: VIP skipped: a backend is not on the interface's subnets");
                }
                ok
            });
        }
        info!(vips = desired.vips.len(), "configuration reloaded");
        self.desired = desired;
    }

    /// One level-triggered pass: addresses, neighbours, then the data plane.
    async fn sync(&mut self) -> Result<(), AgentError> {
        self.sync_addresses().await?;
        self.sync_neighbours().await?;
        let neigh = self.nl.neighbours(self.link.index).await?;
        let snapshot = self.snapshot(&neigh);
        let report = self.dp.apply(&snapshot)?;
        if !report.is_noop() {
            info!(
                added = report.vips_added,
                removed = report.vips_removed,
                changed = report.vips_changed,
                writes = report.writes,
                "data plane updated"
            );
        }
        Ok(())
    }

    fn snapshot(&mut self, neigh: &std::collections::HashMap<IpAddr, [u8; 6]>) -> Snapshot {
        let wanted: BTreeSet<IpAddr> = self.desired.vips.values().flatten().map(|b| b.addr).collect();
        self.last_mac.retain(|a, _| wanted.contains(a));
        for addr in &wanted {
            if let Some(mac) = neigh.get(addr) {
                if self.last_mac.insert(*addr, *mac).is_some_and(|old| old != *mac) {
                    info!(backend = %addr, "backend's MAC changed");
                }
            }
        }
        let mut vips = BTreeMap::new();
        for (vip, backends) in &self.desired.vips {
            let snap: Vec<SnapBackend> = backends
                .iter()
                .map(|b| {
                    let mac = self.last_mac.get(&b.addr).copied();
                    if mac.is_none() && self.unresolved_reported.insert(b.addr) {
                        warn!(backend = %b.addr, %vip, "backend's MAC not resolved yet: no traffic for it until it is");
                    } else if mac.is_some() && self.unresolved_reported.remove(&b.addr) {
                        info!(backend = %b.addr, "backend's MAC resolved");
                    }
                    SnapBackend { addr: b.addr, weight: b.weight, mac, draining: false }
                })
                .collect();
            vips.insert(*vip, snap);
        }
        Snapshot { vips }
    }

    async fn sync_addresses(&mut self) -> Result<(), AgentError> {
        let wanted: BTreeSet<IpAddr> = self.desired.vips.keys().map(|v| v.addr).collect();
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

    async fn sync_neighbours(&mut self) -> Result<(), AgentError> {
        let wanted: BTreeSet<IpAddr> = self.desired.vips.values().flatten().map(|b| b.addr).collect();
        for addr in wanted.difference(&self.resolving.clone()) {
            self.nl.resolve(self.link.index, *addr).await?;
            self.resolving.insert(*addr);
        }
        let stale: Vec<IpAddr> = self.resolving.difference(&wanted).copied().collect();
        for addr in stale {
            self.nl.forget(self.link.index, addr).await?;
            self.resolving.remove(&addr);
        }
        Ok(())
    }

    /// Removes the VIP addresses and neighbour entries this agent added.
    async fn cleanup(&mut self) {
        for addr in std::mem::take(&mut self.added) {
            if let Err(e) = self.nl.del_address(self.link.index, addr).await {
                warn!(%addr, error = %e, "removing VIP address");
            }
        }
        for addr in std::mem::take(&mut self.resolving) {
            if let Err(e) = self.nl.forget(self.link.index, addr).await {
                warn!(%addr, error = %e, "removing neighbour entry");
            }
        }
    }
}
