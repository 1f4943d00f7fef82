//! Flood isolation: a SYN flood of single-packet flows at VIP A while VIP B's table
//! changes, through the real `lb-agent` in native XDP between namespaces. B's long-lived
//! connections depend on their flow-table pins (every change puts slots of B in
//! transition); the flood writes a new-flow entry per SYN (A's slots are in transition
//! too). The question: does the flood cost B any established connection?

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_agent::config::XdpModeChoice;
use lb_agent::model::{Protocol, Vip};
use lb_common::stats::{Reason, REASON_COUNT};
use lb_common::{FlowKey, FlowValue, BACKEND_F_ACTIVE, MAP_FLOWS, MAP_FLOWS_NEW};
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, VIP4};
use lb_tests::netns::ip;
use lb_tests::servers::{start_backend, TCP_PORT};
use lb_tests::traffic::{wait_for, Background};

use crate::flood_gen::{self, Forwarded, Generator, Sent, Target};
use crate::section::{date, loadavg, online_cpus};
use crate::stats::Summary;

/// VIP A (flooded) is `VIP4:A_PORT/tcp`; VIP B is `VIP4:TCP_PORT/tcp`.
pub const A_PORT: u16 = 8443;
/// Long-lived connections to B, each echoing a line every `ECHO_EVERY`.
pub const CONNS: usize = 200;
pub const ECHO_EVERY: Duration = Duration::from_millis(100);
/// A change of B's table every `CHANGE_EVERY` during the flood.
pub const CHANGE_EVERY: Duration = Duration::from_secs(2);
/// B's connections keep echoing this long after the flood (late breakage shows).
pub const AFTER: Duration = Duration::from_secs(2);
pub const TARGET_MPPS: f64 = 1.0;
/// The first, shorter flood: from the client's veth, through the bridge (no changes).
pub const BRIDGE_FLOOD: Duration = Duration::from_secs(4);
/// Lab backends 0–3 serve B (3 is added during the flood); 4 and 5 take A's flood.
pub const SINKS: [usize; 2] = [4, 5];
const BACKENDS: usize = 6;
/// A's backends: first only sink 4; then sink 5 at weight 9 takes most slots, which
/// leaves ~90 % of A's slots in transition: a SYN there writes a new-flow entry.
const A_START: &[(usize, u32)] = &[(4, 1)];
const A_FLOOD: &[(usize, u32)] = &[(4, 1), (5, 9)];
/// B's backends (lab index, weight): the start, then one change per step.
const B_STEPS: [&[(usize, u32)]; 10] = [
    &[(0, 1), (1, 1), (2, 1)],
    &[(0, 3), (1, 1), (2, 1)],
    &[(0, 3), (1, 1), (2, 1), (3, 2)],
    &[(0, 1), (1, 1), (2, 1), (3, 2)],
    &[(0, 1), (1, 3), (2, 1), (3, 2)],
    &[(0, 1), (1, 3), (2, 1), (3, 4)],
    &[(0, 4), (1, 3), (2, 1), (3, 4)],
    &[(0, 4), (1, 3), (2, 3), (3, 4)],
    &[(0, 4), (1, 1), (2, 3), (3, 4)],
    &[(0, 4), (1, 1), (2, 3), (3, 1)],
];

/// Entries of a flow table: all, and those of VIP B.
#[derive(Clone, Copy, Debug, Default)]
pub struct Occupancy {
    pub entries: usize,
    pub of_b: usize,
    pub capacity: u32,
}

/// Why B's connections were lost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Losses {
    /// An echo from another backend, or a reset (another backend's answer to a packet
    /// of a connection it does not know): the flow tables failed the connection.
    pub moved: u64,
    /// No echo within the read timeout: its packets were lost on the way.
    pub timed_out: u64,
    pub other: u64,
}

impl Losses {
    fn of(errors: &[String]) -> Losses {
        let mut l = Losses::default();
        for e in errors {
            if e.contains("expected") || e.contains("reset") {
                l.moved += 1;
            } else if e.contains("os error 11") || e.contains("timed out") {
                l.timed_out += 1;
            } else {
                l.other += 1;
            }
        }
        l
    }
}

/// One flood.
pub struct Phase {
    pub sent: Sent,
    /// Wall time from the first counter reading to the last, during the flood.
    pub secs: f64,
    /// Deltas of every REASONS counter over `secs` (index = reason).
    pub counters: Vec<u64>,
    /// `tx` per second, one sample a second.
    pub tx_per_s: Summary,
    /// B's table changes applied during the flood (each confirmed in `BACKENDS`).
    pub changes: usize,
}

impl Phase {
    /// Packets per second counted for `reason`.
    pub fn rate(&self, reason: Reason) -> f64 {
        self.counters[reason.0 as usize] as f64 / self.secs
    }

    /// Frames per second the generator sent.
    pub fn generated(&self) -> f64 {
        self.sent.frames as f64 / self.sent.secs
    }

    /// Runs of the generator per second (sent or not).
    pub fn runs(&self) -> f64 {
        self.sent.runs as f64 / self.sent.secs
    }
}

pub struct Flood {
    pub date: String,
    pub load: String,
    pub cpus: i64,
    pub quick: bool,
    /// From the client's veth through the bridge, B's table unchanged.
    pub bridge: Phase,
    /// From the LB's bridge port, while B's table changes: the measurement.
    pub main: Phase,
    pub conns: usize,
    pub echoes: u64,
    pub lost: u64,
    pub losses: Losses,
    pub errors: Vec<String>,
    pub flows_new: Occupancy,
    pub flows: Occupancy,
}

fn vip_line(port: u16, backends: &[(usize, u32)]) -> String {
    let mut out = format!("[[vip]]\naddress = \"{VIP4}:{port}/tcp\"\n");
    for (i, w) in backends {
        let addr = backend_addrs(*i).0;
        out += &format!("[[vip.backend]]\naddress = \"{addr}\"\nweight = {w}\nstart_progress = 100\n");
    }
    out
}

fn config(a: &[(usize, u32)], b: &[(usize, u32)]) -> String {
    vip_line(A_PORT, a) + &vip_line(TCP_PORT, b)
}

fn vip(port: u16) -> Vip {
    Vip { addr: VIP4.parse().expect("VIP4 is an address"), port, proto: Protocol::Tcp }
}

/// Whether `BACKENDS` holds exactly these weights for these backends, all active.
fn applied(maps: &PinnedMaps, backends: &[(usize, u32)]) -> Result<bool> {
    for (i, w) in backends {
        match maps.backend_by_addr(backend_addrs(*i).0)? {
            Some(b) if b.flags & BACKEND_F_ACTIVE != 0 && b.weight == *w => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn reload(agent: &Agent, maps: &PinnedMaps, a: &[(usize, u32)], b: &[(usize, u32)]) -> Result<()> {
    agent.reload(&config(a, b))?;
    wait_for("the agent to apply a change", Duration::from_secs(10), || applied(maps, a).and(applied(maps, b)))
}

fn counters(maps: &PinnedMaps) -> Result<Vec<u64>> {
    (0..REASON_COUNT).map(|i| maps.reason(i)).collect()
}

/// The MAC of `eth0` in `ns`.
fn mac(ns: &str) -> Result<[u8; 6]> {
    let out = ip(ns, &["-br", "link", "show", "eth0"])?;
    let text = out.split_whitespace().nth(2).context("no MAC in `ip -br link`")?;
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text}"))
}

/// Counts the entries of a pinned flow table, and those of VIP id `b_id`.
fn occupancy(agent: &Agent, name: &str, b_id: u32) -> Result<Occupancy> {
    let path = lb_agent::dataplane::xdp::loader::maps_dir(&agent.pin_dir).join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("pinned map {name}"))?;
    let capacity = data.info()?.max_entries();
    let keys: Vec<FlowKey> = if name == MAP_FLOWS_NEW {
        // Direct-mapped, each pin in two slots: count distinct keys.
        let pins = lb_agent::dataplane::xdp::pins::NewPins::new(data, capacity);
        let mut keys: Vec<FlowKey> = pins.all()?.into_iter().map(|(k, _)| k).collect();
        keys.sort_by_key(|k| (k.src_addr, k.vip_id, k.src_port_be));
        keys.dedup();
        keys
    } else {
        let map: HashMap<MapData, FlowKey, FlowValue> = Map::LruHashMap(data).try_into()?;
        map.keys().collect::<Result<_, _>>()?
    };
    let of_b = keys.iter().filter(|k| k.vip_id == b_id).count();
    Ok(Occupancy { capacity, entries: keys.len(), of_b })
}

/// Runs the whole scenario; everything it creates is removed when it returns.
pub fn measure(quick: bool) -> Result<Flood> {
    let obj = flood_gen::compile()?;
    let (date, load) = (date(), loadavg());
    // Everything of the lab runs on one CPU: the threads (servers, connections, the
    // generator) and the agent inherit this pin, and a veth's receive work runs on the
    // CPU that woke it, so the generator's frames are handled before it makes more. With
    // B's traffic woken on another CPU, the balancer's receive queue was often run there
    // late, and the generator's frames overflowed its ring meanwhile.
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).context("sched_getcpu")?;
    let pinned = flood_gen::affinity()?;
    flood_gen::set_affinity(&flood_gen::one_cpu(cpu))?;
    let result = run(quick, &obj, cpu, date, load);
    flood_gen::set_affinity(&pinned)?;
    result
}

/// The lab with the flood's programs attached (detached when dropped), and the agent.
struct Built {
    agent: Agent,
    _xdp: Vec<aya::Ebpf>,
    lab: Lab,
}

fn build(obj: &Arc<Vec<u8>>) -> Result<Built> {
    // `Generic` only keeps the lab from putting its pass-through program on the LB's
    // bridge port: `flood_peer` goes there instead (it drops the forwarded flood before
    // the bridge, passes the rest); the agent itself runs in native mode.
    let lab = Lab::new("fl", BACKENDS, XdpModeChoice::Generic)?;
    for i in 0..SINKS[0] {
        start_backend(&lab, i)?;
    }
    let sw = lab.ns("sw");
    let mut xdp = vec![flood_gen::attach(obj, &sw, "lb", flood_gen::PEER, A_PORT)?];
    // The client's bridge port takes the generator's XDP frames only with a program of
    // its own; A's backends drop whatever of the flood would still reach them.
    xdp.push(flood_gen::attach(obj, &sw, "cl", flood_gen::PASS, 0)?);
    for i in SINKS {
        xdp.push(flood_gen::attach(obj, &lab.backend(i), "eth0", flood_gen::SINK, 0)?);
    }
    let mut agent = Agent::start(&lab, &config(A_START, B_STEPS[0]), &["--xdp-mode", "native"])?;
    agent.wait_programmed(2, A_START.len() + B_STEPS[0].len())?;
    Ok(Built { agent, _xdp: xdp, lab })
}

fn run(quick: bool, obj: &Arc<Vec<u8>>, cpu: usize, date: String, load: String) -> Result<Flood> {
    let duration = Duration::from_secs(if quick { 8 } else { 20 });
    let Built { agent, _xdp, lab } = build(obj)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    reload(&agent, &maps, A_FLOOD, B_STEPS[0])?;
    let b_id = maps.vips.get(&vip(TCP_PORT).key(), 0).context("VIP B is not in VIPS")?.id;

    let b_sock = SocketAddr::new(IpAddr::from(VIP4.parse::<Ipv4Addr>()?), TCP_PORT);
    let streams = Background::streams(&lab, b_sock, CONNS, ECHO_EVERY)?;
    std::thread::sleep(Duration::from_secs(1));

    let target = Target { dst_mac: mac(&lab.lb())?, src_mac: mac(&lab.client())?, vip: VIP4.parse()?, port: A_PORT };
    let flooder = Flooder { obj, target, cpu, agent: &agent, maps: &maps };
    eprintln!("lb-bench: flood: from the client's veth, through the bridge");
    let bridge = flooder.phase((&lab.client(), "eth0"), BRIDGE_FLOOD, false)?;
    eprintln!("lb-bench: flood: from the LB's bridge port, while B's table changes");
    let main = flooder.phase((&lab.ns("sw"), "lb"), duration, true)?;
    let (flows_new, flows) = (occupancy(&agent, MAP_FLOWS_NEW, b_id)?, occupancy(&agent, MAP_FLOWS, b_id)?);

    std::thread::sleep(AFTER);
    let tally = streams.finish()?;
    // The agent's config and log are kept only when the run fails.
    let agent_dir = agent.config.parent().map(std::path::Path::to_path_buf);
    drop(agent);
    drop(_xdp);
    drop(lab);
    if let Some(dir) = agent_dir {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(Flood {
        date,
        load,
        cpus: online_cpus(),
        quick,
        bridge,
        main,
        conns: CONNS,
        echoes: tally.ok,
        lost: tally.failed,
        losses: Losses::of(&tally.errors),
        errors: tally.errors.into_iter().take(5).collect(),
        flows_new,
        flows,
    })
}

/// What every flood shares.
struct Flooder<'a> {
    obj: &'a Arc<Vec<u8>>,
    target: Target,
    cpu: usize,
    agent: &'a Agent,
    maps: &'a PinnedMaps,
}

impl Flooder<'_> {
    /// One flood from `at` (namespace, interface) for `duration`, B's table changing if
    /// `change`.
    fn phase(&self, at: (&str, &'static str), duration: Duration, change: bool) -> Result<Phase> {
        let feedback = PinnedMaps::open(&self.agent.pin_dir)?;
        let forwarded: Forwarded = Box::new(move || feedback.reason(Reason::TX.0));
        let generator = Generator::start(self.obj, at, self.target, self.cpu, forwarded)?;
        let measured = during(self.agent, self.maps, duration, change);
        let sent = generator.finish()?;
        let (first, last, secs, per_s, changes) = measured?;
        let counters = last.iter().zip(&first).map(|(e, s)| e - s).collect();
        Ok(Phase { sent, secs, counters, tx_per_s: Summary::of(&per_s), changes })
    }
}

type During = (Vec<u64>, Vec<u64>, f64, Vec<f64>, usize);

/// While the generator runs: counters read once a second and, if `change`, one change
/// of B's table every `CHANGE_EVERY`. Returns the first and last readings, the time
/// between them, the `tx` rate of each second and the number of changes.
fn during(agent: &Agent, maps: &PinnedMaps, duration: Duration, change: bool) -> Result<During> {
    // Let the generator reach its pace before the first reading.
    std::thread::sleep(Duration::from_millis(500));
    let first = counters(maps)?;
    let start = Instant::now();
    let (mut last, mut last_at) = (first.clone(), start);
    let (mut per_s, mut changes) = (vec![], 0);
    let tx = Reason::TX.0 as usize;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).saturating_sub(last_at.elapsed()));
        let (now, at) = (counters(maps)?, Instant::now());
        per_s.push((now[tx] - last[tx]) as f64 / at.duration_since(last_at).as_secs_f64());
        (last, last_at) = (now, at);
        let due = (start.elapsed().as_secs_f64() / CHANGE_EVERY.as_secs_f64()) as usize;
        if change && due > changes && changes + 1 < B_STEPS.len() && start.elapsed() + Duration::from_secs(1) < duration
        {
            changes += 1;
            reload(agent, maps, A_FLOOD, B_STEPS[changes]).with_context(|| format!("change {changes} of B"))?;
        }
    }
    ensure!(!change || changes > 0, "no change of B's table during the flood");
    let secs = last_at.duration_since(start).as_secs_f64();
    Ok((first, last, secs, per_s, changes))
}

#[cfg(test)]
mod tests {
    use super::Losses;

    #[test]
    fn losses_are_told_apart() {
        let errors: Vec<String> = [
            "stream to b0: echo \"b1:tick\\n\", expected \"b0:tick\" (connection moved or broke)",
            "stream to b1: read echo: Connection reset by peer (os error 104)",
            "stream to b2: read echo: Resource temporarily unavailable (os error 11)",
            "stream to b2: write: Broken pipe (os error 32)",
        ]
        .map(String::from)
        .into();
        let l = Losses::of(&errors);
        assert_eq!((l.moved, l.timed_out, l.other), (2, 1, 1));
    }
}
