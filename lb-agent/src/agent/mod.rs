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
use tracing::{info, warn};

pub use cleanup::cleanup;

use crate::config::{self, Config, FieldError, Problem, RawVip};
use crate::dataplane::xdp::{AdoptedBackend, XdpDataplane, XdpError};
use crate::dataplane::{Dataplane, SnapBackend, SnapVip, Snapshot};
use crate::k8s::desired::Computed;
use crate::k8s::report::{HostState, KubeReporter};
use crate::k8s::watch::{KubeSource, WatchOptions};
use crate::loader::{self, Attachment, LoadError, LoadOptions, MapsOrigin};
use crate::model::{Desired, Vip};
use crate::netlink::{self, Link, Netlink, NetlinkError};
use crate::ramp::{DrainPolicy, Effective, Event, Ramp, RampPolicy, Record, Wanted};
use host::Host;
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
/// How often the whole neighbour table is read for MAC changes (a dump of every entry:
/// at 100,000 backends it costs ~100 ms, so not on every tick).
const READ_MACS_EVERY: Duration = Duration::from_secs(5);

/// Where the wanted state comes from.
enum Source {
    /// Flags and the config file.
    Static,
    Kube {
        source: Box<KubeSource>,
        reporter: Box<KubeReporter>,
        computed: Box<Computed>,
    },
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
    macs_read_at: Instant,
    /// Something changed since the last successful sync (a reload, a failure).
    dirty: bool,
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
    let loader::Loaded { ebpf, maps, .. } = loaded;
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
        crate::metrics::spawn(addr, pin_dir.clone(), view.clone())
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        info!(%addr, "metrics endpoint listening");
    }
    let source = match &opts.kube {
        None => Source::Static,
        Some(k) => kube_source(k).await?,
    };
    let mode = match attachment {
        Attachment::New(m) => {
            format!("XDP {} on {iface}", if m == aya::programs::XdpMode::Skb { "generic" } else { "native" })
        }
        Attachment::Replaced => format!("XDP on {iface} (pinned link)"),
    };
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
        // The first tick reads the neighbour table.
        macs_read_at: Instant::now().checked_sub(READ_MACS_EVERY).unwrap_or_else(Instant::now),
        dirty: true,
    };
    agent.take_over(&adopted);
    if let Source::Kube { source, computed, .. } = &mut agent.source {
        info!("waiting for the Service, EndpointSlice and Pod caches");
        source.ready().await;
        **computed = source.compute();
        agent.desired = filter_off_link(computed.desired.clone(), &agent.host.link);
        info!(services = computed.services.len(), vips = agent.desired.vips.len(), "caches ready");
    }
    let result = agent.serve(&opts).await;
    // The program stays attached through its pinned link; dropping our handles is all.
    drop(ebpf);
    info!(iface, "agent stopped; the data path stays in place (`lb-agent cleanup` removes it)");
    result
}

/// Connects to Kubernetes and starts the watches.
async fn kube_source(k: &KubeOptions) -> Result<Source, AgentError> {
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
    let reporter = KubeReporter::new(client, &k.host);
    Ok(Source::Kube { source: Box::new(source), reporter: Box::new(reporter), computed: Box::default() })
}

/// Backends that are not on the interface's subnets cannot be reached by DR: dropped
/// (with a warning), the rest of their VIP stays.
fn filter_off_link(mut desired: Desired, link: &Link) -> Desired {
    for (vip, spec) in desired.vips.iter_mut() {
        spec.backends.retain(|b| {
            let ok = netlink::on_link(link, b.addr);
            if !ok {
                warn!(%vip, backend = %b.addr, iface = %link.name, "backend skipped: not on the interface's subnets");
            }
            ok
        });
    }
    desired
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
            self.host.added.insert(a.vip.addr);
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
        let kube_changed = match &self.source {
            Source::Kube { source, .. } => Some(source.changed.clone()),
            Source::Static => None,
        };
        loop {
            let changed = async {
                match &kube_changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {
                    self.recompute();
                    self.sync_and_record(opts, false).await?;
                }
                _ = tick.tick() => {
                    if matches!(self.source, Source::Static) && mtime(&opts.config_path) != self.config_mtime {
                        self.reload(opts);
                        self.dirty = true;
                    }
                    // Time alone changes weights only while something ramps or drains; the
                    // neighbour table is re-read every READ_MACS_EVERY. Otherwise a tick
                    // has nothing to do (changes are handled when they arrive).
                    let read_macs = self.macs_read_at.elapsed() >= READ_MACS_EVERY;
                    if read_macs || self.dirty || self.ramp.busy() || self.host.has_unresolved() {
                        if read_macs {
                            self.macs_read_at = Instant::now();
                        }
                        self.sync_and_record(opts, read_macs).await?;
                    }
                }
                _ = maintain.tick() => self.maintain(opts),
                _ = hup.recv() => {
                    if matches!(self.source, Source::Static) {
                        self.reload(opts);
                    }
                    self.sync_and_record(opts, true).await?;
                }
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }

    /// Recomputes the wanted state from the Kubernetes caches.
    fn recompute(&mut self) {
        if let Source::Kube { source, computed, .. } = &mut self.source {
            **computed = source.compute();
            self.desired = filter_off_link(computed.desired.clone(), &self.host.link);
        }
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

    async fn sync_and_record(&mut self, opts: &RunOptions, read_macs: bool) -> Result<(), AgentError> {
        let started = Instant::now();
        let result = self.sync(opts, read_macs).await;
        self.dirty = result.is_err();
        let error = result.as_ref().err().map(|e| e.to_string());
        let (effective, events) = match &result {
            Ok(x) => x.clone(),
            Err(_) => (BTreeMap::new(), Vec::new()),
        };
        let result = result.map(|_| ());
        // The data plane is what readiness is about: recorded before the reporting.
        self.record(&result, started);
        if let Source::Kube { source, reporter, computed } = &mut self.source {
            reporter.report(source, computed, &HostState { mode: self.mode.clone(), error }).await;
            reporter.progress(source, computed, &effective).await;
            reporter.backend_events(source, computed, &events).await;
        }
        // A failed sync is retried on the next tick; only a lost data plane is fatal.
        match result {
            Err(AgentError::Dataplane(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Records a sync's outcome in the view (readiness, counters).
    fn record(&mut self, result: &Result<(), AgentError>, started: Instant) {
        let mut v = self.view.lock().expect("view lock");
        v.syncs += 1;
        v.last_sync_seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(()) if !v.ready => {
                v.ready = true;
                info!("ready: first sync done");
            }
            Ok(()) => {}
            Err(e) => {
                v.sync_errors += 1;
                warn!(error = %e, "sync failed; retrying");
            }
        }
    }

    /// One level-triggered pass: host state, ramp, then the data plane. Returns the
    /// effective weights and the ramp's events.
    async fn sync(
        &mut self,
        opts: &RunOptions,
        read_macs: bool,
    ) -> Result<(BTreeMap<Vip, Vec<Effective>>, Vec<Event>), AgentError> {
        self.host.sync(&self.desired, read_macs).await?;
        let wanted: BTreeMap<Vip, (RampPolicy, Vec<Wanted>)> = self
            .desired
            .vips
            .iter()
            .map(|(vip, spec)| {
                let list = spec
                    .backends
                    .iter()
                    .map(|b| Wanted {
                        addr: b.addr,
                        target: b.weight,
                        start_progress: b.start_progress,
                        draining: b.draining,
                    })
                    .collect();
                (*vip, (spec.ramp.unwrap_or(opts.ramp), list))
            })
            .collect();
        let mut events = Vec::new();
        let live = &self.live;
        let effective =
            self.ramp.advance(&wanted, &opts.drain, unix_ms(), |v, a| live.get(&(*v, a)).copied(), &mut events);
        log_events(&events);
        let mut snapshot = Snapshot::default();
        let mut in_use = BTreeSet::new();
        for (vip, list) in &effective {
            let vip = *vip;
            let backends = list
                .iter()
                .map(|e| {
                    in_use.insert(e.addr);
                    SnapBackend {
                        addr: e.addr,
                        weight: e.weight,
                        mac: self.host.mac(e.addr),
                        draining: e.draining,
                        target: e.target,
                        progress: e.progress,
                        since_ms: e.since_ms,
                    }
                })
                .collect();
            let affinity_timeout_s = self.desired.vips.get(&vip).map(|s| s.affinity_timeout_s).unwrap_or(0);
            snapshot.vips.insert(vip, SnapVip { backends, affinity_timeout_s });
        }
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
        self.host.forget_unused(&in_use).await?;
        Ok((effective, events))
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
