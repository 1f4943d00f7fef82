//! The flood's BPF side: `tests/bpf/flood.c`, compiled with clang when the benchmark
//! runs (it is no part of the balancer's object), its generator run through
//! BPF_PROG_TEST_RUN in live-frames mode, and its sink and pass-through programs
//! attached to veths of the lab.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use aya::maps::{Array, MapData};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

use lb_tests::netns::{run_in, spawn_in};

pub const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/flood.c");
/// The generator: writes a SYN from a random source to the VIP, returns XDP_TX.
const GENERATOR: &str = "flood_syn";
/// Drops the flood (IPv4 TCP to one port), passes the rest.
pub const PEER: &str = "flood_peer";
/// Drops everything but ARP.
pub const SINK: &str = "flood_sink";
/// XDP_PASS.
pub const PASS: &str = "flood_pass";
/// Frames per batch of the live-frames loop: the kernel's default (NAPI_POLL_WEIGHT),
/// well under the veth ring of 256 frames that each batch is flushed into.
pub const BATCH: u32 = 64;
/// Runs of the generator per BPF_PROG_TEST_RUN call. Each call sets up and tears down
/// its own page pool, ~25 ms here: calls must be long, and the rate is set inside the
/// program instead (`FLOOD_KEEP`).
pub const CHUNK: u32 = 1 << 17;
/// The generator's map: how many of every `KEEP_ALL` runs send a frame.
const KEEP_MAP: &str = "FLOOD_KEEP";
pub const KEEP_ALL: u32 = 1 << 16;
/// The pace: between calls, the share kept goes up by `UP` if the balancer forwarded at
/// least `DELIVERED` of the frames sent during the call, down by `DOWN` otherwise.
pub const DELIVERED: f64 = 0.97;
pub const UP: f64 = 1.1;
pub const DOWN: f64 = 0.8;
const KEEP_START: u32 = KEEP_ALL / 4;
const KEEP_MIN: u32 = 64;
/// Ethernet + IPv4 + TCP (54 bytes), padded to the Ethernet minimum.
pub const FRAME_LEN: usize = 60;

/// Why the flood cannot be generated on this machine, if it cannot.
pub fn unavailable() -> Option<String> {
    match Command::new("clang").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("clang is not installed (it builds the flood generator, tests/bpf/flood.c)".into()),
    }
}

/// Compiles `flood.c` and returns the object.
pub fn compile() -> Result<Arc<Vec<u8>>> {
    let out = std::env::temp_dir().join(format!("lb-bench-flood-{}.o", std::process::id()));
    // linux/bpf.h includes asm/types.h, which Debian keeps in the multiarch directory.
    let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new("clang")
        .args(["-O2", "-g", "-Wall", "-target", "bpf", &multiarch, "-c", SOURCE, "-o"])
        .arg(&out)
        .status()
        .context("running clang")?;
    ensure!(status.success(), "clang failed to compile {SOURCE} ({status})");
    let obj = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    std::fs::remove_file(&out)?;
    Ok(Arc::new(obj))
}

/// Where the generated SYNs go.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The balancer's MAC.
    pub dst_mac: [u8; 6],
    /// The client's MAC (the frames' source, as if the client had sent them).
    pub src_mac: [u8; 6],
    pub vip: Ipv4Addr,
    pub port: u16,
}

fn load(obj: &[u8], target: Option<&Target>, drop_port: u16, prog: &str) -> Result<Ebpf> {
    let addr = target.map(|t| u32::from_ne_bytes(t.vip.octets()));
    let port = target.map(|t| t.port.to_be());
    let drop_port_be = drop_port.to_be();
    let mut loader = EbpfLoader::new();
    loader.override_global("drop_port_be", &drop_port_be, true);
    if let (Some(t), Some(addr), Some(port)) = (target, &addr, &port) {
        loader
            .override_global("dst_mac", &t.dst_mac, true)
            .override_global("src_mac", &t.src_mac, true)
            .override_global("vip_addr_be", addr, true)
            .override_global("vip_port_be", port, true);
    }
    let mut ebpf = loader.load(obj).context("loading the flood object")?;
    let p: &mut Xdp = ebpf.program_mut(prog).with_context(|| format!("no program {prog}"))?.try_into()?;
    p.load().with_context(|| format!("loading program {prog}"))?;
    Ok(ebpf)
}

/// Attaches `prog` to `iface` of namespace `ns` in native mode; detached when the
/// returned object is dropped (or the interface removed). `drop_port`: `flood_peer`'s.
pub fn attach(obj: &Arc<Vec<u8>>, ns: &str, iface: &'static str, prog: &'static str, drop_port: u16) -> Result<Ebpf> {
    let (obj, ns_owned) = (obj.clone(), ns.to_string());
    run_in(ns, move || -> Result<Ebpf> {
        let mut ebpf = load(&obj, None, drop_port, prog)?;
        let p: &mut Xdp = ebpf.program_mut(prog).context("program vanished")?.try_into()?;
        p.attach(iface, XdpMode::Driver).with_context(|| format!("native XDP {prog} on {iface} in {ns_owned}"))?;
        Ok(ebpf)
    })?
}

/// What the generator did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Runs of the generator.
    pub runs: u64,
    /// Frames it sent (the runs it kept), expected value.
    pub frames: u64,
    pub secs: f64,
    pub cpu: usize,
}

/// A generator thread: in namespace `ns`, on the CPU its creator is pinned to (`cpu`,
/// recorded only), it runs the generator with
/// live frames injected as received on `iface` (so XDP_TX sends them out of it) until
/// it is finished, at the pace the balancer forwards (see `Pace`).
pub struct Generator {
    handle: JoinHandle<std::io::Result<Result<Sent>>>,
    stop: Arc<AtomicBool>,
}

impl Generator {
    /// `forwarded` reads the balancer's `tx` counter.
    pub fn start(
        obj: &Arc<Vec<u8>>,
        at: (&str, &'static str),
        target: Target,
        cpu: usize,
        forwarded: Forwarded,
    ) -> Result<Generator> {
        let (obj, stop) = (obj.clone(), Arc::new(AtomicBool::new(false)));
        let s = stop.clone();
        let handle = spawn_in(at.0, move || generate(&obj, at.1, &target, cpu, &s, forwarded))?;
        Ok(Generator { handle, stop })
    }

    pub fn finish(self) -> Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??
    }
}

/// Reads how many packets the balancer has forwarded so far.
pub type Forwarded = Box<dyn FnMut() -> Result<u64> + Send>;

fn generate(
    obj: &[u8],
    iface: &str,
    target: &Target,
    cpu: usize,
    stop: &AtomicBool,
    forwarded: Forwarded,
) -> Result<Sent> {
    let mut ebpf = load(obj, Some(target), 0, GENERATOR)?;
    let mut keep: Array<MapData, u32> = ebpf.take_map(KEEP_MAP).context("no FLOOD_KEEP map")?.try_into()?;
    let prog: &Xdp = ebpf.program(GENERATOR).context("no generator")?.try_into()?;
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no {iface} in the generator's namespace");
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex.
    let md = [0, FRAME_LEN as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let frame = [0u8; FRAME_LEN];
    let start = Instant::now();
    let (mut runs, mut frames) = (0u64, 0u64);
    let mut pace = Pace::new(forwarded)?;
    while !stop.load(Ordering::Relaxed) {
        keep.set(0, pace.keep, 0).context("setting FLOOD_KEEP")?;
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: CHUNK,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        };
        prog.test_run(opts).context("BPF_PROG_TEST_RUN with live frames")?;
        let sent = u64::from(CHUNK) * u64::from(pace.keep) / u64::from(KEEP_ALL);
        (runs, frames) = (runs + u64::from(CHUNK), frames + sent);
        pace.adjust(sent)?;
    }
    Ok(Sent { runs, frames, secs: start.elapsed().as_secs_f64(), cpu })
}

/// Keeps the flood at what the balancer forwards (multiplicative increase and decrease
/// on its `tx` counter, once per call): frames beyond that would only overflow the
/// balancer's receive ring, which every other packet to it shares (B's too), so the
/// figure would measure a full queue rather than the balancer.
struct Pace {
    forwarded: Forwarded,
    last: u64,
    keep: u32,
}

impl Pace {
    fn new(mut forwarded: Forwarded) -> Result<Pace> {
        Ok(Pace { last: forwarded()?, forwarded, keep: KEEP_START })
    }

    /// `sent` frames went out during the last call.
    fn adjust(&mut self, sent: u64) -> Result<()> {
        let now = (self.forwarded)()?;
        let share = (now - self.last) as f64 / sent.max(1) as f64;
        self.last = now;
        let factor = if share >= DELIVERED { UP } else { DOWN };
        self.keep = ((f64::from(self.keep) * factor) as u32).clamp(KEEP_MIN, KEEP_ALL);
        Ok(())
    }
}

/// The CPUs this thread may run on.
pub fn affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t filled by the kernel, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        Ok(set)
    }
}

/// Sets this thread's CPUs (threads it spawns later inherit them).
pub fn set_affinity(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: a valid cpu_set_t passed with its size.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

/// The set of CPU `cpu` alone.
pub fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: CPU_SET on a zeroed set; `cpu` comes from sched_getcpu, within the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}
