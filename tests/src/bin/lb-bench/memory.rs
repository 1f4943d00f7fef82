//! What the process and its BPF maps hold in memory: /proc/self/status, the resident
//! part of one mapping from /proc/self/smaps, and each map's `memlock` from fdinfo.

use std::collections::BTreeMap;
use std::fs;

use anyhow::{Context, Result};
use aya::maps::MapInfo;

/// Memory figures of this process, in KiB (as /proc reports them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
    pub file: u64,
}

/// VmRSS, VmHWM and the RSS split of /proc/self/status.
pub fn status() -> Result<Status> {
    let text = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> Result<u64> {
        let line = text.lines().find_map(|l| l.strip_prefix(name)).with_context(|| format!("no {name} in status"))?;
        let kib = line.trim_start_matches(':').split_whitespace().next().unwrap_or_default();
        kib.parse().with_context(|| format!("{name}: {kib:?}"))
    };
    Ok(Status { rss: field("VmRSS")?, hwm: field("VmHWM")?, anon: field("RssAnon")?, file: field("RssFile")? })
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`, Linux 4.0+).
pub fn reset_peak() -> Result<()> {
    fs::write("/proc/self/clear_refs", "5").context("resetting VmHWM through /proc/self/clear_refs")
}

/// One BPF map this process holds open.
pub struct MapMem {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub value_size: u64,
    /// Bytes, as the kernel reports them (fdinfo `memlock`, what `bpftool map show` prints).
    pub memlock: u64,
}

/// Every BPF map this process has a file descriptor of, largest first.
pub fn bpf_maps() -> Result<Vec<MapMem>> {
    let mut by_id = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let fd = entry?.file_name();
        let Ok(target) = fs::read_link(format!("/proc/self/fd/{}", fd.to_string_lossy())) else { continue };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.to_string_lossy())) else { continue };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(memlock)) = (field("map_id"), field("memlock")) else { continue };
        let id = id as u32;
        let (name, kind) = match MapInfo::from_id(id) {
            Ok(i) => (
                i.name_as_str().unwrap_or("?").to_string(),
                i.map_type().map(|t| format!("{t:?}")).unwrap_or_else(|_| "?".into()),
            ),
            Err(_) => ("?".into(), "?".into()),
        };
        let mem = MapMem {
            name,
            kind,
            max_entries: field("max_entries").unwrap_or(0),
            value_size: field("value_size").unwrap_or(0),
            memlock,
        };
        by_id.insert(id, mem);
    }
    // The VIPs' table maps (`TABLE_<index>`, one per VIP) are one row.
    let (tables, mut maps): (Vec<MapMem>, Vec<MapMem>) =
        by_id.into_values().partition(|m| m.name.starts_with("TABLE_"));
    if !tables.is_empty() {
        maps.push(MapMem {
            name: format!("TABLE_* ({} maps, one per VIP)", tables.len()),
            kind: "Array".into(),
            max_entries: tables.iter().map(|t| t.max_entries).sum(),
            value_size: tables[0].value_size,
            memlock: tables.iter().map(|t| t.memlock).sum(),
        });
    }
    maps.sort_by(|a, b| b.memlock.cmp(&a.memlock).then_with(|| a.name.cmp(&b.name)));
    Ok(maps)
}

/// CPU time this thread has used: (user, system) in milliseconds.
pub fn thread_cpu_ms() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    (ms(ru.ru_utime), ms(ru.ru_stime))
}
