//! The scale benchmark as its own section of BENCHMARKS.md.

use std::fmt::Write;

use crate::scale::{
    self, Scale, CHANGE_MS, FULL_SYNC_MS, MAX_BACKENDS, MAX_FLOWS, PER_VIP, RSS_MIB, TABLE_SIZE, VIPS, VIP_TABLE,
};
use crate::section::{count, mib, online_cpus, targets, yes};
use crate::stats::Summary;

pub const HEADING: &str = "## Control-plane scale";

fn ms3(s: &Summary, digits: usize) -> String {
    format!("{:.d$} | {:.d$} | {:.d$}", s.min, s.median, s.max, d = digits)
}

fn writes(s: &Summary) -> String {
    if s.min == s.max {
        count(s.median as u64)
    } else {
        format!("{} ({}–{})", count(s.median as u64), count(s.min as u64), count(s.max as u64))
    }
}

/// The memory figure the RSS target is judged on: the peak of the last full-sync round
/// (load through sync), with and without the resident TABLES mapping.
fn rss_peak(s: &Scale) -> Option<f64> {
    let (_, st) = s.mem.readings.iter().find(|(name, ..)| name.starts_with("after the full sync"))?;
    Some(mib(st.hwm))
}

/// (target, met) lines, for the terminal and the section.
pub fn verdicts(s: &Scale) -> Vec<(String, bool)> {
    let mut v = vec![(
        format!("Full sync ≤ {} ms: median {:.1} ms", count(FULL_SYNC_MS as u64), s.sync.apply_ms.median),
        s.sync.apply_ms.median <= FULL_SYNC_MS,
    )];
    for c in &s.changes {
        v.push((format!("{} ≤ {} ms: median {:.3} ms", c.case, CHANGE_MS, c.ms.median), c.ms.median <= CHANGE_MS));
    }
    if let Some(peak) = rss_peak(s) {
        v.push((format!("RSS ≤ {RSS_MIB} MiB: peak {peak:.1} MiB"), peak <= RSS_MIB));
    }
    v
}

/// The section, from its heading to just before the next one.
pub fn section(s: &Scale, quick: bool, scale_only: bool) -> String {
    let mut d = format!("{HEADING}\n\n");
    let run = match (quick, scale_only) {
        (true, true) => "`--scale-only --quick`",
        (true, false) => "`--quick`",
        (false, true) => "`--scale-only`",
        (false, false) => "full",
    };
    let _ = writeln!(
        d,
        "Measured {} (run: {run}); load average at the start of this part: {} on {} CPUs, the measuring thread \
         pinned to one of them.\n",
        s.date,
        s.load,
        online_cpus()
    );
    method(&mut d, s);
    results(&mut d, s);
    breakdown(&mut d, s);
    memory(&mut d, s);
    crate::capacity::render(&mut d, &s.capacity);
    targets(&mut d, verdicts(s));
    d
}

fn method(d: &mut String, s: &Scale) {
    let tables = scale::tables_bytes(&s.mem.maps);
    let _ = writeln!(
        d,
        "* **Input**: {} IPv4 TCP VIPs ({} … {}), {PER_VIP} backends each ({} distinct addresses from 172.16.0.0, \
         each with a MAC, weights 1–10 in a different order per VIP), one `Snapshot` (building it took {:.0} ms; the \
         agent builds its own every tick, which is not measured here).",
        count(VIPS),
        scale::vip(0),
        scale::vip(VIPS - 1),
        count(VIPS * PER_VIP),
        s.snapshot_ms
    );
    let _ = writeln!(
        d,
        "* **Maps**: `loader::load` (new, unpinned maps, programs verified) with `LoadOptions {{ table_size: \
         {TABLE_SIZE}, max_vips: {VIPS}, max_backends: {MAX_BACKENDS}, max_flows: {MAX_FLOWS} }}`. Each VIP's \
         table map is created with the VIP, sized from its backends: {VIP_TABLE} slots, the smallest of the table \
         sizes (256, 1,024, 8,192, 65,536) with 100 slots for each of its {PER_VIP} backends (Maglev wants at least \
         100 slots per backend for shares within about 1 % of the weights); {TABLE_SIZE} is only the most any VIP \
         may get. The {} table maps hold 2 halves × {VIP_TABLE} slots × \
         8 bytes each: {} bytes ({:.1} MiB) in all. `max_backends` leaves room for the added backends above the \
         {} in use. Loading took {:.0} ms (median; not part of `apply`).",
        count(VIPS),
        count(tables),
        tables as f64 / 1048576.0,
        count(VIPS * PER_VIP),
        s.sync.load_ms.median
    );
    let _ = writeln!(
        d,
        "* **Full sync**: one `XdpDataplane::apply` of the whole snapshot into the fresh maps, timed with \
         `Instant`; {} rounds, each on newly loaded maps (the previous round's dropped first). Every VIP's live \
         table is then checked to be full and stable.",
        s.rounds
    );
    let _ = writeln!(
        d,
        "* **Single changes**: after the last full sync, {} repetitions of each change, the three kinds taking \
         turns, each on a different VIP that had not changed before, each timed as an `apply_vips` of that one VIP \
         (what the agent does per change, whatever the number of VIPs). Each must report exactly one VIP changed. \
         **Unchanged**: after each change, an `apply` of the whole {}-VIP snapshot again (a full resync: the \
         agent's start, a reload, the pass after a failed one), asserted to write nothing; one more, before the \
         first change, is not kept.",
        s.repetitions,
        count(VIPS),
    );
    d.push_str(
        "* **Writes** are `ApplyReport::writes`: map entries written with a `bpf()` syscall each, plus table \
         slots stored through the mapping of the VIP's table map.\n\n",
    );
}

fn results(d: &mut String, s: &Scale) {
    d.push_str("| Case | Method | Min (ms) | Median (ms) | Max (ms) | Writes | Target (median) | Met |\n");
    d.push_str("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |\n");
    let sync = &s.sync;
    let _ = writeln!(
        d,
        "| Full sync, {} VIPs × {PER_VIP} backends | {} rounds, fresh maps | {} | {} | ≤ {} ms | {} |",
        count(VIPS),
        s.rounds,
        ms3(&sync.apply_ms, 1),
        count(sync.writes as u64),
        count(FULL_SYNC_MS as u64),
        yes(sync.apply_ms.median <= FULL_SYNC_MS)
    );
    for c in &s.changes {
        let _ = writeln!(
            d,
            "| {} | {} changes, the changed VIP applied | {} | {} | ≤ {CHANGE_MS} ms | {} |",
            c.case,
            c.ms.samples,
            ms3(&c.ms, 3),
            writes(&c.writes),
            yes(c.ms.median <= CHANGE_MS)
        );
    }
    let u = &s.unchanged;
    let _ = writeln!(
        d,
        "| {} | {} whole-snapshot applies, one after each change | {} | 0 (asserted) | — | — |\n",
        u.case,
        u.ms.samples,
        ms3(&u.ms, 3)
    );
    d.push_str(
        "Writes show the median, and the range where it varies. A weight change also moves the other backends' \
         slots a little, so its write count varies by VIP.\n\n",
    );
}

fn breakdown(d: &mut String, s: &Scale) {
    let sync = &s.sync;
    let entries = sync.writes.saturating_sub(sync.table_slots);
    let wall = sync.apply_ms.median;
    let (user, sys) = (sync.user_ms.median, sync.sys_ms.median);
    let maglev = s.maglev_ms.median;
    let _ = writeln!(
        d,
        "**Where the full sync's time goes.** Of its {} writes, {} are table slots (8-byte stores through the \
         mapping; the other {} slots already held their entry, the all-zero one a new map starts with) and {} are \
         map entries (`BACKENDS`, `BACKEND_STATS`, `VIPS`: one `bpf()` syscall each, about {:.0} per VIP). The \
         applying thread used {user:.0} ms of user time and {sys:.0} ms of system time (`getrusage`, \
         medians over the rounds; wall clock {wall:.0} ms, the difference is time without the CPU). The {} Maglev \
         builds alone, with the same inputs outside `apply`, take {maglev:.0} ms (median of {} passes, {:.1} µs \
         per VIP): {:.0} % of the wall clock. The system time is essentially the syscalls, about {:.1} µs per map entry; what \
         remains of user time ({:.0} ms) is the diffing, the bookkeeping (ids, per-VIP state, a digest of each VIP's \
         input) and the table stores.\n",
        count(sync.writes as u64),
        count(sync.table_slots as u64),
        count((u64::from(VIPS) * 2 * u64::from(VIP_TABLE)).saturating_sub(sync.table_slots as u64)),
        count(entries as u64),
        entries as f64 / VIPS as f64,
        count(VIPS),
        s.maglev_ms.samples,
        maglev * 1e3 / VIPS as f64,
        100.0 * maglev / wall,
        sys * 1e3 / entries.max(1) as f64,
        (user - maglev).max(0.0)
    );
    let base = s.unchanged.ms.median;
    let _ = write!(
        d,
        "**Where a single change's time goes.** The agent applies a change to its VIPs only: the medians above \
         are that one VIP's work (its backend entries, one {VIP_TABLE}-slot Maglev build of about {:.0} µs, the \
         table diff into the idle half, the `VIPS` flip), independent of the other {} VIPs. A full resync of the \
         unchanged snapshot costs {base:.3} ms (median; the first one right after the full sync, not in the table, \
         took {:.3} ms): comparing each VIP's input digest with the one applied last, nothing else.",
        s.maglev_ms.median * 1e3 / VIPS as f64,
        count(VIPS - 1),
        s.warmup_ms,
    );
    d.push_str(
        " Each change here is \
         its VIP's first, so the idle half it writes has never held a table and the diff rewrites almost all of \
         its slots; later changes of the same VIP write only the slots that differ from the generation before \
         last.\n\n",
    );
}

fn memory(d: &mut String, s: &Scale) {
    let tables = scale::tables_bytes(&s.mem.maps);
    d.push_str(
        "**Memory of this process** (MiB = 2^20 bytes, from `/proc/self/status`). VmHWM was reset \
         (`/proc/self/clear_refs`) at the start of the last full-sync round, so it is the peak of loading plus \
         syncing.\n\n",
    );
    d.push_str("| When (last round) | VmRSS | VmHWM | RssAnon | RssFile |\n");
    d.push_str("| --- | ---: | ---: | ---: | ---: |\n");
    for (name, st) in &s.mem.readings {
        let _ = writeln!(
            d,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib(st.rss),
            mib(st.hwm),
            mib(st.anon),
            mib(st.file)
        );
    }
    let _ = writeln!(
        d,
        "\nThe tables are kernel memory ({:.1} MiB). The agent writes a VIP's slots through a memory mapping of its \
         table map instead of a syscall each, mapped only while it reads or writes that VIP \
         (`lb-agent/src/dataplane/xdp/tables.rs`), so between applies none of it is resident in the process.\n",
        tables as f64 / 1048576.0
    );
    d.push_str(
        "This process holds what the agent holds for its data plane (`XdpDataplane` with its per-VIP state and a \
         digest of each VIP's applied input, one `Snapshot`, the loaded object), but not the agent's configuration, \
         ramp state, netlink caches or async runtime: the agent's own figure is higher by what those hold (not \
         measured here).\n\n",
    );
    d.push_str(
        "**Kernel memory of the maps** (after the full sync; `memlock` as the kernel reports it in \
         `/proc/self/fdinfo`, the figure `bpftool map show` prints; computed = entries × value size, times the \
         possible CPUs for per-CPU arrays):\n\n",
    );
    d.push_str("| Map | Type | Max entries | Value size (B) | memlock (MiB) | Computed (MiB) |\n");
    d.push_str("| --- | --- | ---: | ---: | ---: | ---: |\n");
    let cpus = possible_cpus();
    let mut total = 0;
    for m in &s.mem.maps {
        total += m.memlock;
        let computed = match m.kind.as_str() {
            "Array" => Some(m.max_entries * m.value_size.div_ceil(8) * 8),
            "PerCpuArray" => Some(m.max_entries * m.value_size.div_ceil(8) * 8 * cpus),
            _ => None,
        };
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {:.2} | {} |",
            m.name,
            m.kind,
            count(m.max_entries),
            m.value_size,
            m.memlock as f64 / 1048576.0,
            computed.map_or("—".into(), |c| format!("{:.2}", c as f64 / 1048576.0))
        );
    }
    let _ = writeln!(d, "| **total** | | | | {:.2} | |\n", total as f64 / 1048576.0);
}

/// The possible CPUs (what per-CPU maps are sized by).
fn possible_cpus() -> u64 {
    aya::util::nr_cpus().map(|n| n as u64).unwrap_or(1)
}

/// `doc` with its scale section replaced by `section` (or the section added before
/// "## Variance", or at the end).
pub fn splice(doc: &str, section: &str) -> String {
    crate::section::splice(doc, HEADING, section)
}

#[cfg(test)]
mod tests {
    use super::{count, splice};

    #[test]
    fn splices_the_section() {
        let doc = "# B\n\n## Results\n\nr\n\n## Variance\n\nv\n";
        let once = splice(doc, "## Control-plane scale\n\nold\n\n");
        assert_eq!(once, "# B\n\n## Results\n\nr\n\n## Control-plane scale\n\nold\n\n## Variance\n\nv\n");
        let twice = splice(&once, "## Control-plane scale\n\nnew\n\n");
        assert_eq!(twice, "# B\n\n## Results\n\nr\n\n## Control-plane scale\n\nnew\n\n## Variance\n\nv\n");
        assert_eq!(count(10_300_000), "10,300,000");
        assert_eq!(count(999), "999");
    }
}
