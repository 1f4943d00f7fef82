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

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lb_agent::config::XdpModeChoice;
use lb_agent::k8s::desired::{ServiceKey, State, Update, DEFAULT_CLASS};
use lb_agent::k8s::objects::{EndpointState, Selection, ServiceView, SliceView};
use lb_agent::model::{Protocol, Vip};
use lb_common::{VipKey, VipMeta, MAP_VIPS};
use lb_tests::agent::{Agent, PinnedMaps};

use crate::section::{count, date, loadavg, mib, online_cpus, targets, yes};
use lb_tests::kube::{ApiServer, K8S_RELEASE};
use lb_tests::lab::Lab;
use lb_tests::netns::ip;
use serde::Deserialize as _;
use serde_json::{json, Value};

pub const HEADING: &str = "## Kubernetes at scale";

pub const SERVICES: usize = 10_000;
pub const PER_SERVICE: usize = 10;
/// VIPs: 40 addresses (198.51.100.1–40) × 250 TCP ports (8000–8249).
const VIP_ADDRS: usize = 40;
const PORTS_PER_ADDR: usize = 250;
const FIRST_PORT: usize = 8_000;
/// Backends: 10.200.1.0 onwards, on the LB's extra 10.200.0.1/15 (on-link, 131,072 addresses).
const BACKEND_NET: [u8; 4] = [10, 200, 0, 0];
const BACKEND_OFFSET: u32 = 256;
const LB_EXTRA_ADDR: &str = "10.200.0.1/15";
const NAMESPACE: &str = "bench";
const IN_FLIGHT: usize = 32;
pub const MAX_VIPS: u32 = 10_240;
pub const MAX_BACKENDS: u32 = 110_000;
pub const TABLE_SIZE: u32 = 1_024;
/// Services between two changed ones (coprime with `SERVICES`: every change on its own Service).
const CHANGE_STRIDE: usize = 47;

pub const P99_MS: f64 = 20.0;
/// The agent's reporter's requests in flight (`lb_agent::k8s::report`).
const IN_FLIGHT_AGENT: usize = 8;
/// The RSS target in MB (10^6 bytes), as the issue states it.
pub const RSS_MB: f64 = 200.0;

/// How long the first convergence may take before the run fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(420);
/// How long the agent may stay busy after its first convergence before the changes start anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
const SETTLE_WINDOW: Duration = Duration::from_secs(2);
/// Below this CPU use (per cent of one CPU) over a window, the agent is idle.
const QUIET_PCT: f64 = 50.0;
/// How long one change may take to reach the maps before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

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

/// VIP of Service `i`.
fn vip(i: usize) -> Vip {
    let addr = Ipv4Addr::new(198, 51, 100, 1 + (i / PORTS_PER_ADDR) as u8);
    Vip { addr: IpAddr::V4(addr), port: (FIRST_PORT + i % PORTS_PER_ADDR) as u16, proto: Protocol::Tcp }
}

/// Address of endpoint `n` (0-based over all Services).
fn backend(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(BACKEND_NET)) + BACKEND_OFFSET + n as u32)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn service(i: usize) -> Result<Service> {
    let v = vip(i);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": service_name(i)},
        "spec": {
            "type": "LoadBalancer",
            "loadBalancerClass": DEFAULT_CLASS,
            "loadBalancerIP": v.addr.to_string(),
            // 10,000 LoadBalancer Services cannot all have node ports (30000-32767).
            "allocateLoadBalancerNodePorts": false,
            "ports": [{"name": "tcp", "port": v.port, "protocol": "TCP"}]
        }
    }))?)
}

/// Service `i`'s endpoints; `not_ready` marks one of them not ready (and not serving).
fn endpoints(i: usize, not_ready: Option<usize>) -> Value {
    let list: Vec<Value> = (0..PER_SERVICE)
        .map(|j| {
            let ready = not_ready != Some(j);
            json!({"addresses": [backend(i * PER_SERVICE + j).to_string()],
                   "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect();
    Value::Array(list)
}

fn slice(i: usize) -> Result<EndpointSlice> {
    let name = service_name(i);
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": vip(i).port, "protocol": "TCP"}],
        "endpoints": endpoints(i, None)
    }))?)
}

/// Runs the future `f` makes on a current-thread runtime on a thread inside network
/// namespace `ns`, allowed on every CPU (the benchmark's main thread is pinned to one,
/// and the API server, etcd and the agent started from this thread inherit its mask).
fn block_on_in<T: Send, Fut: Future<Output = Result<T>>>(ns: &str, f: impl FnOnce() -> Fut + Send) -> Result<T> {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            unpin_thread()?;
            // SAFETY: setns on this thread only; the fd is valid for the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the Kubernetes benchmark thread panicked"))?
    })
}

/// Lets the calling thread run on every CPU.
fn unpin_thread() -> Result<()> {
    // SAFETY: the cpu_set_t is zeroed, filled with CPU_SET and passed with its size; the
    // kernel ignores CPUs that do not exist.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// Applies `deploy/namespace.yaml` and `deploy/rbac.yaml` exactly as shipped.
async fn apply_deploy(client: &Client) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let pp = PatchParams::apply("lb-bench").force();
    for file in ["namespace.yaml", "rbac.yaml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).with_context(|| format!("reading {file}"))?;
        let docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Ok(serde_yaml::from_value::<Value>(serde_yaml::Value::deserialize(d)?)?))
            .collect::<Result<Vec<_>>>()?;
        for v in docs {
            let name = v["metadata"]["name"].as_str().context("name")?.to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("lb-system").to_string();
            let patch = Patch::Apply(&v);
            match v["kind"].as_str() {
                Some("Namespace") => drop(Api::<Namespace>::all(client.clone()).patch(&name, &pp, &patch).await?),
                Some("ServiceAccount") => {
                    drop(Api::<ServiceAccount>::namespaced(client.clone(), &ns).patch(&name, &pp, &patch).await?)
                }
                Some("ClusterRole") => drop(Api::<ClusterRole>::all(client.clone()).patch(&name, &pp, &patch).await?),
                Some("ClusterRoleBinding") => {
                    drop(Api::<ClusterRoleBinding>::all(client.clone()).patch(&name, &pp, &patch).await?)
                }
                other => bail!("unexpected kind {other:?} in {file}"),
            }
        }
    }
    Ok(())
}

/// Whether an API error is worth retrying (throttled, server busy, connection trouble).
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        _ => true,
    }
}

/// Creates an object, retrying transient errors; an object that already exists is fine.
async fn create<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) if attempt < 8 && transient(&e) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", obj.meta().name.clone().unwrap_or_default()))
            }
        }
    }
}

/// The Services and their EndpointSlices, `IN_FLIGHT` requests at a time.
async fn create_objects(client: &Client) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (next, client) = (next.clone(), client.clone());
        tasks.spawn(async move {
            let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
            let slices: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SERVICES {
                    return Ok::<(), anyhow::Error>(());
                }
                create(&services, &service(i)?).await?;
                create(&slices, &slice(i)?).await?;
                if (i + 1) % 2_000 == 0 {
                    eprintln!("lb-bench: kube: {} of {SERVICES} Services and EndpointSlices created", i + 1);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a creating task")??;
    }
    Ok(())
}

/// Writes 100,000 PERMANENT neighbour entries on the LB's eth0 with one `ip -batch`.
fn neighbours(lab: &Lab) -> Result<()> {
    let path = std::env::temp_dir().join(format!("{}-neigh.batch", lab.prefix));
    let mut text = String::with_capacity(SERVICES * PER_SERVICE * 80);
    for n in 0..SERVICES * PER_SERVICE {
        let [_, a, b, c] = (n as u32).to_be_bytes();
        let _ = writeln!(
            text,
            "neigh replace {} lladdr 02:be:00:{a:02x}:{b:02x}:{c:02x} dev eth0 nud permanent",
            backend(n)
        );
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let result = ip(&lab.lb(), &["-batch", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    result?;
    let listed = ip(&lab.lb(), &["neigh", "show", "dev", "eth0", "nud", "permanent"])?;
    let count = listed.lines().count();
    ensure!(count >= SERVICES * PER_SERVICE, "only {count} PERMANENT neighbour entries after ip -batch");
    Ok(())
}

/// The pid of the agent pinning under `pin_root` (our child, found by its command line).
fn agent_pid(pin_root: &Path) -> Result<u32> {
    let want = pin_root.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            let is_agent = args.first().is_some_and(|a| a.ends_with("lb-agent"));
            if is_agent && args.contains(&want) && !args.iter().any(|a| a == "cleanup") {
                return Ok(pid);
            }
        }
        ensure!(Instant::now() < deadline, "no lb-agent process with --pin-root {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// utime + stime of a process (ms).
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 0, utime 11, stime 12.
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1e3 / hz)
}

fn mem(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut bpf_mapped = 0;
    let mut in_bpf = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            in_bpf = line.contains("bpf-map");
        } else if in_bpf && first == "Rss:" {
            bpf_mapped += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(Mem {
        rss: field("VmRSS"),
        hwm: field("VmHWM"),
        anon: field("RssAnon"),
        file: field("RssFile"),
        shmem: field("RssShmem"),
        bpf_mapped,
    })
}

/// Milestones of the agent's log, as ms after `start` (the log's timestamps are UTC wall-clock time).
fn milestones(log: &str, start: SystemTime) -> Milestones {
    let start_us = Timestamp::try_from(start).map(|t| t.as_microsecond()).unwrap_or(0);
    let at = |needle: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(needle))?;
        let ts: Timestamp = line.split_whitespace().next()?.parse().ok()?;
        Some((ts.as_microsecond() - start_us) as f64 / 1e3)
    };
    Milestones {
        maps_ready: at("maps ready"),
        caches_ready: at("caches ready"),
        first_update: at("data plane updated"),
        ready: at("ready: first sync done"),
    }
}

fn open_vips(pin_dir: &Path) -> Result<BpfHashMap<MapData, VipKey, VipMeta>> {
    let path = lb_agent::dataplane::xdp::loader::maps_dir(pin_dir).join(MAP_VIPS);
    let data = MapData::from_pin(&path).with_context(|| format!("pinned map {}", path.display()))?;
    Ok(Map::HashMap(data).try_into()?)
}

/// Polls one VIP's entry (one lookup every ~100 µs) until its `half` is no longer `from`.
fn wait_flip(vips: BpfHashMap<MapData, VipKey, VipMeta>, key: VipKey, from: u32) -> Result<Instant> {
    let start = Instant::now();
    loop {
        let meta = vips.get(&key, 0).context("VIPS lookup")?;
        if meta.half != from {
            return Ok(Instant::now());
        }
        ensure!(start.elapsed() < CHANGE_TIMEOUT, "the VIP's table did not flip within {CHANGE_TIMEOUT:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// The nearest-rank percentile `p` (0–100) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// Why this machine cannot run the Kubernetes benchmark, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = lb_tests::unavailable() {
        return Some(why);
    }
    lb_tests::kube::assets_dir().err().map(|e| e.to_string())
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

/// RssAnon of this process (KiB), after giving freed heap memory back to the kernel.
fn trimmed_rss_anon() -> u64 {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The agent's wanted-state code over the objects as the API server holds them:
/// `State::compute` for 1,000 and for all 10,000 Services (with their EndpointSlices),
/// `State::update` per changed Service; and the memory the listed objects take here,
/// typed and as the agent's projections.
async fn compute_alone(admin: &Client, b: &mut KubeBench) -> Result<()> {
    let before = trimmed_rss_anon();
    let mut services = Api::<Service>::namespaced(admin.clone(), NAMESPACE).list(&ListParams::default()).await?.items;
    let mut slices =
        Api::<EndpointSlice>::namespaced(admin.clone(), NAMESPACE).list(&ListParams::default()).await?.items;
    b.objects_kib = trimmed_rss_anon().saturating_sub(before);
    for s in &services {
        b.objects_json += serde_json::to_vec(s)?.len();
        b.managed_fields_json += serde_json::to_vec(&s.metadata.managed_fields)?.len();
    }
    for e in &slices {
        b.objects_json += serde_json::to_vec(e)?.len();
        b.managed_fields_json += serde_json::to_vec(&e.metadata.managed_fields)?.len();
    }
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    ensure!(services.len() == SERVICES && slices.len() == SERVICES, "listed {} / {}", services.len(), slices.len());
    let sel = Selection { class: DEFAULT_CLASS.into(), default_class: false };
    let before = trimmed_rss_anon();
    let sviews: Vec<ServiceView> = services.iter().map(|s| ServiceView::new(s, &sel)).collect();
    let eviews: Vec<SliceView> = slices.iter().map(SliceView::new).collect();
    b.views_kib = trimmed_rss_anon().saturating_sub(before);
    drop((services, slices));
    let none = |_: &str, _: &str| None;
    for n in [1_000, SERVICES] {
        let s: Vec<&ServiceView> = sviews[..n].iter().collect();
        let e: Vec<&SliceView> = eviews[..n].iter().collect();
        let mut ms = Vec::new();
        let begin = Instant::now();
        while ms.len() < 5 && (ms.len() < 2 || begin.elapsed() < Duration::from_secs(20)) {
            let t = Instant::now();
            let state = State::compute(&s, &e, none);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(state.desired.vips.len() == n, "compute gave {} VIPs for {n} Services", state.desired.vips.len());
            let backends: usize = state.desired.vips.values().map(|v| v.backends.len()).sum();
            ensure!(backends >= n * (PER_SERVICE - 1), "compute gave {backends} backends for {n} Services");
        }
        b.compute.push((n, ms));
    }
    // Each Service's slice with its first endpoint draining: a change per Service.
    let mut state = State::compute(&sviews.iter().collect::<Vec<_>>(), &eviews.iter().collect::<Vec<_>>(), none);
    let changed: Vec<SliceView> = eviews
        .iter()
        .map(|e| {
            let mut e = e.clone();
            let mut eps = e.endpoints.to_vec();
            eps[0].state = EndpointState::Draining;
            e.endpoints = eps.into();
            e
        })
        .collect();
    let t = Instant::now();
    let mut vips = 0;
    for (s, e) in sviews.iter().zip(&changed) {
        let mut up = Update::default();
        let key: &ServiceKey = &s.key;
        state.update(key, Some(s), &[e], &none, &mut up);
        vips += up.vips.len();
    }
    b.compute_each_ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(vips == SERVICES, "{vips} VIPs changed by {SERVICES} single changes");
    Ok(())
}

/// Dumps of the LB namespace's neighbour table as the agent makes one every sync (ms).
async fn neighbour_dumps() -> Result<Vec<f64>> {
    let nl = lb_agent::netlink::Netlink::new()?;
    let link = nl.link("eth0").await?;
    let mut ms = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let n = nl.neighbours(link.index).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(n.len() >= SERVICES * PER_SERVICE, "the dump held {} usable entries", n.len());
    }
    Ok(ms)
}

// ---- The section of BENCHMARKS.md ----

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn totals(b: &KubeBench) -> Vec<f64> {
    b.changes.iter().map(|c| c.total_ms).collect()
}

/// The peak RSS the target is judged on: the agent's VmHWM (MB).
fn peak_mb(b: &KubeBench) -> f64 {
    mb(b.mem_after.hwm.max(b.mem_converged.hwm))
}

/// (target, met) lines, for the terminal and the section.
pub fn verdicts(b: &KubeBench) -> Vec<(String, bool)> {
    let t = totals(b);
    let p99 = percentile(&t, 99.0);
    let peak = peak_mb(b);
    vec![
        (
            format!("EndpointSlice change → map update p99 ≤ {P99_MS:.0} ms: p99 {p99:.1} ms over {} changes", t.len()),
            p99 <= P99_MS,
        ),
        (format!("Agent RSS ≤ {RSS_MB:.0} MB: peak (VmHWM) {peak:.1} MB"), peak <= RSS_MB),
    ]
}

/// The section, from its heading to just before the next one.
pub fn section(b: &KubeBench, quick: bool, kube_only: bool) -> String {
    let mut d = format!("{HEADING}\n\n");
    let run = match (quick, kube_only) {
        (true, true) => "`--kube-only --quick`",
        (true, false) => "`--quick`",
        (false, true) => "`--kube-only`",
        (false, false) => "full",
    };
    let _ = writeln!(
        d,
        "Measured {} (run: {run}); load average at the start of this part: {} on {} CPUs (the API server, etcd, the \
         agent and this benchmark share them).\n",
        b.date,
        b.load,
        online_cpus()
    );
    method(&mut d, b);
    results(&mut d, b);
    convergence(&mut d, b);
    latency(&mut d, b);
    memory(&mut d, b);
    targets(&mut d, verdicts(b));
    d
}

fn method(d: &mut String, b: &KubeBench) {
    let first = vip(0);
    let last = vip(SERVICES - 1);
    let _ = writeln!(
        d,
        "* **Cluster**: a real kube-apiserver and etcd ({K8S_RELEASE}, `lb_tests::kube::ApiServer`) on 127.0.0.1 \
         inside the LB's namespace of a namespace lab with no backends and no traffic; `deploy/rbac.yaml` applied as \
         shipped. The real `lb-agent` binary runs there as the ServiceAccount `lb-system/lb-agent` (`--kubeconfig` \
         with its token) with `--xdp-mode generic --max-vips {MAX_VIPS} --max-backends {MAX_BACKENDS} --table-size \
         {TABLE_SIZE} --metrics-addr 127.0.0.1:PORT`, watching all namespaces."
    );
    let _ = writeln!(
        d,
        "* **Objects**: {} Services of type LoadBalancer (class `{DEFAULT_CLASS}`, `allocateLoadBalancerNodePorts: \
         false`, one TCP port, `loadBalancerIP` {} … {}: {VIP_ADDRS} addresses × {PORTS_PER_ADDR} ports) and one \
         EndpointSlice each with {PER_SERVICE} ready endpoints: {} distinct addresses {} … {} (no `targetRef`, no \
         pods). Created through the API server **before the agent starts** ({IN_FLIGHT} requests in flight): {:.1} s \
         for {} objects ({:.0} per second). So this is a cold start of an agent (a new or restarted LB host) into a \
         full cluster.",
        count(SERVICES),
        first.addr,
        last.addr,
        count(SERVICES * PER_SERVICE),
        backend(0),
        backend(SERVICES * PER_SERVICE - 1),
        b.create_s,
        count(2 * SERVICES),
        2.0 * SERVICES as f64 / b.create_s.max(1e-9)
    );
    let _ = writeln!(
        d,
        "* **Backend MACs**: the LB's eth0 also holds {LB_EXTRA_ADDR} (the endpoints are on-link) and its namespace \
         holds one PERMANENT neighbour entry per endpoint, written with one `ip -batch` ({:.1} s); the agent leaves \
         PERMANENT entries alone. No `gc_thresh` was raised: the kernel does not count PERMANENT entries against it \
         (and does not show `neigh/default` in a non-initial namespace).",
        b.neigh_ms / 1e3
    );
    let _ = writeln!(
        d,
        "* **First convergence**: from just before the agent is started until the pinned `VIPS` map holds all {} VIPs \
         **and** the agent has logged `ready: first sync done` (polled every 100 ms). The milestones in between are \
         the agent's own log timestamps.",
        count(SERVICES)
    );
    let _ = writeln!(
        d,
        "* **Change latency**: once the agent has settled (its reporter has logged `Service statuses written` for the \
         start's burst, then two {:.0}-second windows in a row in which it used less than \
         {QUIET_PCT:.0} % of a CPU or less than 70 % of its busiest window; at most {:.0} s of waiting), up to {} single \
         changes (none started after {:.0} s), one at a time, each on a different Service: a merge patch of the \
         EndpointSlice's `endpoints` that turns one ready endpoint into not ready (not serving). That endpoint's \
         backend drains (weight 0), so the VIP's Maglev table changes and the agent flips the VIP's `half`. Measured \
         from just before the PATCH request is sent until a thread polling that VIP's `VIPS` entry (one `bpf()` \
         lookup every ~100 µs) sees `half` change. A pause of 50–150 ms separates the changes, so they land at \
         different points of the agent's 500 ms tick.",
        SETTLE_WINDOW.as_secs_f64(),
        SETTLE_TIMEOUT.as_secs_f64(),
        b.planned_changes,
        b.budget_s
    );
    d.push_str(
        "* **Memory**: VmRSS / VmHWM / RssAnon / RssFile / RssShmem of the agent from `/proc/PID/status`, and the \
         resident part of its BPF map mappings (the `TABLES` windows it mmaps) from `/proc/PID/smaps`.\n\n",
    );
}

fn results(d: &mut String, b: &KubeBench) {
    let t = totals(b);
    let peak = peak_mb(b);
    d.push_str("| Measure | Value | Target | Met |\n| --- | ---: | --- | --- |\n");
    let _ = writeln!(d, "| Time to first convergence | {:.1} s | — | — |", b.converge_s);
    let _ = writeln!(d, "| … of which until `VIPS` held every VIP | {:.1} s | — | — |", b.maps_full_s);
    let _ = writeln!(d, "| Change → map update, p50 ({} changes) | {:.1} ms | — | — |", t.len(), median(&t));
    let p99 = percentile(&t, 99.0);
    let _ = writeln!(d, "| Change → map update, p99 | {p99:.1} ms | ≤ {P99_MS:.0} ms | {} |", yes(p99 <= P99_MS));
    let _ = writeln!(d, "| Change → map update, max | {:.1} ms | — | — |", percentile(&t, 100.0));
    let _ = writeln!(d, "| Agent peak RSS (VmHWM) | {peak:.1} MB | ≤ {RSS_MB:.0} MB | {} |", yes(peak <= RSS_MB));
    d.push('\n');
}

fn convergence(d: &mut String, b: &KubeBench) {
    let m = &b.milestones;
    let s = |v: Option<f64>| v.map_or("—".to_string(), |ms| format!("{:.1} s", ms / 1e3));
    let _ = writeln!(
        d,
        "First convergence, from the agent's log (seconds after the start): maps loaded and pinned {}; Service, \
         EndpointSlice and Pod caches listed and the first wanted state computed (`caches ready`) {}; first sync \
         applied (`data plane updated`: VIP addresses, {} neighbour look-ups, every table) {}; `ready: first sync \
         done` {}. {} active backends in `BACKENDS` afterwards. The reporter, a task of its own, then wrote every \
         Service's status (server-side apply) and published a `Programmed` Event per Service, {IN_FLIGHT_AGENT} \
         requests at a time: done {} after `ready`.\n",
        s(m.maps_ready),
        s(m.caches_ready),
        count(SERVICES * PER_SERVICE),
        s(m.first_update),
        s(m.ready),
        count(b.active_backends),
        b.reported_s.map_or("—".to_string(), |v| format!("{v:.1} s")),
    );
    let window = SETTLE_WINDOW.as_secs_f64();
    let busiest = b.settle_windows.iter().copied().fold(0.0, f64::max);
    let text = if b.settled {
        let busy = b.settle_windows.len().saturating_sub(2) as f64 * window;
        format!(
            "After `ready` the agent stayed busy for about {busy:.0} s more (up to {busiest:.0} % of a CPU, measured \
             over {window:.0}-second windows) before settling at {:.0} % of a CPU.",
            b.idle_cpu_pct,
        )
    } else {
        format!(
            "After `ready` the agent was still busy {:.0} s later ({:.0} % of a CPU over the last {window:.0}-second \
             window, up to {busiest:.0} %), and the changes started anyway.",
            b.settle_s, b.idle_cpu_pct,
        )
    };
    let _ = writeln!(d, "{text}\n");
}

fn latency(d: &mut String, b: &KubeBench) {
    let t = totals(b);
    let w: Vec<f64> = b.changes.iter().map(|c| c.write_ms).collect();
    let rest: Vec<f64> = b.changes.iter().map(|c| c.total_ms - c.write_ms).collect();
    let busy_pct = b.change_cpu_ms / 10.0 / b.change_phase_s.max(1e-9);
    let s = &b.scrapes;
    let _ = writeln!(
        d,
        "Where the change latency goes ({} changes in {:.0} s, during which the agent used {busy_pct:.0} % of a CPU; \
         idle it used {:.0} %). Meanwhile `/metrics` was scraped every second ({} scrapes answered, {} failed; \
         median {:.0} ms, max {:.0} ms each: a scrape reads every map, the flow table included, on a worker \
         thread, never on the loop that applies changes):\n",
        t.len(),
        b.change_phase_s,
        b.idle_cpu_pct,
        s.ms.len(),
        s.failed,
        percentile(&s.ms, 50.0),
        percentile(&s.ms, 100.0)
    );
    d.push_str("| Part | p50 (ms) | p99 (ms) | max (ms) |\n| --- | ---: | ---: | ---: |\n");
    let row = |d: &mut String, name: &str, v: &[f64]| {
        let (p50, p99, max) = (percentile(v, 50.0), percentile(v, 99.0), percentile(v, 100.0));
        let _ = writeln!(d, "| {name} | {p50:.1} | {p99:.1} | {max:.1} |");
    };
    row(d, "PATCH sent → the API server's answer (the write is in etcd; the watch event leaves about then)", &w);
    row(d, "Answer → `half` flipped (watch delivery and the agent)", &rest);
    row(d, "Total", &t);
    d.push('\n');
    let ms_of = |n: usize| b.compute.iter().find(|(k, _)| *k == n).map(|(_, v)| median(v)).unwrap_or(f64::NAN);
    let (small, full) = (ms_of(1_000), ms_of(SERVICES));
    let runs = b.compute.iter().map(|(_, v)| v.len()).min().unwrap_or(0);
    let _ = writeln!(
        d,
        "Pieces of the agent's work, measured in this process with the agent's own code over the same objects \
         (listed back from the API server): `State::compute`, the whole wanted state at once (done at start only), \
         over 1,000 Services and their EndpointSlices {small:.1} ms, over all {} {full:.1} ms ({:.0}× the time for \
         10× the objects; median of at least {runs} runs); `State::update`, what the agent recomputes per change \
         (one Service after a change to its EndpointSlice), for each of the {} Services one after the other, \
         {:.1} ms in all ({:.1} µs per change); one dump of the {} neighbour entries through the agent's netlink \
         code {:.0} ms (the agent reads the table on a thread of its own, every 5 s). Idle, the agent used {:.0} % of \
         a CPU (about {:.0} ms per 500 ms tick).\n",
        count(SERVICES),
        full / small,
        count(SERVICES),
        b.compute_each_ms,
        b.compute_each_ms * 1e3 / SERVICES as f64,
        count(SERVICES * PER_SERVICE),
        median(&b.neigh_dump_ms),
        b.idle_cpu_pct,
        b.idle_cpu_pct / 100.0 * 500.0
    );
}

fn memory(d: &mut String, b: &KubeBench) {
    d.push_str("| Agent memory | VmRSS | VmHWM | RssAnon | RssFile | RssShmem | Mapped BPF maps (resident) |\n");
    d.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (name, m) in [("After the first convergence", b.mem_converged), ("After the changes", b.mem_after)] {
        let _ = writeln!(
            d,
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(m.rss),
            mib(m.hwm),
            mib(m.anon),
            mib(m.file),
            mib(m.shmem),
            mib(m.bpf_mapped)
        );
    }
    let _ = writeln!(
        d,
        "\nThe target is judged on the peak (VmHWM) in MB (10^6 bytes). The agent maps only the `TABLES` pages of the \
         VIP it reads or writes, and only meanwhile, so the maps' (kernel) memory is not in these figures. The \
         agent keeps a compact projection of each Service and EndpointSlice, made as the object arrives: the same \
         {} objects, listed in this process, take {:.0} MiB as typed objects and {:.1} MiB as the agent's \
         projections (RssAnon with them minus without them, freed memory given back both times); as JSON they are \
         {:.1} MB, of which {:.1} MB is `managedFields`. The rest is the agent's own state derived from them (the \
         wanted state, ramp, neighbour and data-plane records per backend, the status last written per Service) and \
         what the allocator keeps of transient allocations.\n",
        count(2 * SERVICES),
        mib(b.objects_kib),
        mib(b.views_kib),
        b.objects_json as f64 / 1e6,
        b.managed_fields_json as f64 / 1e6
    );
}

/// `doc` with the Kubernetes section replaced by `section` (or added before "## Variance",
/// or at the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::section::splice(doc, HEADING, section)
}

/// The section when the benchmark cannot run here.
pub fn skipped(why: &str) -> String {
    format!("{HEADING}\n\nNot measured: {why}\n\n")
}

#[cfg(test)]
mod tests {
    use super::{backend, percentile, splice, vip, SERVICES};

    #[test]
    fn splices_and_addresses() {
        let doc = "# B\n\n## Control-plane scale\n\ns\n\n## Variance\n\nv\n";
        let once = splice(doc, "## Kubernetes at scale\n\nold\n\n");
        assert_eq!(once, "# B\n\n## Control-plane scale\n\ns\n\n## Kubernetes at scale\n\nold\n\n## Variance\n\nv\n");
        let twice = splice(&once, "## Kubernetes at scale\n\nnew\n\n");
        assert_eq!(twice, "# B\n\n## Control-plane scale\n\ns\n\n## Kubernetes at scale\n\nnew\n\n## Variance\n\nv\n");
        assert_eq!(vip(SERVICES - 1).to_string(), "198.51.100.40:8249/tcp");
        assert_eq!(backend(99_999).to_string(), "10.201.135.159");
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&(1..=200).map(f64::from).collect::<Vec<_>>(), 99.0), 198.0);
    }
}
