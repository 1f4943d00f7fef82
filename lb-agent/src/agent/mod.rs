//! The running agent: wanted state -> ramp -> snapshot -> data plane, with the VIP
//! addresses and neighbour entries kept in step.
//!
//! The data path outlives the agent: the XDP link and the maps are pinned. A restarted
//! agent adopts them (same ABI and settings) and swaps its program into the pinned link
//! atomically; SIGTERM leaves everything in place; `lb-agent cleanup` removes it.

mod cleanup;
mod failures;
mod host;
mod plan;
mod reload;
mod serve;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

pub use cleanup::cleanup;

use crate::config::{Config, FieldError, Problem, RawVip};
use crate::dataplane::xdp::loader::{self, Attachment, LoadError, LoadOptions, MapsOrigin};
use crate::dataplane::xdp::{carry, XdpDataplane};
use crate::k8s::report;
use crate::k8s::watch::{KubeSource, WatchOptions};
use crate::model::Desired;
use crate::netlink::{self, Link, Netlink, NetlinkError};
use crate::ramp::{DrainPolicy, RampPolicy};
use crate::view::SharedView;
use host::Host;
use serve::Agent;
use source::Source;

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
    /// The data plane as a whole (not one VIP of it) is lost.
    #[error("data plane: {0}")]
    Dataplane(#[source] Box<dyn std::error::Error + Send + Sync>),
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
    // Maps written with other settings are read before their pins are replaced: their
    // ramps and flow pins are carried over into the new maps.
    let previous = carry::previous(&pin_dir, &load);
    let (loaded, origin) = loader::load_pinned(&load, &pin_dir)?;
    let loader::Loaded { mut ebpf, maps, logger, .. } = loaded;
    if let Some(logger) = logger {
        crate::kernel_log::spawn(logger);
    }
    let mut old_dp: Option<XdpDataplane> = None;
    let (dp, adopted) = match (&origin, previous) {
        (MapsOrigin::Adopted, _) => XdpDataplane::adopt(maps, &load).map_err(|e| AgentError::Dataplane(Box::new(e)))?,
        (MapsOrigin::Fresh, _) => (XdpDataplane::new(maps, &load), vec![]),
        (MapsOrigin::Replaced { found }, previous) => {
            warn!(?found, wanted = ?load.meta(), "pinned maps were written with other settings or ABI: replaced");
            let (old, adopted) = previous.map_or((None, vec![]), |(old, a)| (Some(old), a));
            old_dp = old;
            (XdpDataplane::new(maps, &load), adopted)
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
    let source = match &opts.kube {
        None => Source::Static,
        Some(k) => kube_source(k, &format!("XDP on {iface}")).await?,
    };
    let macs = host::spawn_mac_reader(link.index, READ_MACS_EVERY);
    let mode = format!("XDP on {iface}");
    let mut agent = Agent::new(source, mode, Host::new(nl, link), dp, opts.config.desired.clone(), view, macs);
    agent.config_mtime = mtime(&opts.config_path);
    // VIP addresses an earlier agent added (a VIP without backends included): not the
    // host's own, though they are on the interface.
    let earlier_vips = old_dp.as_ref().unwrap_or(&agent.dp).vip_addrs();
    agent.take_over(&adopted, &earlier_vips);
    if let Some(watch) = agent.source.watch() {
        info!("waiting for the Service, EndpointSlice and Pod caches");
        watch.ready().await;
        if let Some(desired) = agent.source.initial(&agent.host.link) {
            agent.desired = desired;
        }
        crate::mem::give_back_free_memory();
        let rss_mib = crate::mem::rss_mib();
        info!(vips = agent.desired.vips.len(), rss_mib, "caches ready");
    }
    // The maps are filled before the program that reads them takes over the link: a
    // restart (even with other settings) never runs a program on empty maps.
    agent.sync_pending(&opts).await?;
    if let Some(old) = &old_dp {
        match agent.dp.carry_pins_from(old) {
            Ok(n) => info!(pins = n, "flow pins carried over from the replaced maps"),
            Err(e) => warn!(error = %e, "carrying flow pins over from the replaced maps"),
        }
    }
    let attachment = loader::attach_pinned(&mut ebpf, &iface, opts.config.xdp_mode, &pin_dir)?;
    drop(old_dp);
    remove_stale_map_dirs(&pin_dir);
    agent.mode = match attachment {
        Attachment::New(m) => {
            let kind = if m == aya::programs::XdpMode::Skb { "generic" } else { "native" };
            info!(iface, ?m, pins = %pin_dir.display(), "XDP program attached (link pinned)");
            format!("XDP {kind} on {iface}")
        }
        Attachment::Replaced => {
            info!(iface, pins = %pin_dir.display(), "new XDP program swapped into the pinned link");
            format!("XDP on {iface} (pinned link)")
        }
    };
    agent.attached = true;
    agent.ready_if_done();
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
    Ok(Source::Kube(Box::new(source::Kube {
        watch: source,
        report,
        state: Default::default(),
        changed: BTreeSet::new(),
        reported_host: None,
        held: BTreeMap::new(),
        off_link: BTreeMap::new(),
        draining_flows: BTreeMap::new(),
    })))
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
