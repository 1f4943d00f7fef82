//! The figures as Markdown tables, and BENCHMARKS.md around them.

use std::fmt::Write;
use std::process::Command;

use crate::cases::Setup;
use crate::stats::Summary;
use crate::xdp::{BACKENDS, VIP_TABLE};
use crate::{maglev, Plan};

/// A limit on the median (net when there is a net figure), and an optional stretch goal.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub max: f64,
    pub stretch: Option<f64>,
}

/// One line of a table.
pub struct Row {
    pub case: &'static str,
    pub method: String,
    pub raw: Summary,
    /// Raw less the empty program's median; `None` for the empty program itself.
    pub net: Option<Summary>,
    pub target: Option<Target>,
}

impl Row {
    /// Whether the median meets the target, in words.
    fn met(&self) -> String {
        let Some(t) = self.target else {
            return "—".into();
        };
        let median = self.net.unwrap_or(self.raw).median;
        match t.stretch {
            _ if median > t.max => "**NO**".into(),
            Some(s) if median <= s => format!("yes (also ≤ {})", num(s)),
            Some(s) => format!("yes (not ≤ {})", num(s)),
            None => "yes".into(),
        }
    }
}

/// Where and when the figures were taken.
pub struct Machine {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub load: String,
}

impl Machine {
    /// Reads the machine's description (call before pinning to one CPU).
    pub fn probe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim()));
        let date = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output();
        Machine {
            date: date.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu_model: model.unwrap_or("unknown").to_string(),
            load: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}

/// Figures: whole numbers as such, others with one decimal.
fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn triple(s: Option<Summary>) -> String {
    s.map_or("— | — | —".into(), |s| format!("{} | {} | {}", num(s.min), num(s.median), num(s.max)))
}

fn target(t: Option<Target>, unit: &str) -> String {
    match t {
        None => "—".into(),
        Some(Target { max, stretch: Some(s) }) => format!("≤ {} {unit} (≤ {} within reach)", num(max), num(s)),
        Some(Target { max, .. }) => format!("≤ {} {unit}", num(max)),
    }
}

/// The per-packet table (ns per packet) and the Maglev table (ms per build).
pub fn tables(packets: &[Row], build: &Row) -> String {
    let mut out = String::new();
    out.push_str("| Case | Method | Raw min | Raw median | Raw max | Net min | Net median | Net max | Target (net median) | Met |\n");
    out.push_str("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
    for r in packets {
        let (raw, net) = (triple(Some(r.raw)), triple(r.net));
        let _ =
            writeln!(out, "| {} | {} | {raw} | {net} | {} | {} |", r.case, r.method, target(r.target, "ns"), r.met());
    }
    out.push_str("\nAll per-packet figures are nanoseconds per packet.\n\n");
    out.push_str("| Case | Method | Min (ms) | Median (ms) | Max (ms) | Target (median) | Met |\n");
    out.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
    let s = build.raw;
    let (min, median, max) = (format!("{:.3}", s.min), format!("{:.3}", s.median), format!("{:.3}", s.max));
    let _ = writeln!(
        out,
        "| {} | {} | {min} | {median} | {max} | {} | {} |",
        build.case,
        build.method,
        target(build.target, "ms"),
        build.met()
    );
    out
}

/// BENCHMARKS.md; `scale` is the control-plane scale section (before "Variance").
pub fn document(m: &Machine, plan: &Plan, setup: &Setup, tables: &str, scale: &str) -> String {
    let mut d = String::from("# Benchmarks\n\n");
    d.push_str(
        "Written by `cargo xtask bench` (`tests/src/bin/lb-bench.rs`); re-run it rather than editing by hand.\n\n",
    );
    d.push_str("## Machine\n\n");
    let _ = writeln!(d, "* Date: {}", m.date);
    let _ = writeln!(d, "* Kernel (`uname -r`): {}", m.kernel);
    let _ = writeln!(d, "* CPUs (`nproc`): {}, {}", m.cpus, m.cpu_model);
    let _ = writeln!(d, "* Load average at start: {}", m.load);
    let _ = writeln!(
        d,
        "* Run: {}\n",
        if plan.quick { "`--quick` (smoke run: fewer rounds, flows and repetitions)" } else { "full" }
    );
    d.push_str(&method(plan, setup));
    d.push_str("## Results\n\n");
    d.push_str(tables);
    d.push('\n');
    d.push_str(&notes(setup));
    d.push('\n');
    d.push_str(scale);
    d.push_str(VARIANCE.trim_start_matches('\n'));
    d
}

fn method(plan: &Plan, s: &Setup) -> String {
    let mut d = String::from("## Method\n\n");
    let _ = writeln!(
        d,
        "* **Per packet**: `BPF_PROG_TEST_RUN` of the XDP program `lb_xdp`, loaded and programmed through \
         `XdpDataplane::apply` exactly as the agent does: one IPv4 TCP VIP ({}) with {BACKENDS} backends of weight 10, \
         a Maglev table of {VIP_TABLE} slots (the size its backends get). Backend 10.0.0.1's weight then goes 10 → 40, which leaves {} slots ({:.1} %) \
         in transition (current backend ≠ previous backend). Frames are {} bytes (Ethernet, IPv4, TCP, 5 bytes of \
         payload); each case's frame is picked with `lb_agent::dataplane::xdp::explain` so it takes the path it names. The measuring \
         thread is pinned to one CPU.",
        s.vip,
        s.changed_slots,
        100.0 * s.changed_slots as f64 / VIP_TABLE as f64,
        s.frame_len
    );
    let _ = writeln!(
        d,
        "* **a, b, d** (established, stable slot; established, changed slot, pinned in the flow table; non-VIP): one \
         call of `repeat` = {} per round, {} rounds, interleaved with the empty program `xdp_pass` on the same frame. \
         The kernel reports each call's mean time per run (whole ns); the table gives min / median / max over the \
         rounds. A first, shorter round warms up and is not kept. `repeat` re-runs the program on the already \
         rewritten buffer, which is sound because the MAC rewrite is idempotent.",
        plan.repeat, plan.rounds
    );
    let _ = writeln!(
        d,
        "* **c** (new flow): {} distinct SYNs (one source address or port each) whose slot is stable (no flow-table \
         work), then {} whose slot changed (one insert into the LRU flow table each), one call with `repeat` = 1 per \
         frame, min / median / max of the kernel-reported duration of each call. Before each call the empty program \
         runs on the same frame, also with `repeat` = 1. A single run includes the kernel's clock reads around it, so \
         the empty program costs more this way than per run of a `repeat` loop.",
        plan.new_flows, plan.new_flows
    );
    d.push_str(
        "* **Net** = raw − the median of the empty program measured the same way (same `repeat`) in the same run: \
         the loop's and the clock's own cost removed. Net min / max subtract that same median, so they show the \
         spread, not separate baselines. Targets are judged on the net median.\n",
    );
    d.push_str(
        "* Every call's verdict is checked, and so are the counters it moved (e.g. the changed-slot established \
         flow counts one flow-table lookup and no insert per run; each changed-slot SYN one insert).\n",
    );
    let _ = writeln!(
        d,
        "* **Maglev build**: `lb_common::maglev::build` of {} slots for {} backends with weights 1–10, timed with \
         `Instant` over {} builds after one warm-up build. The criterion bench measures the same build with \
         statistics: `cargo bench -p lb-common --features user --bench maglev`.\n",
        maglev::SLOTS,
        maglev::BACKENDS,
        plan.maglev_builds
    );
    d
}

/// What the tables do not say on their own.
pub fn notes(s: &Setup) -> String {
    format!(
        "The flow-table insert alone (median of the changed-slot SYNs − median of the stable-slot SYNs, \
         same method) costs {} ns. It was measured into an empty flow table; inserts into a \
         full one (each evicting an entry) were not measured. Single-run durations come from the kernel's clock, which on these \
         machines moves in steps of about 10 ns, so the single-run rows are good to about ±10 ns.\n",
        num(s.insert_ns)
    )
}

const VARIANCE: &str = "
## Variance

These are shared 2-vCPU virtual machines: the same figure moves by tens of per cent between
runs (±40 % has been seen), and anything else running at the time (builds, other tests)
shows up as high maxima. Compare figures within one run — as differences from, or ratios
to, the empty program measured alongside — not across runs or machines. The minimum is the
least disturbed figure; the median is what the targets are judged on.
";
