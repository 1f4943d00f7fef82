//! The loop: changes from the source, link-layer addresses, the clock and signals in;
//! host state, then the data plane, brought up to date VIP by VIP. One VIP that fails
//! (a full map, a refused write) is reported and retried on its own; the others go on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::failures::Failures;
use super::host::{Host, Users};
use super::plan::{self, Inputs};
use super::source::{self, Outcome, Source};
use super::{mtime, AgentError, RunOptions, MAINTAIN_EVERY, TICK};
use crate::dataplane::xdp::AdoptedBackend;
use crate::dataplane::{ApplyReport, Census, Dataplane, Snapshot, VipFailure};
use crate::model::{Desired, Vip};
use crate::ramp::{Ramp, Record};
use crate::view::{unix_ms, DrainView, SharedView};

/// What the next sync must bring up to date.
#[derive(Default)]
pub struct Pending {
    /// Everything (start, reload, after a failure).
    pub all: bool,
    pub vips: BTreeSet<Vip>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.all && self.vips.is_empty()
    }
}

pub struct Agent<D: Dataplane> {
    pub source: Source,
    /// How the data plane runs, for status messages.
    pub mode: String,
    pub host: Host,
    pub dp: D,
    pub desired: Desired,
    ramp: Ramp,
    live: BTreeMap<(Vip, IpAddr), u64>,
    view: SharedView,
    pub config_mtime: Option<SystemTime>,
    /// Which VIPs use which backends.
    users: Users,
    pending: Pending,
    failures: Failures,
    /// The program runs on the interface: only then is the agent ready (the first sync
    /// runs before, so that the program never starts on empty maps).
    pub attached: bool,
    /// A sync has succeeded.
    synced: bool,
    /// New or changed entries of the neighbour table.
    macs: mpsc::Receiver<Vec<(IpAddr, [u8; 6])>>,
}

impl<D: Dataplane> Agent<D> {
    pub fn new(
        source: Source,
        mode: String,
        host: Host,
        dp: D,
        desired: Desired,
        view: SharedView,
        macs: mpsc::Receiver<Vec<(IpAddr, [u8; 6])>>,
    ) -> Self {
        Agent {
            source,
            mode,
            host,
            dp,
            desired,
            ramp: Ramp::default(),
            live: BTreeMap::new(),
            view,
            config_mtime: None,
            users: Users::default(),
            pending: Pending { all: true, vips: BTreeSet::new() },
            failures: Failures::default(),
            attached: false,
            synced: false,
            macs,
        }
    }

    /// Continues where the previous agent left off: its ramps and drains, its VIP
    /// addresses and neighbour entries.
    pub fn take_over(&mut self, adopted: &[AdoptedBackend], vip_addrs: &BTreeSet<IpAddr>) {
        for addr in vip_addrs {
            if self.host.link.addrs.iter().any(|(a, _)| a == addr) {
                self.host.added.insert(*addr);
            }
        }
        for a in adopted {
            let record = Record {
                target: a.target,
                progress: a.progress,
                step_at_ms: a.since_ms,
                draining_since_ms: a.draining.then_some(a.since_ms),
            };
            self.ramp.restore(a.vip, a.addr, record);
            // Only if it is still there: an interface deleted and created again (its
            // pinned link replaced) has lost the VIP addresses, which must be added anew.
            if self.host.link.addrs.iter().any(|(addr, _)| *addr == a.vip.addr) {
                self.host.added.insert(a.vip.addr);
            }
            self.host.resolving.insert(a.addr);
            if let Some(mac) = a.mac {
                self.host.last_mac.insert(a.addr, mac);
            }
        }
    }

    pub async fn serve(&mut self, opts: &RunOptions) -> Result<(), AgentError> {
        let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
        let mut tick = tokio::time::interval(TICK);
        let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
        let watch = self.source.watch();
        // The flow-table walk in flight, on a worker thread (never on this loop).
        let mut census: Option<tokio::task::JoinHandle<<D::Census as Census>::Found>> = None;
        loop {
            let changed = async {
                match &watch {
                    Some(k) => k.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {
                    let vips = self.source.take_changes(&mut self.desired, &self.host.link);
                    self.pending.vips.extend(vips);
                    self.sync_pending(opts).await?;
                }
                Some(entries) = self.macs.recv() => {
                    let changed = self.host.apply_macs(&entries);
                    self.pending.vips.extend(self.desired_users(changed.into_iter().collect()));
                    self.sync_pending(opts).await?;
                }
                _ = tick.tick() => {
                    self.heartbeat(opts);
                    if self.source.is_static() && mtime(&opts.config_path) != self.config_mtime {
                        self.reload(opts);
                        self.pending.all = true;
                    }
                    // Time alone changes weights only where something ramps or drains.
                    self.pending.vips.extend(self.ramp.busy_vips().iter().copied());
                    self.pending.vips.extend(self.failures.due(Instant::now()));
                    if self.host.has_unresolved() {
                        match self.host.check_unresolved().await {
                            Ok(resolved) => {
                                self.pending.vips.extend(self.desired_users(resolved.into_iter().collect()));
                            }
                            Err(e) => warn!(error = %e, "looking up unresolved backends"),
                        }
                    }
                    self.sync_pending(opts).await?;
                }
                _ = maintain.tick(), if census.is_none() => {
                    let job = self.dp.census(opts.flow_idle);
                    census = Some(tokio::task::spawn_blocking(move || job.run()));
                }
                found = async { census.as_mut().expect("guarded").await }, if census.is_some() => {
                    census = None;
                    match found {
                        Ok(found) => self.maintain(found),
                        Err(e) => warn!(error = %e, "flow-table census"),
                    }
                }
                _ = hup.recv() => {
                    if self.source.is_static() {
                        self.reload(opts);
                    }
                    self.pending.all = true;
                    self.sync_pending(opts).await?;
                }
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }

    /// Notes that the loop turns, and whether the program is still attached.
    fn heartbeat(&mut self, opts: &RunOptions) {
        let iface = &opts.config.iface;
        let link = crate::dataplane::xdp::loader::link_path(&opts.pin_root.join(iface));
        let detached = crate::dataplane::xdp::loader::link::attached(&link, iface).err();
        let mut v = self.view.lock().expect("view lock");
        if detached.is_some() && v.detached != detached {
            warn!(problem = detached.as_deref().unwrap_or_default(), "data path not in place");
        }
        v.detached = detached;
        v.heartbeat_ms = unix_ms();
    }

    /// The VIPs that use or want any of the backends `addrs` (one whose MAC just became
    /// known may not be in use yet).
    fn desired_users(&self, addrs: std::collections::HashSet<IpAddr>) -> Vec<Vip> {
        if addrs.is_empty() {
            return Vec::new();
        }
        let mut vips = self.users.vips_using(&addrs);
        let wanting = self.desired.vips.iter().filter(|(_, s)| s.backends.iter().any(|b| addrs.contains(&b.addr)));
        vips.extend(wanting.map(|(v, _)| *v));
        vips
    }

    /// Re-reads the config file (see `super::reload`).
    fn reload(&mut self, opts: &RunOptions) {
        self.config_mtime = mtime(&opts.config_path);
        match super::reload::reload(opts, &self.desired, &self.host.link) {
            Ok((desired, had_errors)) => {
                if had_errors {
                    self.view.lock().expect("view lock").config_errors += 1;
                }
                self.desired = desired;
            }
            Err(()) => self.view.lock().expect("view lock").config_errors += 1,
        }
    }

    /// Brings what is pending up to date, records the outcome and tells the source.
    /// A sync that fails as a whole (not one VIP) is retried in full on the next tick;
    /// only a lost data plane is fatal.
    pub async fn sync_pending(&mut self, opts: &RunOptions) -> Result<(), AgentError> {
        if self.pending.is_empty() {
            // A Service can change without touching a VIP (a new problem): report it.
            self.report(None, &BTreeSet::new(), &plan::Plan::default(), &[], &[]);
            return Ok(());
        }
        let scope = std::mem::take(&mut self.pending);
        let started = Instant::now();
        let tried: BTreeSet<Vip> = if scope.all {
            let mut all: BTreeSet<Vip> = self.desired.vips.keys().copied().collect();
            all.extend(self.ramp.vips());
            all
        } else {
            scope.vips.clone()
        };
        match self.sync(opts, scope.all, &tried).await {
            Ok((plan, report)) => {
                let changes = self.failures.update(&tried, &report.failed, Instant::now());
                for f in &changes.new {
                    warn!(vip = %f.vip, error = %f.message, "VIP not applied; the others are, and it is retried");
                }
                for vip in &changes.fixed {
                    info!(%vip, "VIP applied after an earlier failure");
                }
                self.record(None, started);
                self.report(None, &tried, &plan, &changes.new, &report.notices);
                Ok(())
            }
            Err(e) => {
                self.pending.all = true;
                self.record(Some(&e), started);
                self.report(Some(e.to_string()), &BTreeSet::new(), &plan::Plan::default(), &[], &[]);
                match e {
                    AgentError::Dataplane(_) => Err(e),
                    _ => Ok(()),
                }
            }
        }
    }

    fn report(
        &mut self,
        error: Option<String>,
        tried: &BTreeSet<Vip>,
        plan: &plan::Plan,
        new: &[VipFailure],
        notices: &[(Vip, String)],
    ) {
        let outcome = Outcome {
            mode: &self.mode,
            error,
            tried,
            dp: &self.dp,
            failures: &self.failures,
            live: &self.live,
            effective: &plan.effective,
            events: &plan.events,
            new_failures: new,
            notices,
        };
        self.source.report(&outcome);
    }

    /// Records a sync's outcome in the view (readiness, counters).
    fn record(&mut self, error: Option<&AgentError>, started: Instant) {
        let mut v = self.view.lock().expect("view lock");
        v.syncs += 1;
        v.last_sync_seconds = started.elapsed().as_secs_f64();
        v.vip_failures = self.failures.len() as u64;
        v.vip_capacity_failures = self.failures.capacity_count() as u64;
        v.sync_failing = error.is_some();
        match error {
            None => {
                self.synced = true;
                drop(v);
                self.ready_if_done();
            }
            Some(e) => {
                v.sync_errors += 1;
                warn!(error = %e, "sync failed; retrying");
            }
        }
    }

    /// Ready once the first sync succeeded and the program runs on the interface.
    pub fn ready_if_done(&mut self) {
        let mut v = self.view.lock().expect("view lock");
        if self.synced && self.attached && !v.ready {
            v.ready = true;
            drop(v);
            crate::mem::give_back_free_memory();
            info!(rss_mib = crate::mem::rss_mib(), "ready: first sync done");
        }
    }

    /// One level-triggered pass over the VIPs `tried`: host state, ramp, then the data
    /// plane (all of it when `all`).
    async fn sync(
        &mut self,
        opts: &RunOptions,
        all: bool,
        tried: &BTreeSet<Vip>,
    ) -> Result<(plan::Plan, ApplyReport), AgentError> {
        let refused =
            if all { self.host.sync_all(&self.desired).await } else { self.host.sync_vips(&self.desired, tried).await };
        for vip in tried.iter().filter(|v| !self.desired.vips.contains_key(v)) {
            self.failures.forget(vip);
        }
        let host = &self.host;
        let input = Inputs {
            desired: &self.desired,
            ramp: opts.ramp,
            drain: &opts.drain,
            live: &self.live,
            mac: &|a| host.mac(a),
            now_ms: unix_ms(),
        };
        let plan = plan::plan(tried, &input, &mut self.ramp, &mut self.users);
        source::log_events(&plan.events);
        let result = if all {
            let vips = plan.changes.iter().filter_map(|(v, s)| Some((*v, s.clone()?))).collect();
            self.dp.apply(&Snapshot { vips })
        } else {
            self.dp.apply_vips(&plan.changes)
        };
        let mut report = result.map_err(|e| AgentError::Dataplane(Box::new(e)))?;
        // A VIP whose address the kernel refused is reported and retried like one the
        // data plane refused; every other VIP is in place.
        for vip in tried.iter().filter(|v| self.desired.vips.contains_key(v)) {
            if let Some(why) = refused.get(&vip.addr) {
                let message = format!("VIP {vip}: adding its address to {}: {why}", self.host.link.name);
                report.failed.push(VipFailure { vip: *vip, capacity: false, message });
            }
        }
        if !report.is_noop() {
            info!(
                added = report.vips_added,
                removed = report.vips_removed,
                changed = report.vips_changed,
                writes = report.writes,
                failed = report.failed.len(),
                "data plane updated"
            );
        }
        self.host.forget(&plan.unused).await;
        Ok((plan, report))
    }

    /// Takes a finished census: live flows of draining backends, settled slots.
    fn maintain(&mut self, found: <D::Census as Census>::Found) {
        match self.dp.maintain(found) {
            Ok(m) => {
                if m.settled_slots > 0 {
                    info!(slots = m.settled_slots, "changed table slots settled back to stable");
                }
                self.view.lock().expect("view lock").draining = m
                    .live_flows
                    .iter()
                    .map(|((vip, addr), n)| DrainView { vip: vip.to_string(), backend: *addr, live_flows: *n })
                    .collect();
                self.live = m.live_flows;
            }
            Err(e) => warn!(error = %e, "reading the flow table"),
        }
    }
}
