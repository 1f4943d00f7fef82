//! Kubernetes at scale: 10,000 Services with 100,000 endpoints in a real kube-apiserver
//! (+ etcd), watched by the real agent binary running as the ServiceAccount of `deploy/`.
//! Measures the time to first convergence, the latency from an EndpointSlice change to
//! the VIP's table flip in the pinned maps, and the agent's memory; then, in this
//! process, where the agent's time goes (`desired::compute` over the same objects, the
//! neighbour dump every sync makes).
//!
//! Everything runs inside a namespace lab with only the LB (no traffic is sent): the
//! control plane listens on 127.0.0.1 of the LB's namespace, the agent runs there too.
//! The lab, the control plane and the agent are removed afterwards.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lb_agent::config::XdpModeChoice;
use lb_tests::agent::{Agent, PinnedMaps};

use crate::section::{date, loadavg};
use lb_tests::kube::{ApiServer, K8S_RELEASE};
use lb_tests::lab::Lab;
use lb_tests::netns::ip;
use serde_json::json;

pub(crate) use crate::kube_fixtures::*;
pub(crate) use crate::kube_probe::*;
pub(crate) use crate::kube_report::*;

pub const HEADING: &str = "## Kubernetes at scale";

pub const SERVICES: usize = 10_000;
pub const PER_SERVICE: usize = 10;
/// VIPs: 40 addresses (198.51.100.1–40) × 250 TCP ports (8000–8249).
pub(crate) const VIP_ADDRS: usize = 40;
pub(crate) const PORTS_PER_ADDR: usize = 250;
pub(crate) const FIRST_PORT: usize = 8_000;
/// Backends: 10.200.1.0 onwards, on the LB's extra 10.200.0.1/15 (on-link, 131,072 addresses).
pub(crate) const BACKEND_NET: [u8; 4] = [10, 200, 0, 0];
pub(crate) const BACKEND_OFFSET: u32 = 256;
pub(crate) const LB_EXTRA_ADDR: &str = "10.200.0.1/15";
pub(crate) const NAMESPACE: &str = "bench";
pub(crate) const IN_FLIGHT: usize = 32;
pub const MAX_VIPS: u32 = 10_240;
pub const MAX_BACKENDS: u32 = 110_000;
pub const TABLE_SIZE: u32 = 1_024;
/// Services between two changed ones (coprime with `SERVICES`: every change on its own Service).
pub(crate) const CHANGE_STRIDE: usize = 47;

pub const P99_MS: f64 = 20.0;
/// The agent's reporter's requests in flight (`lb_agent::k8s::report`).
pub(crate) const IN_FLIGHT_AGENT: usize = 8;
/// The RSS target in MB (10^6 bytes), as the issue states it.
pub const RSS_MB: f64 = 200.0;

/// How long the first convergence may take before the run fails.
pub(crate) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(420);
/// How long the agent may stay busy after its first convergence before the changes start anyway.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
pub(crate) const SETTLE_WINDOW: Duration = Duration::from_secs(2);
/// Below this CPU use (per cent of one CPU) over a window, the agent is idle.
pub(crate) const QUIET_PCT: f64 = 50.0;
/// How long one change may take to reach the maps before the run fails.
pub(crate) const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Memory of the agent process (KiB, from /proc/PID/status and smaps).
#[derive(Clone, Copy, Debug, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    /// Resident KiB of the agent's BPF map mappings (the mmapped `TABLES`).
    pub bpf_mapped: u64,
}

/// Offsets (ms from the agent's start) of the milestones in the agent's log.
#[derive(Clone, Debug, Default)]
pub struct Milestones {
    pub maps_ready: Option<f64>,
    pub caches_ready: Option<f64>,
    pub first_update: Option<f64>,
    pub ready: Option<f64>,
}

/// One EndpointSlice change.
#[derive(Clone, Copy, Debug)]
pub struct Change {
    /// Request sent → the VIP's `half` flipped (ms).
    pub total_ms: f64,
    /// Request sent → the API server's answer (ms).
    pub write_ms: f64,
}

#[derive(Default)]
pub struct KubeBench {
    /// `/metrics` scrapes during the change phase (one a second).
    pub scrapes: crate::scrape::Scrapes,
    pub date: String,
    pub load: String,
    pub neigh_ms: f64,
    pub create_s: f64,
    /// Agent start → VIPS holds every VIP (s).
    pub maps_full_s: f64,
    /// Agent start → VIPS full and "ready: first sync done" logged (s).
    pub converge_s: f64,
    pub milestones: Milestones,
    pub active_backends: usize,
    /// Agent CPU use over the last settle window (per cent of one CPU): its idle level once settled.
    pub idle_cpu_pct: f64,
    pub settle_s: f64,
    pub settled: bool,
    /// `ready` → the agent's reporter logged every Service's status written (s).
    pub reported_s: Option<f64>,
    /// Agent CPU use (per cent of one CPU) per `SETTLE_WINDOW` after the first convergence.
    pub settle_windows: Vec<f64>,
    pub changes: Vec<Change>,
    pub planned_changes: usize,
    /// Time after which no further change is started (s).
    pub budget_s: f64,
    pub change_phase_s: f64,
    /// Agent CPU time during the change phase (ms).
    pub change_cpu_ms: f64,
    pub mem_converged: Mem,
    pub mem_after: Mem,
    /// In this process: `State::compute` (everything at once) over (Services, ms per run) sizes.
    pub compute: Vec<(usize, Vec<f64>)>,
    /// In this process: `State::update` of each Service after a change to its EndpointSlice
    /// (one endpoint draining), all Services one after the other (ms): what the agent
    /// recomputes per change.
    pub compute_each_ms: f64,
    /// In this process: the RssAnon the listed Services and EndpointSlices hold as typed
    /// objects (with them minus without them, freed memory trimmed both times; KiB).
    pub objects_kib: u64,
    /// The same, for the agent's projections of them (`ServiceView`, `SliceView`; KiB).
    pub views_kib: u64,
    /// The listed Services and EndpointSlices as JSON (bytes), and their `managedFields` alone.
    pub objects_json: usize,
    pub managed_fields_json: usize,
    /// In this process, in the LB namespace: one dump of the 100,000 neighbour entries (ms).
    pub neigh_dump_ms: Vec<f64>,
}

/// Every figure of the Kubernetes benchmark. `quick` makes fewer changes (same sizes).
pub fn measure(quick: bool) -> Result<KubeBench> {
    let (date, load) = (date(), loadavg());
    let lab = Lab::new("kb", 0, XdpModeChoice::Generic)?;
    let lb = lab.lb();
    ip(&lb, &["addr", "add", LB_EXTRA_ADDR, "dev", "eth0"])?;
    eprintln!("lb-bench: kube: {} PERMANENT neighbour entries", SERVICES * PER_SERVICE);
    let start = Instant::now();
    neighbours(&lab)?;
    let neigh_ms = start.elapsed().as_secs_f64() * 1e3;
    let planned_changes = if quick { 50 } else { 200 };
    let budget = if quick { Duration::from_secs(60) } else { Duration::from_secs(180) };
    let lab_ref = &lab;
    let mut bench = block_on_in(&lb, move || run(lab_ref, planned_changes, budget))?;
    bench.date = date;
    bench.load = load;
    bench.neigh_ms = neigh_ms;
    drop(lab);
    Ok(bench)
}

async fn run(lab: &Lab, planned_changes: usize, budget: Duration) -> Result<KubeBench> {
    eprintln!("lb-bench: kube: starting kube-apiserver and etcd ({K8S_RELEASE})");
    let api = ApiServer::start().await?;
    let admin = api.client();
    apply_deploy(&admin).await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await?;
    eprintln!("lb-bench: kube: creating {SERVICES} Services and their EndpointSlices ({IN_FLIGHT} requests in flight)");
    let start = Instant::now();
    create_objects(&admin).await?;
    let create_s = start.elapsed().as_secs_f64();

    let token = api.service_account_token("lb-system", "lb-agent").await?;
    let kubeconfig = api.kubeconfig(&token).to_string_lossy().to_string();
    let (max_vips, max_backends, table_size) = (MAX_VIPS.to_string(), MAX_BACKENDS.to_string(), TABLE_SIZE.to_string());
    let metrics: SocketAddr = ([127, 0, 0, 1], crate::scrape::free_port()?).into();
    let metrics_flag = metrics.to_string();
    let args = [
        "--kubeconfig",
        &kubeconfig,
        "--node-name",
        "lbbench",
        "--metrics-addr",
        &metrics_flag,
        "--xdp-mode",
        "generic",
        "--max-vips",
        &max_vips,
        "--max-backends",
        &max_backends,
        "--table-size",
        &table_size,
    ];
    eprintln!("lb-bench: kube: starting the agent");
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let agent = Agent::start_kube(lab, &args)?;
    let log_dir = agent.log.parent().map(Path::to_path_buf);
    let result = with_agent(&admin, &agent, started, started_wall, planned_changes, budget, metrics).await;
    let result = result
        .with_context(|| format!("the agent's log ({}) ends:\n{}", agent.log.display(), tail(&agent.log_text(), 30)));
    drop(agent);
    let mut bench = result?;
    // Kept on failure (the error names it), removed otherwise.
    if let Some(dir) = log_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    bench.create_s = create_s;
    eprintln!("lb-bench: kube: desired::compute and the neighbour dump, in this process");
    compute_alone(&admin, &mut bench).await?;
    bench.neigh_dump_ms = neighbour_dumps().await?;
    Ok(bench)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Convergence, the changes and the memory readings, with the agent running.
async fn with_agent(
    admin: &Client,
    agent: &Agent,
    started: Instant,
    started_wall: SystemTime,
    planned_changes: usize,
    budget: Duration,
    metrics: SocketAddr,
) -> Result<KubeBench> {
    let pid = agent_pid(&agent.pin_root)?;
    let mut b = KubeBench { planned_changes, budget_s: budget.as_secs_f64(), ..KubeBench::default() };

    // First convergence: every VIP in VIPS, and the agent says its first sync is done.
    let mut maps_full = None;
    loop {
        ensure!(alive(pid), "lb-agent exited");
        if maps_full.is_none() {
            if let Ok(m) = PinnedMaps::open(&agent.pin_dir) {
                if m.vip_count()? >= SERVICES {
                    maps_full = Some(started.elapsed());
                    eprintln!("lb-bench: kube: all {SERVICES} VIPs in the maps after {:?}", started.elapsed());
                }
            }
        }
        if maps_full.is_some() && agent.log_text().contains("ready: first sync done") {
            break;
        }
        ensure!(started.elapsed() < CONVERGE_TIMEOUT, "no first convergence within {CONVERGE_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.converge_s = started.elapsed().as_secs_f64();
    b.maps_full_s = maps_full.map(|d| d.as_secs_f64()).unwrap_or_default();
    b.mem_converged = mem(pid)?;
    b.milestones = milestones(&agent.log_text(), started_wall);
    eprintln!("lb-bench: kube: first convergence after {:.1} s", b.converge_s);
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    ensure!(maps.vip_count()? == SERVICES, "VIPS holds {} entries, not {SERVICES}", maps.vip_count()?);
    b.active_backends = maps.active_backends()?;
    ensure!(
        b.active_backends == SERVICES * PER_SERVICE,
        "{} active backends in BACKENDS, not {}",
        b.active_backends,
        SERVICES * PER_SERVICE
    );

    // Let the agent settle: first its reporter writes every Service's status and
    // publishes a Programmed Event for each (it logs when done), then settled = two
    // windows in a row in which it used less than half a CPU, or less than 70 % of its
    // busiest window so far.
    let settle = Instant::now();
    while !agent.log_text().contains("Service statuses written") && settle.elapsed() < SETTLE_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.reported_s = agent.log_text().contains("Service statuses written").then(|| settle.elapsed().as_secs_f64());
    let mut quiet = 0;
    loop {
        let c0 = cpu_ms(pid)?;
        tokio::time::sleep(SETTLE_WINDOW).await;
        let pct = (cpu_ms(pid)? - c0) / SETTLE_WINDOW.as_secs_f64() / 10.0;
        let busiest = b.settle_windows.iter().copied().fold(0.0, f64::max);
        b.settle_windows.push(pct);
        if b.settle_windows.len() % 5 == 1 {
            eprintln!("lb-bench: kube: agent CPU {pct:.0} % over the last {SETTLE_WINDOW:?}");
        }
        quiet = if pct < QUIET_PCT || pct < 0.7 * busiest { quiet + 1 } else { 0 };
        if quiet >= 2 {
            b.settled = true;
            break;
        }
        if settle.elapsed() > SETTLE_TIMEOUT {
            break;
        }
    }
    b.idle_cpu_pct = *b.settle_windows.last().unwrap_or(&0.0);
    b.settle_s = settle.elapsed().as_secs_f64();
    eprintln!(
        "lb-bench: kube: agent {} after {:.0} s ({:.0} % CPU); changing EndpointSlices",
        if b.settled { "settled" } else { "still busy" },
        b.settle_s,
        b.idle_cpu_pct
    );

    // Single changes, one at a time, each on its own Service, while /metrics is
    // scraped every second.
    let scraper = crate::scrape::Scraper::start(metrics, Duration::from_secs(1));
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), NAMESPACE);
    let phase = Instant::now();
    let cpu0 = cpu_ms(pid)?;
    for k in 0..planned_changes {
        if phase.elapsed() > budget && k >= 10 {
            break;
        }
        let i = (k * CHANGE_STRIDE + 13) % SERVICES;
        let key = vip(i).key();
        let vips = open_vips(&agent.pin_dir)?;
        let from = vips.get(&key, 0).with_context(|| format!("VIPS entry of {}", vip(i)))?.half;
        let poller = std::thread::spawn(move || wait_flip(vips, key, from));
        let body = json!({"endpoints": endpoints(i, Some(k % PER_SERVICE))});
        let t0 = Instant::now();
        let patched =
            slices.patch(&format!("{}-1", service_name(i)), &PatchParams::default(), &Patch::Merge(&body)).await;
        let written = Instant::now();
        patched.with_context(|| format!("patching the EndpointSlice of {}", service_name(i)))?;
        let flipped = poller.join().map_err(|_| anyhow::anyhow!("poller panicked"))?.with_context(|| {
            format!("change {k}: {}'s VIP {} (endpoint {} not ready)", service_name(i), vip(i), k % PER_SERVICE)
        })?;
        b.changes.push(Change {
            total_ms: (flipped - t0).as_secs_f64() * 1e3,
            write_ms: (written - t0).as_secs_f64() * 1e3,
        });
        ensure!(alive(pid), "lb-agent exited");
        if (k + 1) % 25 == 0 {
            eprintln!("lb-bench: kube: {} changes, {:.0?} so far", k + 1, phase.elapsed());
        }
        // Changes arrive at different points of the agent's 500 ms tick.
        tokio::time::sleep(Duration::from_millis(50 + (k as u64 * 37) % 100)).await;
    }
    b.change_phase_s = phase.elapsed().as_secs_f64();
    b.change_cpu_ms = cpu_ms(pid)? - cpu0;
    b.scrapes = scraper.finish();
    b.mem_after = mem(pid)?;
    // Kept for reading after the lab is gone.
    let kept = std::env::temp_dir().join("lb-bench-kube-agent.log");
    if std::fs::copy(&agent.log, &kept).is_ok() {
        eprintln!("lb-bench: kube: the agent's log is in {}", kept.display());
    }
    Ok(b)
}
