//! The running agent: wanted state -> ramp -> snapshot -> data plane, with the VIP
//! addresses and neighbour entries kept in step.
//!
//! The data path outlives the agent: the XDP link and the maps are pinned. A restarted
//! agent adopts them (same ABI and settings) and swaps its program into the pinned link
//! atomically; SIGTERM leaves everything in place; `lb-agent cleanup` removes it.

mod cleanup;
mod host;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use cleanup::cleanup;

use crate::config::{self, Config, FieldError, Problem, RawVip};
use crate::dataplane::xdp::{AdoptedBackend, XdpDataplane, XdpError};
use crate::dataplane::{Dataplane, SnapBackend, SnapVip, Snapshot};
use crate::k8s::desired::{self, ServiceKey};
use crate::k8s::report::{self, HostState, Report, ReportSender};
use crate::k8s::watch::{KubeSource, WatchOptions};
use crate::loader::{self, Attachment, LoadError, LoadOptions, MapsOrigin};
use crate::model::{Desired, Vip, VipSpec};
use crate::netlink::{self, Link, Netlink, NetlinkError};
use crate::ramp::{DrainPolicy, Effective, Event, Ramp, RampPolicy, Record, Wanted};
use host::{Host, Users};
use view::{DrainView, SharedView};

/// Everything `run` needs.
pub struct RunOptions {
    pub config: Config,
    /// Re-read on SIGHUP and when it changes.
    pub config_path: Option<PathBuf>,
    /// VIPs given as flags (kept across reloads).
    pub flag_vips: Vec<RawVip>,
    pub load: LoadOptions,
    /// Pins go to `<pin_root>/<iface>/`.
    pub pin_root: PathBuf,
    pub ramp: RampPolicy,
    pub drain: DrainPolicy,
    /// How long a flow may be silent and still count as live.
    pub flow_idle: Duration,
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; `None` = off.
    pub metrics_addr: Option<SocketAddr>,
    /// Take the wanted state from Kubernetes instead of flags / the config file.
    pub kube: Option<KubeOptions>,
}

/// Kubernetes as the source.
pub struct KubeOptions {
    /// A kubeconfig file (an agent outside the cluster); in-cluster config otherwise.
    pub kubeconfig: Option<PathBuf>,
    pub watch: WatchOptions,
    /// This LB host's name (conditions, Events).
    pub host: String,
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
    #[error("Kubernetes client configuration: {0}")]
    KubeConfig(String),
    #[error("Kubernetes client: {0}")]
    Kube(#[source] kube::Error),
    #[error("metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Tick of the sync loop (ramp steps, neighbour changes, config file changes).
const TICK: Duration = Duration::from_millis(500);
/// How often live flows are counted and changed slots settled.
const MAINTAIN_EVERY: Duration = Duration::from_secs(2);
/// How often the whole neighbour table is read for MAC changes (on a thread of its own:
/// at 100,000 backends a read costs ~85 ms).
const READ_MACS_EVERY: Duration = Duration::from_secs(5);

/// Where the wanted state comes from.
enum Source {
    /// Flags and the config file.
    Static,
    Kube {
        source: KubeSource,
        report: ReportSender,
        state: Box<desired::State>,
        /// Services whose outcome changed since the last report.
        changed: BTreeSet<ServiceKey>,
    },
}

/// What the next sync must bring up to date.
#[derive(Default)]
struct Pending {
    /// Everything (start, reload, after a failure).
    all: bool,
    vips: BTreeSet<Vip>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.all && self.vips.is_empty()
    }
}

struct Agent {
    source: Source,
    /// How the program is attached, for status messages.
    mode: String,
    host: Host,
    dp: XdpDataplane,
    desired: Desired,
    ramp: Ramp,
    live: BTreeMap<(Vip, IpAddr), u64>,
    view: SharedView,
    config_mtime: Option<SystemTime>,
    /// Which VIPs use which backends.
    users: Users,
    pending: Pending,
    /// New or changed entries of the neighbour table.
    macs: mpsc::Receiver<Vec<(IpAddr, [u8; 6])>>,
    /// What the reporter was last told of this host.
    reported_host: Option<HostState>,
}

/// Checks the parts of the config that depend on this host, before anything is touched.
fn check_host(link: &Link, desired: &Desired) -> Result<(), FieldError> {
    for (vip, spec) in &desired.vips {
        for b in &spec.backends {
            if !netlink::on_link(link, b.addr) {
                let value = format!("{} (VIP {vip})", b.addr);
                return Err(FieldError::new("--backend", value, Problem::OffLink { iface: link.name.clone() }));
            }
        }
    }
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn mtime(path: &Option<PathBuf>) -> Option<SystemTime> {
    path.as_ref().and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok())
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
    let (mut loaded, origin) = loader::load_pinned(&load, &pin_dir)?;
    let attachment = loaded.attach_pinned(&iface, opts.config.xdp_mode, &pin_dir)?;
    remove_stale_map_dirs(&pin_dir);
    match (&attachment, &origin) {
        (Attachment::New(mode), _) => {
            info!(iface, ?mode, pins = %pin_dir.display(), "XDP program attached (link pinned)")
        }
        (Attachment::Replaced, _) => {
            info!(iface, pins = %pin_dir.display(), "new XDP program swapped into the pinned link")
        }
    }
    let loader::Loaded { ebpf, maps, logger, .. } = loaded;
    if let Some(logger) = logger {
        crate::kernel_log::spawn(logger);
    }
    let (dp, adopted) = match &origin {
        MapsOrigin::Adopted => XdpDataplane::adopt(maps, &load)?,
        MapsOrigin::Fresh => (XdpDataplane::new(maps, &load), vec![]),
        MapsOrigin::Replaced { found } => {
            warn!(?found, wanted = ?load.meta(), "pinned maps were written with other settings or ABI: replaced");
            (XdpDataplane::new(maps, &load), vec![])
        }
    };
    info!(
        ?origin,
        vips = adopted.iter().map(|a| a.vip).collect::<BTreeSet<_>>().len(),
        backends = adopted.len(),
        "maps ready"
    );
    let view = SharedView::default();
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::spawn(addr, pin_dir.clone(), view.clone(), opts.flow_idle)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        info!(%addr, "metrics endpoint listening");
    }
    let mode = match attachment {
        Attachment::New(m) => {
            format!("XDP {} on {iface}", if m == aya::programs::XdpMode::Skb { "generic" } else { "native" })
        }
        Attachment::Replaced => format!("XDP on {iface} (pinned link)"),
    };
    let source = match &opts.kube {
        None => Source::Static,
        Some(k) => kube_source(k, &mode).await?,
    };
    let macs = host::spawn_mac_reader(link.index, READ_MACS_EVERY);
    let mut agent = Agent {
        source,
        mode,
        host: Host::new(nl, link),
        dp,
        desired: opts.config.desired.clone(),
        ramp: Ramp::default(),
        live: BTreeMap::new(),
        view,
        config_mtime: mtime(&opts.config_path),
        users: Users::default(),
        pending: Pending { all: true, vips: BTreeSet::new() },
        macs,
        reported_host: None,
    };
    agent.take_over(&adopted);
    if let Source::Kube { source, state, changed, .. } = &mut agent.source {
        info!("waiting for the Service, EndpointSlice and Pod caches");
        source.ready().await;
        {
            let mut cache = source.lock();
            cache.take_dirty();
            **state = cache.compute();
        }
        changed.extend(state.services.keys().cloned());
        agent.desired = filter_off_link(state.desired.clone(), &agent.host.link);
        crate::mem::give_back_free_memory();
        let rss_mib = crate::mem::rss_mib();
        info!(services = state.services.len(), vips = agent.desired.vips.len(), rss_mib, "caches ready");
    }
    let result = agent.serve(&opts).await;
    // The program stays attached through its pinned link; dropping our handles is all.
    drop(ebpf);
    info!(iface, "agent stopped; the data path stays in place (`lb-agent cleanup` removes it)");
    result
}

/// Connects to Kubernetes and starts the watches and the reporter.
async fn kube_source(k: &KubeOptions, mode: &str) -> Result<Source, AgentError> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| AgentError::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| AgentError::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| AgentError::KubeConfig(e.to_string()))?,
    };
    let client = kube::Client::try_from(config).map_err(AgentError::Kube)?;
    let source = KubeSource::start(&client, &k.watch);
    let report = report::spawn(client, &k.host, source.clone(), mode.to_string());
    Ok(Source::Kube { source, report, state: Box::default(), changed: BTreeSet::new() })
}

/// Backends that are not on the interface's subnets cannot be reached by DR: dropped
/// (with a warning), the rest of their VIP stays.
fn filter_off_link(mut desired: Desired, link: &Link) -> Desired {
    for (vip, spec) in desired.vips.iter_mut() {
        on_link_only(vip, spec, link);
    }
    desired
}

fn on_link_only(vip: &Vip, spec: &mut VipSpec, link: &Link) {
    spec.backends.retain(|b| {
        let ok = netlink::on_link(link, b.addr);
        if !ok {
            warn!(%vip, backend = %b.addr, iface = %link.name, "backend skipped: not on the interface's subnets");
        }
        ok
    });
}

/// Removes maps pinned by agents of another ABI (no program uses them any more).
fn remove_stale_map_dirs(pin_dir: &std::path::Path) {
    let current = loader::maps_dir(pin_dir);
    let Ok(entries) = std::fs::read_dir(pin_dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let stale = path != current && e.file_name().to_string_lossy().starts_with("maps-v");
        if stale {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => info!(path = %path.display(), "removed maps of another ABI"),
                Err(err) => warn!(path = %path.display(), error = %err, "removing maps of another ABI"),
            }
        }
    }
}

impl Agent {
    /// Continues where the previous agent left off: its ramps and drains, its VIP
    /// addresses and neighbour entries.
    fn take_over(&mut self, adopted: &[AdoptedBackend]) {
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

    async fn serve(&mut self, opts: &RunOptions) -> Result<(), AgentError> {
        let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
        let mut tick = tokio::time::interval(TICK);
        let mut maintain = tokio::time::interval(MAINTAIN_EVERY);
        let kube = match &self.source {
            Source::Kube { source, .. } => Some(source.clone()),
            Source::Static => None,
        };
        loop {
            let changed = async {
                match &kube {
                    Some(k) => k.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {
                    self.take_kube_changes();
                    self.sync_pending(opts).await?;
                }
                Some(entries) = self.macs.recv() => {
                    let changed = self.host.apply_macs(&entries);
                    self.pending.vips.extend(self.desired_users(changed.into_iter().collect()));
                    self.sync_pending(opts).await?;
                }
                _ = tick.tick() => {
                    if matches!(self.source, Source::Static) && mtime(&opts.config_path) != self.config_mtime {
                        self.reload(opts);
                        self.pending.all = true;
                    }
                    // Time alone changes weights only where something ramps or drains.
                    self.pending.vips.extend(self.ramp.busy_vips().iter().copied());
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
                _ = maintain.tick() => self.maintain(opts),
                _ = hup.recv() => {
                    if matches!(self.source, Source::Static) {
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

    /// Takes what changed in the Kubernetes caches into the wanted state: only the
    /// Services marked, and the VIPs they touch.
    fn take_kube_changes(&mut self) {
        let Source::Kube { source, state, changed, .. } = &mut self.source else { return };
        let mut update = desired::Update::default();
        source.lock().update(state, &mut update);
        for vip in &update.vips {
            match state.desired.vips.get(vip) {
                Some(spec) => {
                    let mut spec = spec.clone();
                    on_link_only(vip, &mut spec, &self.host.link);
                    self.desired.vips.insert(*vip, spec);
                }
                None => {
                    self.desired.vips.remove(vip);
                }
            }
        }
        self.pending.vips.extend(update.vips);
        changed.extend(update.services);
    }

    /// Re-reads the config file. Invalid VIPs are reported by name and skipped; the
    /// others are applied. A file that cannot be read at all keeps the current state.
    fn reload(&mut self, opts: &RunOptions) {
        self.config_mtime = mtime(&opts.config_path);
        let file = match opts.config_path.as_deref().map(config::read_file).transpose() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reload: keeping the current configuration");
                self.view.lock().expect("view lock").config_errors += 1;
                return;
            }
        };
        let mut raw = opts.flag_vips.clone();
        if let Some(f) = &file {
            raw.extend(f.raw_vips());
        }
        let (mut desired, errors) = config::validate_vips(&raw);
        for e in &errors {
            warn!(error = %e, "reload: invalid VIP skipped");
        }
        // An invalid entry for a VIP that is running keeps its last good configuration:
        // a typo must not take a working VIP down.
        for r in &raw {
            let Ok(vip) = r.address.trim().parse::<Vip>() else { continue };
            if let (false, Some(old)) = (desired.vips.contains_key(&vip), self.desired.vips.get(&vip)) {
                warn!(%vip, "reload: VIP keeps its last good configuration");
                desired.vips.insert(vip, old.clone());
            }
        }
        let link = &self.host.link;
        desired.vips.retain(|vip, spec| {
            let off = spec.backends.iter().find(|b| !netlink::on_link(link, b.addr));
            if let Some(b) = off {
                warn!(%vip, backend = %b.addr, iface = %link.name, "reload: VIP skipped: backend not on the interface's subnets");
            }
            off.is_none()
        });
        if !errors.is_empty() {
            self.view.lock().expect("view lock").config_errors += 1;
        }
        info!(vips = desired.vips.len(), skipped = errors.len(), "configuration reloaded");
        self.desired = desired;
    }

    /// Brings what is pending up to date, records the outcome and tells the reporter.
    /// A failed sync is retried in full on the next tick; only a lost data plane is fatal.
    async fn sync_pending(&mut self, opts: &RunOptions) -> Result<(), AgentError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let scope = std::mem::take(&mut self.pending);
        let started = Instant::now();
        match self.sync(opts, &scope).await {
            Ok((progress, events)) => {
                self.record(None, started);
                self.report(None, progress, events);
                Ok(())
            }
            Err(e) => {
                self.pending.all = true;
                self.record(Some(&e), started);
                self.report(Some(e.to_string()), Vec::new(), Vec::new());
                match e {
                    AgentError::Dataplane(e) => Err(e.into()),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Tells the reporter (Kubernetes only) how this host is, what became of the
    /// Services that changed, the backends' progress and the ramp's events.
    fn report(&mut self, error: Option<String>, progress: Vec<(Vip, Effective)>, events: Vec<Event>) {
        let Source::Kube { report, state, changed, .. } = &mut self.source else { return };
        let host = HostState { mode: self.mode.clone(), error };
        if self.reported_host.as_ref() != Some(&host) {
            report.send(Report::Host(host.clone()));
            self.reported_host = Some(host);
        }
        if !changed.is_empty() {
            let list = std::mem::take(changed).into_iter().map(|k| {
                let outcome = state.services.get(&k).cloned();
                (k, outcome)
            });
            report.send(Report::Services(list.collect()));
        }
        let progress: Vec<(IpAddr, (String, String), u32)> = progress
            .iter()
            .filter_map(|(vip, e)| Some((e.addr, state.pod_of(vip, e.addr)?.clone(), e.progress)))
            .collect();
        if !progress.is_empty() {
            report.send(Report::Progress(progress));
        }
        for ev in events {
            let (vip, note, reason) = match ev {
                Event::RampFinished { vip, backend } => {
                    (vip, format!("backend {backend} reached full weight"), "RampFinished")
                }
                Event::DrainFinished { vip, backend, live_flows, timed_out } => (
                    vip,
                    format!(
                        "backend {backend} drained ({}; {live_flows} live flows)",
                        if timed_out { "timed out" } else { "no flows left" }
                    ),
                    "DrainFinished",
                ),
                _ => continue,
            };
            if let Some(key) = state.owner(&vip) {
                report.send(Report::Event(key.clone(), reason, format!("{vip}: {note}")));
            }
        }
    }

    /// Records a sync's outcome in the view (readiness, counters).
    fn record(&mut self, error: Option<&AgentError>, started: Instant) {
        let mut v = self.view.lock().expect("view lock");
        v.syncs += 1;
        v.last_sync_seconds = started.elapsed().as_secs_f64();
        match error {
            None if !v.ready => {
                v.ready = true;
                crate::mem::give_back_free_memory();
                info!(rss_mib = crate::mem::rss_mib(), "ready: first sync done");
            }
            None => {}
            Some(e) => {
                v.sync_errors += 1;
                warn!(error = %e, "sync failed; retrying");
            }
        }
    }

    /// One level-triggered pass over the VIPs in `scope`: host state, ramp, then the
    /// data plane. Returns the effective weights of backends taking new flows (for their
    /// progress labels) and the ramp's events.
    async fn sync(
        &mut self,
        opts: &RunOptions,
        scope: &Pending,
    ) -> Result<(Vec<(Vip, Effective)>, Vec<Event>), AgentError> {
        let vips: BTreeSet<Vip> = if scope.all {
            self.host.sync_all(&self.desired).await?;
            let mut all: BTreeSet<Vip> = self.desired.vips.keys().copied().collect();
            all.extend(self.ramp.vips());
            all
        } else {
            self.host.sync_vips(&self.desired, &scope.vips).await?;
            scope.vips.clone()
        };
        let now = unix_ms();
        let mut events = Vec::new();
        let mut changes: BTreeMap<Vip, Option<SnapVip>> = BTreeMap::new();
        let mut unused = Vec::new();
        let mut progress = Vec::new();
        for vip in vips {
            let Some(spec) = self.desired.vips.get(&vip) else {
                // A VIP that leaves takes its backends with it (no VIP, no flows).
                self.ramp.remove_vip(&vip);
                unused.extend(self.users.set(vip, Vec::new()));
                changes.insert(vip, None);
                continue;
            };
            let wanted: Vec<Wanted> = spec
                .backends
                .iter()
                .map(|b| Wanted {
                    addr: b.addr,
                    target: b.weight,
                    start_progress: b.start_progress,
                    draining: b.draining,
                })
                .collect();
            let live = &self.live;
            let effective = self.ramp.advance_vip(
                &vip,
                &spec.ramp.unwrap_or(opts.ramp),
                &wanted,
                &opts.drain,
                now,
                &|v, a| live.get(&(*v, a)).copied(),
                &mut events,
            );
            let backends: Vec<SnapBackend> = effective
                .iter()
                .map(|e| SnapBackend {
                    addr: e.addr,
                    weight: e.weight,
                    mac: self.host.mac(e.addr),
                    draining: e.draining,
                    target: e.target,
                    progress: e.progress,
                    since_ms: e.since_ms,
                })
                .collect();
            unused.extend(self.users.set(vip, effective.iter().map(|e| e.addr).collect()));
            // Progress labels: only for backends with a pod behind them.
            if let Source::Kube { state, .. } = &self.source {
                let with_pod = effective.iter().filter(|e| !e.draining && state.pod_of(&vip, e.addr).is_some());
                progress.extend(with_pod.map(|e| (vip, *e)));
            }
            let source_ranges = spec.source_ranges.clone();
            changes.insert(vip, Some(SnapVip { backends, affinity_timeout_s: spec.affinity_timeout_s, source_ranges }));
        }
        log_events(&events);
        let report = if scope.all {
            let vips = changes.into_iter().filter_map(|(v, s)| Some((v, s?))).collect();
            self.dp.apply(&Snapshot { vips })?
        } else {
            self.dp.apply_vips(&changes)?
        };
        if !report.is_noop() {
            info!(
                added = report.vips_added,
                removed = report.vips_removed,
                changed = report.vips_changed,
                writes = report.writes,
                "data plane updated"
            );
        }
        self.host.forget(&unused).await?;
        Ok((progress, events))
    }

    /// Counts live flows of draining backends and settles changed slots.
    fn maintain(&mut self, opts: &RunOptions) {
        match self.dp.maintain(opts.flow_idle) {
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

fn log_events(events: &[Event]) {
    for e in events {
        match e {
            Event::RampStarted { vip, backend, progress } => info!(%vip, %backend, progress, "ramp started"),
            Event::RampFinished { vip, backend } => info!(%vip, %backend, "ramp finished"),
            Event::DrainStarted { vip, backend } => info!(%vip, %backend, "drain started: no new flows"),
            Event::DrainFinished { vip, backend, live_flows, timed_out } => {
                info!(%vip, %backend, live_flows, timed_out, "drain finished: backend removed")
            }
        }
    }
}
