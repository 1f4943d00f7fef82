//! The harness: the XDP program loaded and programmed through `XdpDataplane::apply`
//! (one IPv4 TCP VIP with ten backends), frames picked with `lb_agent::dataplane::xdp::explain`, and
//! BPF_PROG_TEST_RUN calls whose verdict and counters are checked, so a figure is only
//! reported for the path it names (e.g. "changed slot" really consulted the flow table).

use std::net::IpAddr;

use anyhow::{ensure, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use lb_agent::dataplane::xdp::explain::{explain, Explanation, Query, Reason};
use lb_agent::dataplane::xdp::loader::{self, LoadOptions, PROG_LB};
use lb_agent::dataplane::xdp::XdpDataplane;
use lb_agent::dataplane::{Dataplane, SnapBackend, SnapVip, Snapshot};
use lb_agent::model::{Protocol, Vip};
use lb_common::stats::{REASON_COUNT, REASON_NAMES};
use lb_tests::frames::{Frame, LB_MAC, SYN, TCP};

pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
const SEED: u32 = 0x00be_4c42;
pub const TABLE_SIZE: u32 = 65_536;
/// The table the VIP gets for its backends.
pub const VIP_TABLE: u32 = lb_common::table_size_for(BACKENDS as u32, TABLE_SIZE);
pub const BACKENDS: u8 = 10;
const WEIGHT: u32 = 10;
const VIP_ADDR: [u8; 4] = [192, 0, 2, 10];
pub const VIP_PORT: u16 = 80;
/// Client networks 198.18.0.0/16 (the established flows) and 198.19.0.0/16 (the SYNs).
pub const NET_ESTABLISHED: u8 = 18;
pub const NET_NEW: u8 = 19;

/// What each run of a frame must do: its verdict, and the counters it moves by one.
pub struct Expect {
    pub verdict: u32,
    pub counters: &'static [u32],
}

/// The loaded program with its data plane.
pub struct Bench {
    ebpf: Ebpf,
    dp: XdpDataplane,
    pub vip: Vip,
}

impl Bench {
    pub fn new() -> Result<Bench> {
        let opts = LoadOptions {
            table_size: TABLE_SIZE,
            max_vips: 2,
            max_backends: 64,
            max_flows: 262_144,
            hash_seed: SEED,
            lb_mac: LB_MAC,
            flow_idle_ns: 120_000_000_000,
        };
        let loader::Loaded { ebpf, maps, .. } = loader::load(&opts).context("loading the XDP object")?;
        let dp = XdpDataplane::new(maps, &opts);
        let mut bench = Bench { ebpf, dp, vip: vip() };
        bench.set_first_weight(WEIGHT)?;
        Ok(bench)
    }

    pub fn set_first_weight(&mut self, first: u32) -> Result<()> {
        let backends = (0..BACKENDS)
            .map(|i| {
                let weight = if i == 0 { first } else { WEIGHT };
                let mac = [0x02, 0xbe, 0, 0, 0, i + 1];
                SnapBackend::steady(IpAddr::from([10, 0, 0, i + 1]), weight, Some(mac))
            })
            .collect();
        let mut snap = Snapshot::default();
        let vip = SnapVip { backends, ..SnapVip::default() };
        snap.vips.insert(self.vip, vip);
        self.dp.apply(&snap).context("applying the benchmark VIP")?;
        Ok(())
    }

    pub fn changed_slots(&self) -> Result<usize> {
        let meta = self.dp.maps().vips.get(&self.vip.key(), 0)?;
        let live = self.dp.maps().tables.read(&meta, meta.half)?;
        Ok(live.iter().filter(|e| e.backend != e.prev).count())
    }

    pub fn prog(&self, name: &'static str) -> Result<&Xdp> {
        Ok(loader::program(&self.ebpf, name)?)
    }

    fn explain(&self, f: &Frame) -> Result<Explanation> {
        let q = Query { src: f.src, src_port: f.sport, vip: self.vip, syn: f.tcp_flags == SYN };
        Ok(explain(self.dp.maps(), SEED, &q)?)
    }

    /// The first `n` flows of client network `net` whose packet with `flags` the
    /// kernel will handle for `want` (as `explain` predicts).
    pub fn pick(&self, net: u8, flags: u8, want: Reason, n: usize) -> Result<Vec<Frame>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..(1u32 << 22) {
            if out.len() == n {
                break;
            }
            let f = flow(net, i, flags);
            if self.explain(&f)?.reason == want {
                out.push(f);
            }
        }
        ensure!(out.len() == n, "only {} of {n} flows give {want:?}", out.len());
        Ok(out)
    }

    /// Runs `f` once: it must go to the backend `explain` predicts, and be explained
    /// as `after` once it has run (a flow in a changed slot gets pinned).
    pub fn check_forwarded(&self, f: &Frame, after: Reason) -> Result<()> {
        let want = self.explain(f)?.backend.context("explain predicts no backend")?.mac;
        let input = f.bytes();
        let mut out = vec![0u8; input.len()];
        let opts = TestRunOptions { data_in: Some(&input), data_out: Some(&mut out), ..Default::default() };
        let r = self.prog(PROG_LB)?.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        ensure!(r.return_value == XDP_TX, "{}:{}: verdict {}", f.src, f.sport, r.return_value);
        ensure!(out[..6] == want, "{}:{}: not sent to the predicted backend", f.src, f.sport);
        let got = self.explain(f)?.reason;
        ensure!(got == after, "{}:{}: explained as {got:?} after its first packet", f.src, f.sport);
        Ok(())
    }

    fn counters(&self) -> Result<Vec<u64>> {
        let m = &self.dp.maps().reasons;
        (0..REASON_COUNT).map(|i| Ok(lb_agent::dataplane::xdp::counters::read(m, i)?.packets)).collect()
    }

    /// Runs `body`, which sends `packets` packets, and checks that exactly `want`'s
    /// counters moved, each by `packets`.
    pub fn checked<T>(&self, want: &Expect, packets: u64, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let before = self.counters()?;
        let out = body()?;
        let after = self.counters()?;
        for i in 0..REASON_COUNT {
            let moved = after[i as usize] - before[i as usize];
            let expected = if want.counters.contains(&i) { packets } else { 0 };
            ensure!(moved == expected, "counter {} moved by {moved}, expected {expected}", REASON_NAMES[i as usize]);
        }
        Ok(out)
    }
}

/// The benchmark's VIP.
pub fn vip() -> Vip {
    Vip { addr: IpAddr::from(VIP_ADDR), port: VIP_PORT, proto: Protocol::Tcp }
}

/// Flow `i` of client network 198.`net`.0.0/16 to the VIP: a distinct source address
/// (and, past 65,536 flows, port) for every `i`.
pub fn flow(net: u8, i: u32, flags: u8) -> Frame {
    let src = IpAddr::from([198, net, (i >> 8) as u8, i as u8]);
    let sport = 10_000 + (i >> 16) as u16;
    Frame { tcp_flags: flags, ..Frame::new(src, IpAddr::from(VIP_ADDR), TCP, sport, VIP_PORT) }
}

/// One BPF_PROG_TEST_RUN call of `repeat` runs; returns the kernel-reported ns per run.
pub fn call(prog: &Xdp, frame: &[u8], repeat: u32, verdict: u32) -> Result<f64> {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    ensure!(r.return_value == verdict, "verdict {}, expected {verdict}", r.return_value);
    Ok(r.duration.as_nanos() as f64)
}
