//! Readings of the Kubernetes benchmark: the agent's process (pid, CPU, memory, log
//! milestones), its pinned maps (a VIP's table flip), and in this process the agent's
//! wanted-state code and neighbour dumps over the same objects.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client};
use lb_agent::k8s::desired::{ServiceKey, State, Update, DEFAULT_CLASS};
use lb_agent::k8s::objects::{EndpointState, Selection, ServiceView, SliceView};
use lb_common::{VipKey, VipMeta, MAP_VIPS};

use crate::kube::*;

/// The pid of the agent pinning under `pin_root` (our child, found by its command line).
pub(crate) fn agent_pid(pin_root: &Path) -> Result<u32> {
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

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// utime + stime of a process (ms).
pub(crate) fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 0, utime 11, stime 12.
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1e3 / hz)
}

pub(crate) fn mem(pid: u32) -> Result<Mem> {
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
pub(crate) fn milestones(log: &str, start: SystemTime) -> Milestones {
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

pub(crate) fn open_vips(pin_dir: &Path) -> Result<BpfHashMap<MapData, VipKey, VipMeta>> {
    let path = lb_agent::dataplane::xdp::loader::maps_dir(pin_dir).join(MAP_VIPS);
    let data = MapData::from_pin(&path).with_context(|| format!("pinned map {}", path.display()))?;
    Ok(Map::HashMap(data).try_into()?)
}

/// Polls one VIP's entry (one lookup every ~100 µs) until its `half` is no longer `from`.
pub(crate) fn wait_flip(vips: BpfHashMap<MapData, VipKey, VipMeta>, key: VipKey, from: u32) -> Result<Instant> {
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

/// RssAnon of this process (KiB), after giving freed heap memory back to the kernel.
pub(crate) fn trimmed_rss_anon() -> u64 {
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
pub(crate) async fn compute_alone(admin: &Client, b: &mut KubeBench) -> Result<()> {
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
pub(crate) async fn neighbour_dumps() -> Result<Vec<f64>> {
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
