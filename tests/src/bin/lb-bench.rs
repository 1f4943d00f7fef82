//! `cargo xtask bench`: the XDP program's per-packet cost through BPF_PROG_TEST_RUN,
//! the Maglev build time, the control plane at scale (10,000 VIPs through
//! `XdpDataplane::apply`) and the agent at Kubernetes scale (10,000 Services in a real
//! API server), and flood isolation (a SYN flood at one VIP while another's table changes,
//! in network namespaces), printed and written to BENCHMARKS.md.
//!
//! Usage: `lb-bench [--quick] [--scale-only | --kube-only | --flood-only | --packets-only] [--out PATH]`. `--quick` takes
//! fewer rounds and repetitions (same sizes); `--scale-only` / `--kube-only` / `--flood-only` measure only
//! that part and replace just its section of the file. Needs root (BPF); the Kubernetes
//! part also needs network namespaces and the kube-apiserver and etcd binaries.

#[path = "lb-bench/capacity.rs"]
mod capacity;
#[path = "lb-bench/cases.rs"]
mod cases;
#[path = "lb-bench/flood.rs"]
mod flood;
#[path = "lb-bench/flood_gen.rs"]
mod flood_gen;
#[path = "lb-bench/flood_report.rs"]
mod flood_report;
#[path = "lb-bench/kube.rs"]
mod kube;
#[path = "lb-bench/kube_fixtures.rs"]
mod kube_fixtures;
#[path = "lb-bench/kube_probe.rs"]
mod kube_probe;
#[path = "lb-bench/kube_report.rs"]
mod kube_report;
#[path = "lb-bench/maglev.rs"]
mod maglev;
#[path = "lb-bench/memory.rs"]
mod memory;
#[path = "lb-bench/report.rs"]
mod report;
#[path = "lb-bench/scale.rs"]
mod scale;
#[path = "lb-bench/scale_report.rs"]
mod scale_report;
#[path = "lb-bench/scrape.rs"]
mod scrape;
#[path = "lb-bench/section.rs"]
mod section;
#[path = "lb-bench/stats.rs"]
mod stats;
#[path = "lb-bench/xdp.rs"]
mod xdp;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
const USAGE: &str =
    "usage: lb-bench [--quick] [--scale-only | --kube-only | --flood-only | --packets-only] [--out PATH]";

/// How much to measure.
pub struct Plan {
    pub quick: bool,
    /// Rounds of the `repeat` cases.
    pub rounds: usize,
    /// Runs per BPF_PROG_TEST_RUN call in the `repeat` cases.
    pub repeat: u32,
    /// Distinct SYNs per new-flow case.
    pub new_flows: usize,
    pub maglev_builds: usize,
    /// Full syncs of the scale benchmark, each on fresh maps.
    pub scale_rounds: usize,
    /// Repetitions of each single change (and of the unchanged apply) at scale.
    pub scale_changes: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 3,
                repeat: 100_000,
                new_flows: 2_000,
                maglev_builds: 5,
                scale_rounds: 2,
                scale_changes: 5,
            }
        } else {
            Plan {
                quick,
                rounds: 7,
                repeat: 1_000_000,
                new_flows: 20_000,
                maglev_builds: 30,
                scale_rounds: 5,
                scale_changes: 20,
            }
        }
    }
}

struct Args {
    quick: bool,
    scale_only: bool,
    kube_only: bool,
    flood_only: bool,
    /// Per-packet figures only, printed, nothing written (for iterating on the program).
    packets_only: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        scale_only: false,
        kube_only: false,
        flood_only: false,
        packets_only: false,
        out: PathBuf::from(DEFAULT_OUT),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--scale-only" => args.scale_only = true,
            "--kube-only" => args.kube_only = true,
            "--flood-only" => args.flood_only = true,
            "--packets-only" => args.packets_only = true,
            "--out" => args.out = it.next().context("--out needs a path")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    if [args.scale_only, args.kube_only, args.flood_only, args.packets_only].iter().filter(|o| **o).count() > 1 {
        bail!("--scale-only, --kube-only, --flood-only and --packets-only exclude each other");
    }
    Ok(args)
}

/// Pins this thread to the CPU it is on: BPF_PROG_TEST_RUN runs on the calling CPU,
/// so every case is measured on the same one.
fn pin_to_current_cpu() -> Result<usize> {
    // SAFETY: sched_getcpu has no preconditions; the cpu_set_t is zeroed, then filled
    // with CPU_SET, and passed with its size.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).context("sched_getcpu")?;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
        Ok(cpu)
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("lb-bench: {e:#}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP lb-bench: needs root (loading BPF programs, BPF_PROG_TEST_RUN)");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let plan = Plan::new(args.quick);
    let machine = report::Machine::probe();
    let cpu = pin_to_current_cpu()?;
    let kind = if plan.quick { "quick" } else { "full" };
    eprintln!("lb-bench: measuring on CPU {cpu} ({kind} run)");
    let old = || match std::fs::read_to_string(&args.out) {
        Ok(old) => Ok(old),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", args.out.display())),
    };
    if args.packets_only {
        let (packets, setup) = cases::measure(&plan)?;
        let build = maglev::measure(plan.maglev_builds)?;
        println!("{}\n{}", report::tables(&packets, &build), report::notes(&setup));
        return Ok(());
    }
    let (doc, kube_result) = if args.kube_only {
        let section = measure_kube(&plan, true)?;
        (kube::splice(&old()?, &section), Ok(()))
    } else if args.flood_only {
        let section = measure_flood(&plan, true)?;
        (flood_report::splice(&old()?, &section), Ok(()))
    } else if args.scale_only {
        let section = measure_scale(&plan, true)?;
        (scale_report::splice(&old()?, &section), Ok(()))
    } else {
        let (packets, setup) = cases::measure(&plan)?;
        let build = maglev::measure(plan.maglev_builds)?;
        let tables = report::tables(&packets, &build);
        println!("{tables}\n{}", report::notes(&setup));
        let section = measure_scale(&plan, false)?;
        let doc = report::document(&machine, &plan, &setup, &tables, &section);
        // A failed Kubernetes part still leaves the other figures written.
        let (kube_section, result) = match measure_kube(&plan, false) {
            Ok(s) => (s, Ok(())),
            Err(e) => (kube::skipped(&format!("the run failed: {e:#}")), Err(e)),
        };
        let doc = kube::splice(&doc, &kube_section);
        let (flood_section, flood_result) = match measure_flood(&plan, false) {
            Ok(s) => (s, Ok(())),
            Err(e) => (flood_report::skipped(&format!("the run failed: {e:#}")), Err(e)),
        };
        (flood_report::splice(&doc, &flood_section), result.and(flood_result))
    };
    std::fs::write(&args.out, doc).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("lb-bench: wrote {}", args.out.display());
    kube_result
}

/// The scale benchmark: prints its section and which targets it meets, returns the section.
fn measure_scale(plan: &Plan, scale_only: bool) -> Result<String> {
    let s = scale::measure(plan)?;
    let section = scale_report::section(&s, plan.quick, scale_only);
    println!("{section}");
    for (what, met) in scale_report::verdicts(&s) {
        eprintln!("lb-bench: target {}: {what}", if met { "met" } else { "MISSED" });
    }
    Ok(section)
}

/// The Kubernetes benchmark: prints its section and which targets it meets, returns the
/// section (a "not measured" one when this machine cannot run it).
fn measure_kube(plan: &Plan, kube_only: bool) -> Result<String> {
    if let Some(why) = kube::unavailable() {
        eprintln!("SKIP lb-bench Kubernetes part: {why}");
        return Ok(kube::skipped(&why));
    }
    let k = kube::measure(plan.quick)?;
    let section = kube::section(&k, plan.quick, kube_only);
    println!("{section}");
    for (what, met) in kube::verdicts(&k) {
        eprintln!("lb-bench: target {}: {what}", if met { "met" } else { "MISSED" });
    }
    Ok(section)
}

/// The flood-isolation benchmark: prints its section and which targets it meets, returns
/// the section (a "not measured" one when this machine cannot run it).
fn measure_flood(plan: &Plan, flood_only: bool) -> Result<String> {
    if let Some(why) = lb_tests::unavailable().or_else(flood_gen::unavailable) {
        eprintln!("SKIP lb-bench flood part: {why}");
        return Ok(flood_report::skipped(&why));
    }
    let f = flood::measure(plan.quick)?;
    let section = flood_report::section(&f, flood_only);
    println!("{section}");
    for (what, met) in flood_report::verdicts(&f) {
        eprintln!("lb-bench: target {}: {what}", if met { "met" } else { "MISSED" });
    }
    Ok(section)
}
