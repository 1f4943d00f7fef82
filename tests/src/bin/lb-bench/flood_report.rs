//! The flood-isolation benchmark as its own section of BENCHMARKS.md.

use std::fmt::Write;

use lb_common::stats::{Reason, REASON_NAMES, VERDICT_COUNT};

use crate::flood::{
    Flood, Occupancy, Phase, AFTER, A_PORT, BRIDGE_FLOOD, CHANGE_EVERY, CONNS, ECHO_EVERY, SINKS, TARGET_MPPS,
};
use crate::flood_gen::{BATCH, CHUNK, DELIVERED, DOWN, FRAME_LEN, UP};
use crate::section::{count, splice as splice_at, targets};

pub const HEADING: &str = "## Flood isolation";

fn mpps(per_s: f64) -> String {
    format!("{:.2} Mpps", per_s / 1e6)
}

/// (target, met) lines, for the terminal and the section.
pub fn verdicts(f: &Flood) -> Vec<(String, bool)> {
    let tx = f.main.rate(Reason::TX);
    vec![
        (
            format!("SYN flood at VIP A ≥ {TARGET_MPPS} Mpps handled by the balancer: {}", mpps(tx)),
            tx >= TARGET_MPPS * 1e6,
        ),
        (
            format!(
                "0 established connections of VIP B lost while B's table changed {} times under the flood: {} of {} lost",
                f.main.changes, f.lost, f.conns
            ),
            f.lost == 0 && f.main.changes > 0,
        ),
    ]
}

/// The section, from its heading to just before the next one.
pub fn section(f: &Flood, flood_only: bool) -> String {
    let mut d = format!("{HEADING}\n\n");
    let run = match (f.quick, flood_only) {
        (true, true) => "`--flood-only --quick`",
        (true, false) => "`--quick`",
        (false, true) => "`--flood-only`",
        (false, false) => "full",
    };
    let _ = writeln!(
        d,
        "Measured {} (run: {run}); load average at the start of this part: {} on {} CPUs.\n",
        f.date, f.load, f.cpus
    );
    method(&mut d, f);
    results(&mut d, f);
    limits(&mut d, f);
    targets(&mut d, verdicts(f));
    d
}

fn method(d: &mut String, f: &Flood) {
    let _ = writeln!(
        d,
        "* **Lab**: namespaces for a client, the LB and six backends on one bridge (`tests/src/lab.rs`), the real \
         `lb-agent` on the LB's veth in native XDP mode, fed a config file. **VIP A** = 192.0.2.100:{A_PORT}/tcp, \
         backends {} and {} (an XDP program on each one's veth drops everything but ARP, `flood_sink`). A \
         starts with backend {} alone, then {} joins at weight 9, so ~90 % of A's slots are in transition: a SYN there is pinned in `FLOWS_NEW` (the worst case; a SYN in a stable slot \
         writes no flow entry). **VIP B** = 192.0.2.100:8080/tcp, echo servers on backends 0–2 (3 joins later).",
        SINKS[0], SINKS[1], SINKS[0], SINKS[1]
    );
    let _ = writeln!(
        d,
        "* **B's connections**: {CONNS} TCP connections from the client, opened before the floods, each echoing a \
         line every {} ms until {} s after them (a 5 s read timeout); a connection is lost at any error or at an \
         echo from another backend than its first.",
        ECHO_EVERY.as_millis(),
        AFTER.as_secs()
    );
    let _ = writeln!(
        d,
        "* **B's table changes**: every {} s of the flood the config file changes one weight of B, or adds backend 3 \
         (SIGHUP); each change is confirmed in the pinned `BACKENDS` map before the next. Each puts slots of B in \
         transition: B's connections in those slots then stay on their backend only through their flow entries.",
        CHANGE_EVERY.as_secs()
    );
    let _ = writeln!(
        d,
        "* **Flood**: `tests/bpf/flood.c` (built with clang at run time; not in the balancer's object), program \
         `flood_syn`, run by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (calls of {} runs in batches of \
         {BATCH}). Each run writes a whole {FRAME_LEN}-byte IPv4 TCP SYN to VIP A from a random address of \
         198.18.0.0/15 and a random port (`bpf_get_prandom_u32`; IPv4 and TCP checksums computed), \
         with the client's MAC as source, and returns XDP_TX: every frame is a new flow. The balancer forwards it \
         (XDP_TX) to its bridge port, whose XDP program (`flood_peer`) drops the flood and passes everything \
         else (B's traffic) on to the bridge.",
        count(CHUNK)
    );
    let _ = writeln!(
        d,
        "* **One CPU**: the bench's thread is pinned to CPU {}, and everything of the lab inherits that pin: the \
         generator, B's connections and servers, the agent. A veth's receive work runs on the CPU that hands it \
         frames, so each batch the generator flushes is carried through `lb_xdp` and the drop at the port before \
         the generator makes the next. (Tried and dropped: lab threads free to use the other CPU, whose traffic \
         then ran the balancer's receive queue there, late, while the generator overflowed its ring; and the \
         receive queue as a threaded NAPI pinned to the other CPU: the hand-over between CPUs cost more than the \
         CPU gained. Both forwarded less than half as much.)",
        f.main.sent.cpu
    );
    let _ = writeln!(
        d,
        "* **Pace**: a run sends its frame or drops it at once, as a share kept in a map says; between calls that \
         share goes up {:.0} % if the balancer's `tx` rose by at least {:.0} % of the frames sent during the call, \
         down {:.0} % otherwise. So the flood settles at what the balancer forwards: frames beyond that would only \
         overflow its veth's receive ring, which B's packets share, and measure a full queue instead of the \
         balancer. (A call sets up its own page pool, ~25 ms here: the rate cannot be set by sleeping between \
         short calls.)",
        (UP - 1.0) * 100.0,
        DELIVERED * 100.0,
        (1.0 - DOWN) * 100.0
    );
    let _ = writeln!(
        d,
        "* **Two floods**: first {} s injected on the client's veth, so frames cross the bridge (as socket \
         buffers) to reach the balancer, B unchanged; then the measured flood, {:.0} s, injected on the bridge \
         port of the balancer's veth, so they arrive as XDP frames straight into `lb_xdp` (the way a NIC hands \
         them over), while B's table changes.",
        BRIDGE_FLOOD.as_secs(),
        f.main.secs
    );
    d.push_str(
        "* **Rate** = deltas of the balancer's `REASONS` counters (read from the pinned map) over wall time, read \
         once a second from 0.5 s after the flood started; per-second figures are `tx` per second.\n\n",
    );
}

fn occupancy(o: &Occupancy) -> String {
    format!("{} of {} entries ({} of them VIP B's)", count(o.entries), count(o.capacity), count(o.of_b))
}

fn results(d: &mut String, f: &Flood) {
    let (m, b) = (&f.main, &f.bridge);
    d.push_str("| Figure | Through the bridge, B unchanged | **Measured**: at the LB's port, B changing |\n");
    d.push_str("| --- | ---: | ---: |\n");
    let _ = writeln!(d, "| Flood measured over | {:.1} s | {:.1} s |", b.secs, m.secs);
    let _ = writeln!(d, "| Generator runs (sent or dropped) | {} | {} |", runs(b), runs(m));
    let _ = writeln!(d, "| Frames sent (rate over the whole run) | {} | {} |", generated(b), generated(m));
    let _ = writeln!(d, "| Forwarded by the balancer (`tx`) | {} | {} |", forwarded(b), forwarded(m));
    let _ = writeln!(d, "| `tx` per second: min / median / max | {} | {} |", per_second(b), per_second(m));
    let share = |p: &Phase| {
        let (tx, pinned) = (p.counters[Reason::TX.0 as usize], p.counters[Reason::NOTE_FLOW_PINNED.0 as usize]);
        format!("{} ({:.0} % of `tx`)", count(pinned), if tx == 0 { 0.0 } else { 100.0 * pinned as f64 / tx as f64 })
    };
    let _ = writeln!(d, "| Flow entries written (`note_flow_pinned`) | {} | {} |", share(b), share(m));
    let _ = writeln!(d, "| Other verdicts | {} | {} |", others(b), others(m));
    let _ = writeln!(d, "| B's table changes during the flood | {} | **{}** |", b.changes, m.changes);
    d.push('\n');
    d.push_str("| B's connections, both floods | |\n| --- | ---: |\n");
    let _ = writeln!(d, "| Established before the floods | {} |", f.conns);
    let _ = writeln!(d, "| Echoes answered | {} |", count(f.echoes));
    let l = &f.losses;
    let _ = writeln!(
        d,
        "| **Lost** | **{}** (moved or reset: {}; timed out: {}; other: {}) |",
        f.lost, l.moved, l.timed_out, l.other
    );
    let _ = writeln!(d, "| `FLOWS_NEW` after the measured flood | {} |", occupancy(&f.flows_new));
    let _ = writeln!(d, "| `FLOWS` after the measured flood | {} |\n", occupancy(&f.flows));
    for e in &f.errors {
        let _ = writeln!(d, "* Lost: {e}");
    }
    if !f.errors.is_empty() {
        d.push('\n');
    }
}

fn runs(p: &Phase) -> String {
    format!("{} ({})", count(p.sent.runs), mpps(p.runs()))
}

fn generated(p: &Phase) -> String {
    format!("{} ({})", count(p.sent.frames), mpps(p.generated()))
}

fn forwarded(p: &Phase) -> String {
    format!("{} ({})", count(p.counters[Reason::TX.0 as usize]), mpps(p.rate(Reason::TX)))
}

fn per_second(p: &Phase) -> String {
    let s = &p.tx_per_s;
    format!("{} / {} / {}", mpps(s.min), mpps(s.median), mpps(s.max))
}

/// Verdicts other than `tx` that moved.
fn others(p: &Phase) -> String {
    let moved: Vec<String> = (1..VERDICT_COUNT)
        .filter(|i| p.counters[*i as usize] > 0)
        .map(|i| format!("`{}` {}", REASON_NAMES[i as usize], count(p.counters[i as usize])))
        .collect();
    if moved.is_empty() {
        "none".into()
    } else {
        moved.join(", ")
    }
}

/// Where the rate comes from, and what bounds it.
fn limits(d: &mut String, f: &Flood) {
    let (m, b) = (&f.main, &f.bridge);
    let per_frame = |p: &Phase| if p.rate(Reason::TX) > 0.0 { 1e9 / p.rate(Reason::TX) } else { 0.0 };
    let _ = writeln!(
        d,
        "**What bounds the rate.** One CPU does all the work of a frame, so the measured flood costs {:.0} ns per \
         forwarded frame in all: the generator's run and the live-frames loop, the hand-over into the balancer's \
         veth, `lb_xdp` with its `FLOWS_NEW` pin (two stores into the direct-mapped table), its XDP_TX into \
         the bridge port and the drop there, with B's traffic, the agent and the rest of the machine on the same \
         CPU. The balancer's own share is a fraction of that (see the per-packet table: a new flow in a changed \
         slot), so this figure is a floor for what `lb_xdp` takes on a CPU of its own, not its limit. Through the \
         bridge ({:.0} ns per frame) each frame also becomes a socket buffer and crosses the bridge first.\n",
        per_frame(m),
        per_frame(b)
    );
}

/// `doc` with this section replaced by `section` (or added before "## Variance").
pub fn splice(doc: &str, section: &str) -> String {
    splice_at(doc, HEADING, section)
}

/// The section when the benchmark cannot run here.
pub fn skipped(why: &str) -> String {
    format!("{HEADING}\n\nNot measured: {why}\n\n")
}
