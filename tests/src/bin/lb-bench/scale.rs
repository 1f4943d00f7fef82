//! Control-plane scale: 10,000 IPv4 TCP VIPs × 10 backends programmed through
//! `XdpDataplane::apply` as the agent does it: a full sync into fresh maps, then single
//! changes (one weight, one backend added, one removed) and an unchanged repeat, each an
//! apply of the whole snapshot; the process's memory and the maps' kernel memory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aya::Ebpf;
use lb_agent::dataplane::xdp::loader::{self, LoadOptions};
use lb_agent::dataplane::xdp::XdpDataplane;
use lb_agent::dataplane::{ApplyReport, Dataplane, SnapBackend, SnapVip, Snapshot};
use lb_agent::model::{addr_bytes, Protocol, Vip};
use lb_common::maglev::{self, Member};
use lb_common::{TableEntry, NO_BACKEND};

use crate::memory::{self, MapMem, Status};
use crate::section::{date, loadavg};
use crate::stats::Summary;
use crate::Plan;

pub const VIPS: u32 = 10_000;
pub const PER_VIP: u32 = 10;
/// The largest table a VIP may get; each of these VIPs (10 backends) gets 1,024 slots,
/// the power of two ≥ 100 × 10 backends (Maglev wants ≥ 100 slots per backend).
pub const TABLE_SIZE: u32 = 65_536;
/// The table each of these VIPs gets.
pub const VIP_TABLE: u32 = lb_common::table_size_for(PER_VIP, TABLE_SIZE);
/// 100,000 backends in use, plus room for the added ones.
pub const MAX_BACKENDS: u32 = 110_000;
pub const MAX_FLOWS: u32 = 4_096;
const SEED: u32 = 0x5ca1_e000;
const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 1];
/// The backend whose weight changes, and the one removed (indices in a VIP's list).
const CHANGED: usize = 3;
const REMOVED: usize = 5;
/// Backends added by the "add" case: 172.24.0.0 onwards (the others are 172.16.0.0/14).
const ADDED_BASE: u32 = u32::from_be_bytes([172, 24, 0, 0]);

pub const FULL_SYNC_MS: f64 = 2_000.0;
pub const CHANGE_MS: f64 = 10.0;
pub const RSS_MIB: f64 = 150.0;

/// The maps' settings.
pub fn options() -> LoadOptions {
    LoadOptions {
        table_size: TABLE_SIZE,
        max_vips: VIPS,
        max_backends: MAX_BACKENDS,
        max_flows: MAX_FLOWS,
        hash_seed: SEED,
        lb_mac: LB_MAC,
        flow_idle_ns: 120_000_000_000,
    }
}

/// Kernel bytes of the VIPs' table maps, from the maps this process holds.
pub fn tables_bytes(maps: &[MapMem]) -> u64 {
    maps.iter().filter(|m| m.name.starts_with("TABLE_")).map(|m| m.memlock).sum()
}

/// VIP `i`: 10.0.0.1:80/tcp onwards.
pub fn vip(i: u32) -> Vip {
    let [_, b, c, d] = (i + 1).to_be_bytes();
    Vip { addr: IpAddr::from([10, b, c, d]), port: 80, proto: Protocol::Tcp }
}

/// Backend number `n` (address 172.16.0.0 + n, or `ADDED_BASE` + n), with a MAC.
fn backend(base: u32, n: u32, weight: u32) -> SnapBackend {
    let [a, b, c, d] = n.to_be_bytes();
    SnapBackend::steady(IpAddr::from((base + n).to_be_bytes()), weight, Some([0x02, 0xbe, a, b, c, d]))
}

/// Weights 1–10, a different order in every VIP.
fn weight(i: u32, j: u32) -> u32 {
    1 + (i * 7 + j * 3) % 10
}

/// The whole snapshot: every VIP with its ten backends.
pub fn snapshot() -> Snapshot {
    let base = u32::from_be_bytes([172, 16, 0, 0]);
    let mut snap = Snapshot::default();
    for i in 0..VIPS {
        let backends = (0..PER_VIP).map(|j| backend(base, i * PER_VIP + j, weight(i, j))).collect();
        snap.vips.insert(vip(i), SnapVip { backends, ..SnapVip::default() });
    }
    snap
}

/// One apply, timed with `Instant` (milliseconds).
fn timed_apply(dp: &mut XdpDataplane, snap: &Snapshot) -> Result<(f64, ApplyReport)> {
    let start = Instant::now();
    let report = dp.apply(snap).context("applying the snapshot")?;
    Ok((start.elapsed().as_secs_f64() * 1e3, report))
}

/// The full syncs, one per round on fresh maps.
pub struct Sync {
    /// Program load and map creation (not part of apply).
    pub load_ms: Summary,
    pub apply_ms: Summary,
    pub user_ms: Summary,
    pub sys_ms: Summary,
    pub writes: usize,
    /// Of `writes`, the table slots (stores through the mapping, no syscall).
    pub table_slots: usize,
}

/// One kind of single change, repeated on different VIPs.
pub struct ChangeRow {
    pub case: &'static str,
    pub ms: Summary,
    pub writes: Summary,
}

/// The process's memory at points of the last round.
pub struct Memory {
    pub readings: Vec<(&'static str, Status)>,
    pub maps: Vec<MapMem>,
}

pub struct Scale {
    pub date: String,
    pub load: String,
    pub rounds: usize,
    pub repetitions: usize,
    pub snapshot_ms: f64,
    pub sync: Sync,
    /// All 10,000 Maglev builds alone, with the inputs apply gives them.
    pub maglev_ms: Summary,
    pub changes: Vec<ChangeRow>,
    pub unchanged: ChangeRow,
    /// The first unchanged repeat after the full sync (not in `unchanged`).
    pub warmup_ms: f64,
    pub mem: Memory,
    /// Kernel memory with the default capacities at a few VIP counts.
    pub capacity: Vec<crate::capacity::Point>,
}

struct Loaded {
    dp: XdpDataplane,
    _ebpf: Ebpf,
}

/// Every figure of the scale benchmark.
pub fn measure(plan: &Plan) -> Result<Scale> {
    let (date, load) = (date(), loadavg());
    let start = Instant::now();
    let mut snap = snapshot();
    let snapshot_ms = start.elapsed().as_secs_f64() * 1e3;
    let (sync, mut loaded, mut readings, maps) = full_syncs(plan, &snap)?;
    let maglev_ms = maglev_alone(&snap, plan.scale_rounds);
    eprintln!("lb-bench: scale: single changes");
    // A first repeat, not kept, right after the full sync: caches are cold.
    let warmup_ms = unchanged(&mut loaded.dp, &snap)?;
    let (changes, unchanged) = changes(&mut loaded.dp, &mut snap, plan.scale_changes)?;
    readings.push(("after the single changes", memory::status()?));
    drop(loaded);
    std::thread::sleep(Duration::from_millis(300));
    let capacity = crate::capacity::measure()?;
    Ok(Scale {
        date,
        load,
        rounds: plan.scale_rounds,
        repetitions: plan.scale_changes,
        snapshot_ms,
        sync,
        maglev_ms,
        changes,
        unchanged,
        warmup_ms,
        mem: Memory { readings, maps },
        capacity,
    })
}

type SyncOut = (Sync, Loaded, Vec<(&'static str, Status)>, Vec<MapMem>);

/// `plan.scale_rounds` full syncs, each into fresh maps; keeps the last round's data
/// plane and its memory readings.
fn full_syncs(plan: &Plan, snap: &Snapshot) -> Result<SyncOut> {
    let opts = options();
    let (mut load_ms, mut apply_ms, mut user_ms, mut sys_ms) = (vec![], vec![], vec![], vec![]);
    let mut last = None;
    let mut writes = 0;
    for round in 0..plan.scale_rounds {
        eprintln!("lb-bench: scale: full sync {}/{}", round + 1, plan.scale_rounds);
        if last.take().is_some() {
            // The kernel frees the old maps from a work queue: let it finish.
            std::thread::sleep(Duration::from_millis(300));
        }
        memory::reset_peak()?;
        let before = memory::status()?;
        let start = Instant::now();
        let l = loader::load(&opts).context("loading the XDP object")?;
        let mut loaded = Loaded { dp: XdpDataplane::new(l.maps, &opts), _ebpf: l.ebpf };
        load_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let after_load = memory::status()?;
        let (u0, s0) = memory::thread_cpu_ms();
        let (ms, report) = timed_apply(&mut loaded.dp, snap)?;
        let (u1, s1) = memory::thread_cpu_ms();
        let after_sync = memory::status()?;
        ensure!(report.vips_added == VIPS as usize, "full sync added {} VIPs, not {VIPS}", report.vips_added);
        ensure!(round == 0 || report.writes == writes, "full sync wrote {} entries, {writes} before", report.writes);
        writes = report.writes;
        apply_ms.push(ms);
        user_ms.push(u1 - u0);
        sys_ms.push(s1 - s0);
        let readings = vec![
            ("before loading (snapshot built)", before),
            ("after loading (maps created)", after_load),
            ("after the full sync", after_sync),
        ];
        last = Some((loaded, readings));
    }
    let (loaded, readings) = last.context("no full-sync round")?;
    let table_slots = check_tables(&loaded.dp)?;
    let maps = memory::bpf_maps()?;
    let sync = Sync {
        load_ms: Summary::of(&load_ms),
        apply_ms: Summary::of(&apply_ms),
        user_ms: Summary::of(&user_ms),
        sys_ms: Summary::of(&sys_ms),
        writes,
        table_slots,
    };
    Ok((sync, loaded, readings, maps))
}

/// Every VIP's live table must be full and stable; returns the slots the sync wrote
/// (those not left at the all-zero entry the new map held).
fn check_tables(dp: &XdpDataplane) -> Result<usize> {
    let mut written = 0;
    for i in 0..VIPS {
        let v = vip(i);
        let meta = dp.maps().vips.get(&v.key(), 0).with_context(|| format!("VIPS entry of {v}"))?;
        let live = dp.maps().tables.read(&meta, meta.half)?;
        ensure!(live.iter().all(|e| e.backend != NO_BACKEND && e.backend == e.prev), "{v}: table not full and stable");
        written += live.iter().filter(|e| **e != TableEntry::default()).count();
    }
    Ok(written)
}

/// The 10,000 Maglev builds apply makes in a full sync, alone (ms per full set).
fn maglev_alone(snap: &Snapshot, passes: usize) -> Summary {
    let inputs: Vec<Vec<([u8; 16], u32)>> =
        snap.vips.values().map(|v| v.backends.iter().map(|b| (addr_bytes(b.addr), b.weight)).collect()).collect();
    let ms: Vec<f64> = (0..passes)
        .map(|_| {
            let start = Instant::now();
            for backends in &inputs {
                let members: Vec<Member<'_>> = backends.iter().map(|(k, w)| Member { key: k, weight: *w }).collect();
                std::hint::black_box(maglev::build(&members, VIP_TABLE));
            }
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    Summary::of(&ms)
}

/// A repeat of the applied snapshot: it must write nothing.
fn unchanged(dp: &mut XdpDataplane, snap: &Snapshot) -> Result<f64> {
    let (t, report) = timed_apply(dp, snap)?;
    ensure!(report.writes == 0, "an unchanged snapshot wrote {} entries ({report:?})", report.writes);
    Ok(t)
}

#[derive(Clone, Copy)]
enum Change {
    Weight,
    Add,
    Remove,
}

/// `n` single changes of each kind, the kinds taking turns, each on a VIP that has not
/// changed before, each applied as the agent applies a change (`apply_vips` with that
/// VIP only), and each followed by an apply of the whole, unchanged snapshot (what a
/// full resync costs: start, reload, after a failure). Returns the changes' rows and the
/// repeats' row.
fn changes(dp: &mut XdpDataplane, snap: &mut Snapshot, n: usize) -> Result<(Vec<ChangeRow>, ChangeRow)> {
    const STRIDE: u32 = 41;
    let kinds = [
        (Change::Weight, "One backend's weight changed"),
        (Change::Add, "One backend added to one VIP"),
        (Change::Remove, "One backend removed from one VIP"),
    ];
    let share = VIPS / kinds.len() as u32;
    ensure!((n as u32) * STRIDE < share, "too many repetitions for distinct VIPs");
    let mut ms = vec![Vec::with_capacity(n); kinds.len()];
    let mut writes = vec![Vec::with_capacity(n); kinds.len()];
    let mut repeats = Vec::with_capacity(n * kinds.len());
    let mut added = 0;
    for r in 0..n {
        for (k, (kind, case)) in kinds.iter().enumerate() {
            let v = vip(k as u32 * share + r as u32 * STRIDE);
            let list = &mut snap.vips.get_mut(&v).context("VIP missing from the snapshot")?.backends;
            match kind {
                Change::Weight => {
                    let b = list[CHANGED];
                    list[CHANGED] = SnapBackend::steady(b.addr, b.weight + 5, b.mac);
                }
                Change::Add => {
                    list.push(backend(ADDED_BASE, added, 7));
                    added += 1;
                }
                Change::Remove => {
                    list.remove(REMOVED);
                }
            }
            let one = BTreeMap::from([(v, Some(snap.vips[&v].clone()))]);
            let start = Instant::now();
            let report = dp.apply_vips(&one).context("applying one VIP")?;
            let t = start.elapsed().as_secs_f64() * 1e3;
            ensure!(
                report.vips_changed == 1 && report.vips_added == 0 && report.vips_removed == 0 && report.writes > 0,
                "{case} on {v}: {report:?}"
            );
            ms[k].push(t);
            writes[k].push(report.writes as f64);
            repeats.push(unchanged(dp, snap)?);
        }
    }
    let rows = kinds
        .iter()
        .enumerate()
        .map(|(k, (_, case))| ChangeRow { case, ms: Summary::of(&ms[k]), writes: Summary::of(&writes[k]) })
        .collect();
    let repeats =
        ChangeRow { case: "Unchanged snapshot (repeat)", ms: Summary::of(&repeats), writes: Summary::of(&[0.0]) };
    Ok((rows, repeats))
}
