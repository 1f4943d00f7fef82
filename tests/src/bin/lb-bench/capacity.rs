//! Kernel memory with the default capacities (`LoadOptions::default()`: 4,096 VIPs,
//! 65,536 backends, 262,144 flows, tables up to 65,536 slots) at 0, 10, 1,000 and
//! 4,096 VIPs of 10 backends each: what a VIP costs once it exists, and what the
//! capacities reserve before any does.

use std::fmt::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lb_agent::dataplane::xdp::loader::{self, LoadOptions};
use lb_agent::dataplane::xdp::XdpDataplane;
use lb_agent::dataplane::{Dataplane, Snapshot};

use crate::memory;
use crate::scale;

pub const COUNTS: [u32; 4] = [0, 10, 1_000, 4_096];

/// One measurement: every map's `memlock`, split into the VIPs' table maps and the rest.
pub struct Point {
    pub vips: u32,
    pub table_maps: usize,
    pub tables: u64,
    pub other: u64,
}

pub fn measure() -> Result<Vec<Point>> {
    let full = scale::snapshot();
    let mut points = Vec::new();
    for n in COUNTS {
        eprintln!("lb-bench: capacity: {n} VIPs with the default capacities");
        let opts = LoadOptions { hash_seed: 1, ..LoadOptions::default() };
        let l = loader::load(&opts).context("loading with the default capacities")?;
        let mut dp = XdpDataplane::new(l.maps, &opts);
        let mut snap = Snapshot::default();
        snap.vips.extend(full.vips.iter().take(n as usize).map(|(v, s)| (*v, s.clone())));
        let report = dp.apply(&snap)?;
        ensure!(report.failed.is_empty() && report.vips_added == n as usize, "{n} VIPs: {report:?}");
        let maps = memory::bpf_maps()?;
        let tables = scale::tables_bytes(&maps);
        let other = maps.iter().map(|m| m.memlock).sum::<u64>() - tables;
        points.push(Point { vips: n, table_maps: dp.maps().tables.held(), tables, other });
        drop((dp, l.ebpf));
        // The kernel frees maps from a work queue.
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(points)
}

pub fn render(d: &mut String, points: &[Point]) {
    let mib = |b: u64| b as f64 / 1048576.0;
    d.push_str(
        "**Kernel memory with the default capacities** (`LoadOptions::default()`: `--max-vips` 4,096, \
         `--max-backends` 65,536, `--max-flows` 262,144, `--table-size` 65,536) as VIPs of 10 backends each are \
         added (the first N VIPs above; each gets a 1,024-slot table). `memlock` summed over every map, from \
         `/proc/self/fdinfo`; per-CPU maps scale with the possible CPUs of this machine.\n\n",
    );
    d.push_str(
        "| VIPs | Table maps | Tables (MiB) | Other maps (MiB) | Total (MiB) |\n| ---: | ---: | ---: | ---: | ---: |\n",
    );
    for p in points {
        let _ = writeln!(
            d,
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            p.vips,
            p.table_maps,
            mib(p.tables),
            mib(p.other),
            mib(p.tables + p.other)
        );
    }
    d.push_str(
        "\nThe other maps are sized by the capacities and allocated when the program loads (the flow tables are \
         most of them); the tables exist only for the VIPs that do, and grow with their backends.\n\n",
    );
}
