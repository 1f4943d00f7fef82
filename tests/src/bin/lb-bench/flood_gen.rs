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

use anyhow::{bail, ensure, Context, Result};
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
/// Frames per BPF_PROG_TEST_RUN call. Each call sets up and tears down its own page
/// pool, which costs ~25 ms here: calls must be long (this one ~0.25 s at 1 Mpps), so
/// the generator cannot be paced finer than that; it runs flat out.
pub const CHUNK: u32 = 1 << 18;
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

/// What the generator sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub frames: u64,
    pub secs: f64,
    pub cpu: usize,
}

/// A generator thread: in namespace `ns`, pinned to `cpu`, it runs the generator with
/// live frames injected as received on `iface` (so XDP_TX sends them out of it) until
/// it is finished.
pub struct Generator {
    handle: JoinHandle<std::io::Result<Result<Sent>>>,
    stop: Arc<AtomicBool>,
}

impl Generator {
    pub fn start(obj: &Arc<Vec<u8>>, at: (&str, &'static str), target: Target, cpu: usize) -> Result<Generator> {
        let (obj, stop) = (obj.clone(), Arc::new(AtomicBool::new(false)));
        let s = stop.clone();
        let handle = spawn_in(at.0, move || generate(&obj, at.1, &target, cpu, &s))?;
        Ok(Generator { handle, stop })
    }

    pub fn finish(self) -> Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??
    }
}

fn generate(obj: &[u8], iface: &str, target: &Target, cpu: usize, stop: &AtomicBool) -> Result<Sent> {
    pin_thread(cpu)?;
    let ebpf = load(obj, Some(target), 0, GENERATOR)?;
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
    let mut frames = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: CHUNK,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        };
        prog.test_run(opts).context("BPF_PROG_TEST_RUN with live frames")?;
        frames += u64::from(CHUNK);
    }
    Ok(Sent { frames, secs: start.elapsed().as_secs_f64(), cpu })
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

/// Every online CPU.
pub fn all_cpus(n: usize) -> libc::cpu_set_t {
    // SAFETY: CPU_SET on a zeroed set, within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (0..n.min(libc::CPU_SETSIZE as usize)).for_each(|c| libc::CPU_SET(c, &mut set));
        set
    }
}

fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: CPU_SET on a zeroed set, within its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("CPU {cpu} out of range");
        }
        libc::CPU_SET(cpu, &mut set);
        set
    };
    set_affinity(&set)
}
