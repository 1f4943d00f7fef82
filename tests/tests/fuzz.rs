//! A million random and mutated frames through BPF_PROG_TEST_RUN, each judged by an
//! oracle written from the issue 8 spec (`lb_tests::fuzz`), not from the program.
//!
//! Per frame: the XDP action is the oracle's; a passed or dropped frame comes back
//! byte for byte; a forwarded one carries a backend MAC of the oracle's VIP, the LB's
//! MAC and every byte from offset 12 unchanged, and a flow (and every ICMP error about
//! it) keeps one backend. Per chunk of frames: every verdict counter (packets and bytes),
//! `note_ipv4_options`, `note_icmp_ptb` and `note_flow_lookup` moved as the oracle
//! counted, `note_prev_backend` not at all (the tables never change here).
//!
//! `LB_FUZZ_SEED` (decimal or 0x-hex; default: from the clock) and `LB_FUZZ_FRAMES`
//! (default 1,000,000) override; the seed is printed so a failure can be replayed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions};
use aya::Ebpf;
use lb_agent::dataplane::xdp::loader::{self, LoadOptions, PROG_LB};
use lb_agent::dataplane::xdp::XdpDataplane;
use lb_agent::dataplane::Dataplane;
use lb_common::stats::{Reason, REASON_COUNT, REASON_NAMES, VERDICT_COUNT};
use lb_tests::fuzz::gen::{Gen, Sample};
use lb_tests::fuzz::oracle::{self, action_name, Expected};
use lb_tests::fuzz::wire::LB_MAC;
use lb_tests::fuzz::{hex, World, UDP};

const CHUNK: usize = 20_000;
const N: usize = REASON_COUNT as usize;
const VERDICTS: usize = VERDICT_COUNT as usize;
/// Notes the oracle predicts (with tables that never change, no packet takes a slot's
/// previous backend); `note_flow_pinned` depends on LRU evictions and is only bounded.
const CHECKED_NOTES: [Reason; 4] =
    [Reason::NOTE_IPV4_OPTIONS, Reason::NOTE_FLOW_LOOKUP, Reason::NOTE_PREV_BACKEND, Reason::NOTE_ICMP_PTB];

/// Packets per reason, and bytes per verdict reason.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Counts {
    packets: [u64; N],
    bytes: [u64; N],
}

impl Default for Counts {
    fn default() -> Self {
        Counts { packets: [0; N], bytes: [0; N] }
    }
}

impl Counts {
    fn since(&self, before: &Counts) -> Counts {
        let mut d = Counts::default();
        for i in 0..N {
            d.packets[i] = self.packets[i].wrapping_sub(before.packets[i]);
            d.bytes[i] = self.bytes[i].wrapping_sub(before.bytes[i]);
        }
        d
    }

    fn add(&mut self, other: &Counts) {
        for i in 0..N {
            self.packets[i] += other.packets[i];
            self.bytes[i] += other.bytes[i];
        }
    }

    /// What the oracle says one frame of `len` bytes moves.
    fn count(&mut self, world: &World, e: &Expected, len: usize) {
        let r = e.reason.0 as usize;
        self.packets[r] += 1;
        self.bytes[r] += len as u64;
        let flags = [
            (Reason::NOTE_IPV4_OPTIONS, e.ipv4_options),
            (Reason::NOTE_ICMP_PTB, e.ptb),
            (Reason::NOTE_FLOW_LOOKUP, consults_flows(world, e)),
        ];
        for (note, set) in flags {
            self.packets[note.0 as usize] += u64::from(set);
        }
    }

    /// The counters the oracle predicts that differ: (reason, what, oracle, kernel).
    fn diff(&self, kernel: &Counts) -> Vec<(usize, &'static str, u64, u64)> {
        let checked = (0..VERDICTS).chain(CHECKED_NOTES.map(|r| r.0 as usize));
        let mut out = vec![];
        for i in checked {
            if self.packets[i] != kernel.packets[i] {
                out.push((i, "packets", self.packets[i], kernel.packets[i]));
            }
            if i < VERDICTS && self.bytes[i] != kernel.bytes[i] {
                out.push((i, "bytes", self.bytes[i], kernel.bytes[i]));
            }
        }
        out
    }
}

/// With tables that never change, only UDP and affinity VIPs consult the flow tables
/// (TCP without affinity takes its stable slot's backend).
fn consults_flows(world: &World, e: &Expected) -> bool {
    e.forward.is_some_and(|f| world.vips[f.vip].proto == UDP || world.vips[f.vip].affinity_s > 0)
}

fn describe(diffs: &[(usize, &'static str, u64, u64)]) -> String {
    diffs
        .iter()
        .map(|(i, what, o, k)| format!("{} {what}: oracle {o}, kernel {k}", REASON_NAMES[*i]))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Harness {
    ebpf: Ebpf,
    dp: XdpDataplane,
}

impl Harness {
    fn new(world: &World) -> Result<Harness> {
        let opts = LoadOptions {
            table_size: 1024,
            max_vips: 16,
            max_backends: 64,
            max_flows: 4096,
            hash_seed: 0x5eed,
            lb_mac: LB_MAC,
            flow_idle_ns: 120_000_000_000,
        };
        let loader::Loaded { ebpf, maps, .. } = loader::load(&opts).context("loading the XDP object")?;
        let mut dp = XdpDataplane::new(maps, &opts);
        dp.apply(&world.snapshot()?).context("applying the fuzz VIPs")?;
        Ok(Harness { ebpf, dp })
    }

    /// Runs one frame: `None` if the kernel refuses it (BPF_PROG_TEST_RUN takes no XDP
    /// frame shorter than an Ethernet header).
    fn run(&self, frame: &[u8]) -> Result<Option<(u32, Vec<u8>)>> {
        let prog = loader::program(&self.ebpf, PROG_LB)?;
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() };
        match prog.test_run(opts) {
            Ok(r) => {
                out.truncate(r.data_size_out as usize);
                Ok(Some((r.return_value, out)))
            }
            Err(_) if frame.len() < 14 => Ok(None),
            Err(e) => Err(e).with_context(|| format!("BPF_PROG_TEST_RUN of a {}-byte frame", frame.len())),
        }
    }

    fn counters(&self) -> Result<Counts> {
        let mut c = Counts::default();
        for i in 0..N {
            let per_cpu = self.dp.maps().reasons.get(&(i as u32), 0).context("reading REASONS")?;
            c.packets[i] = per_cpu.iter().map(|v| v.packets).sum();
            c.bytes[i] = per_cpu.iter().map(|v| v.bytes).sum();
        }
        Ok(c)
    }

    /// The kernel's reasons for one frame (run again, counters read around it).
    fn reasons_of(&self, frame: &[u8]) -> String {
        let moved = || -> Result<String> {
            let before = self.counters()?;
            self.run(frame)?;
            let d = self.counters()?.since(&before);
            Ok((0..N).filter(|&i| d.packets[i] > 0).map(|i| REASON_NAMES[i]).collect::<Vec<_>>().join(" + "))
        };
        moved().unwrap_or_else(|e| format!("(unknown: {e:#})"))
    }
}

fn settings() -> Result<(u64, usize)> {
    let seed = match std::env::var("LB_FUZZ_SEED") {
        Ok(s) => match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        }
        .with_context(|| format!("LB_FUZZ_SEED={s}"))?,
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
        }
    };
    let frames = match std::env::var("LB_FUZZ_FRAMES") {
        Ok(s) => s.replace('_', "").parse().with_context(|| format!("LB_FUZZ_FRAMES={s}"))?,
        Err(_) => 1_000_000,
    };
    Ok((seed, frames))
}

/// Where a frame comes from, for a failure message.
fn origin(seed: u64, index: usize, s: &Sample) -> String {
    let m = if s.mutated { ", mutated" } else { "" };
    format!("frame #{index} of LB_FUZZ_SEED={seed:#x} ({}{m}, {} bytes)", s.kind, s.frame.len())
}

fn expected_text(world: &World, e: &Expected) -> String {
    let mut t = format!("{} / {}", action_name(e.action()), REASON_NAMES[e.reason.0 as usize]);
    if let Some(f) = e.forward {
        let v = &world.vips[f.vip];
        t +=
            &format!(" (VIP {} port {} proto {}, client {} port {})", v.addr, v.port, v.proto, f.client, f.client_port);
    }
    t
}

/// A flow as the backend choice sees it: affinity VIPs choose by client address alone.
type FlowId = (usize, IpAddr, u16);

/// Checks one frame's action and output bytes; remembers each flow's backend.
fn check_frame(
    world: &World,
    e: &Expected,
    input: &[u8],
    action: u32,
    out: &[u8],
    flows: &mut HashMap<FlowId, [u8; 6]>,
) -> Result<()> {
    if action != e.action() {
        bail!("action {}", action_name(action));
    }
    let Some(f) = e.forward else {
        if out != input {
            bail!("a {} frame came back changed:\n{}", action_name(action), hex(out));
        }
        return Ok(());
    };
    if out.len() != input.len() || out[12..] != input[12..] || out[6..12] != LB_MAC {
        bail!("forwarded frame is not the input with new MACs:\n{}", hex(out));
    }
    let v = &world.vips[f.vip];
    let mac: [u8; 6] = out[..6].try_into()?;
    if !v.backends.iter().any(|(_, m)| *m == mac) {
        bail!("destination MAC {mac:02x?} is no backend of VIP {}:{}/{}", v.addr, v.port, v.proto);
    }
    let id = (f.vip, f.client, if v.affinity_s > 0 { 0 } else { f.client_port });
    let first = *flows.entry(id).or_insert(mac);
    if first != mac {
        bail!("flow {id:?} went to {first:02x?} before and to {mac:02x?} now");
    }
    Ok(())
}

/// After a chunk's counters disagreed: replays its frames one by one, counters read
/// around each, to name the first frame the kernel counts differently.
fn localize(h: &Harness, world: &World, seed: u64, chunk: &[(usize, Sample, Expected)], total: &str) -> anyhow::Error {
    let search = || -> Result<anyhow::Error> {
        let mut before = h.counters()?;
        for (index, s, e) in chunk {
            if h.run(&s.frame)?.is_none() {
                continue;
            }
            let after = h.counters()?;
            let mut want = Counts::default();
            want.count(world, e, s.frame.len());
            let diffs = want.diff(&after.since(&before));
            if !diffs.is_empty() {
                return Ok(anyhow!(
                    "counters of {}: {}\n  expected {}\n  frame:\n{}",
                    origin(seed, *index, s),
                    describe(&diffs),
                    expected_text(world, e),
                    hex(&s.frame)
                ));
            }
            before = after;
        }
        Ok(anyhow!("no single frame of the chunk differs when replayed"))
    };
    let found = search().unwrap_or_else(|e| e);
    anyhow!("counters over a chunk of {} frames disagree: {total}\n{found:#}", chunk.len())
}

#[test]
fn fuzz_frames_match_oracle() {
    if lb_tests::skip("fuzz_frames_match_oracle") {
        return;
    }
    if let Err(e) = fuzz() {
        panic!("{e:#}");
    }
}

fn fuzz() -> Result<()> {
    let (seed, frames) = settings()?;
    println!("fuzz: LB_FUZZ_SEED={seed:#x} LB_FUZZ_FRAMES={frames}");
    let world = World::standard();
    let h = Harness::new(&world)?;
    let mut gen = Gen::new(&world, seed);
    let mut flows = HashMap::new();
    let (mut oracle_total, mut kernel_total) = (Counts::default(), Counts::default());
    let (mut refused, mut mix) = (0u64, BTreeMap::<(&str, bool), u64>::new());
    let started = Instant::now();
    let mut index = 0;
    while index < frames {
        let n = CHUNK.min(frames - index);
        let mut chunk = Vec::with_capacity(n);
        let mut want = Counts::default();
        let before = h.counters()?;
        for _ in 0..n {
            let s = gen.next_sample();
            let e = oracle::expect(&world, &s.frame);
            *mix.entry((s.kind, s.mutated)).or_default() += 1;
            match h.run(&s.frame)? {
                None => refused += 1,
                Some((action, out)) => {
                    check_frame(&world, &e, &s.frame, action, &out, &mut flows).map_err(|err| {
                        anyhow!(
                            "{}: {err:#}\n  expected {}\n  kernel   {} / {}\n  frame:\n{}",
                            origin(seed, index, &s),
                            expected_text(&world, &e),
                            action_name(action),
                            h.reasons_of(&s.frame),
                            hex(&s.frame)
                        )
                    })?;
                    want.count(&world, &e, s.frame.len());
                }
            }
            chunk.push((index, s, e));
            index += 1;
        }
        let got = h.counters()?.since(&before);
        let diffs = want.diff(&got);
        if !diffs.is_empty() {
            return Err(localize(&h, &world, seed, &chunk, &describe(&diffs)));
        }
        oracle_total.add(&want);
        kernel_total.add(&got);
    }
    let elapsed = started.elapsed();
    report(&oracle_total, &kernel_total, &mix, refused, frames, elapsed, flows.len());
    check_totals(&kernel_total, frames as u64 - refused)
}

fn report(
    oracle: &Counts,
    kernel: &Counts,
    mix: &BTreeMap<(&str, bool), u64>,
    refused: u64,
    frames: usize,
    elapsed: std::time::Duration,
    flows: usize,
) {
    let rate = frames as f64 / elapsed.as_secs_f64();
    let secs = elapsed.as_secs_f64();
    println!("fuzz: {frames} frames in {secs:.1} s ({rate:.0} frames/s); {flows} flows forwarded");
    println!("fuzz: {refused} frames shorter than 14 bytes refused by BPF_PROG_TEST_RUN (not run)");
    println!("{:<20} {:>10} {:>10}", "reason", "oracle", "kernel");
    for (i, name) in REASON_NAMES.iter().enumerate() {
        let predicted = i < VERDICTS || CHECKED_NOTES.iter().any(|r| r.0 as usize == i);
        let o = if predicted { oracle.packets[i].to_string() } else { "-".into() };
        println!("{name:<20} {o:>10} {:>10}", kernel.packets[i]);
    }
    let mix: Vec<String> = mix.iter().map(|((k, m), n)| format!("{k}{}={n}", if *m { "+mut" } else { "" })).collect();
    println!("mix: {}", mix.join(" "));
}

fn check_totals(kernel: &Counts, run: u64) -> Result<()> {
    let verdicts: u64 = kernel.packets[..VERDICTS].iter().sum();
    if verdicts != run {
        bail!("verdict counters sum to {verdicts}, {run} frames were run");
    }
    let rare = [Reason::DROP_BACKEND_GONE.0 as usize, Reason::DROP_TABLE.0 as usize];
    let missing: Vec<&str> =
        (0..VERDICTS).filter(|i| !rare.contains(i) && kernel.packets[*i] == 0).map(|i| REASON_NAMES[i]).collect();
    if !missing.is_empty() {
        bail!("verdict reasons never hit: {missing:?} (a bigger LB_FUZZ_FRAMES, or a generator gap)");
    }
    if kernel.packets[Reason::NOTE_FLOW_PINNED.0 as usize] > kernel.packets[Reason::NOTE_FLOW_LOOKUP.0 as usize] {
        bail!("more flow pins than flow-table look-ups");
    }
    Ok(())
}
