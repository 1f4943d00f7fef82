//! The cases measured: which frames, how many runs, against which baseline and target.

use std::net::IpAddr;

use anyhow::Result;
use lb_agent::dataplane::xdp::explain::Reason;
use lb_agent::dataplane::xdp::loader::{PROG_LB, PROG_PASS};
use lb_agent::model::Vip;
use lb_common::stats::Reason as R;
use lb_tests::frames::{Frame, ACK, SYN, TCP};

use crate::report::{Row, Target};
use crate::stats::Summary;
use crate::xdp::{call, Bench, Expect, NET_ESTABLISHED, NET_NEW, VIP_PORT, XDP_PASS, XDP_TX};
use crate::Plan;

/// Backend 10.0.0.1's weight after the change (10 before): its share goes from 10 % to
/// ~31 %, so about a fifth of the slots are in transition.
const CHANGED_WEIGHT: u32 = 40;
const NOT_A_VIP: [u8; 4] = [192, 0, 2, 99];

// The data-plane hardening issue's targets: a stable-slot packet no slower than before
// it (47 ns), a changed-slot established packet ≤ 75 ns, a SYN in a changed slot ≤ 250 ns,
// a packet to an address that is no VIP (what every other packet pays) ≤ 20 ns.
const STABLE_SLOT: Target = Target { max: 47.0, stretch: None };
const CHANGED_SLOT: Target = Target { max: 75.0, stretch: None };
const NEW_FLOW: Target = Target { max: 250.0, stretch: None };
const NON_VIP: Target = Target { max: 20.0, stretch: None };

const EMPTY: Expect = Expect { verdict: XDP_PASS, counters: &[] };
const STABLE: Expect = Expect { verdict: XDP_TX, counters: &[R::TX.0] };
const PINNED: Expect = Expect { verdict: XDP_TX, counters: &[R::TX.0, R::NOTE_FLOW_LOOKUP.0] };
const NOT_VIP: Expect = Expect { verdict: XDP_PASS, counters: &[R::PASS_NOT_VIP.0] };
const INSERTED: Expect = Expect { verdict: XDP_TX, counters: &[R::TX.0, R::NOTE_FLOW_LOOKUP.0, R::NOTE_FLOW_PINNED.0] };

/// What the figures were measured against, for the report.
pub struct Setup {
    pub vip: Vip,
    /// Slots in transition (backend != previous backend) after the weight change.
    pub changed_slots: usize,
    pub frame_len: usize,
    /// Median single-run ns of a changed-slot SYN less that of a stable-slot SYN: the
    /// flow-table insert (and its counter) alone.
    pub insert_ns: f64,
}

/// Every per-packet figure, in table order.
pub fn measure(plan: &Plan) -> Result<(Vec<Row>, Setup)> {
    let mut bench = Bench::new()?;
    bench.set_first_weight(CHANGED_WEIGHT)?;
    let stable = bench.pick(NET_ESTABLISHED, ACK, Reason::Stable, 1)?.remove(0);
    let moved = bench.pick(NET_ESTABLISHED, ACK, Reason::PreviousBackend, 1)?.remove(0);
    bench.check_forwarded(&stable, Reason::Stable)?;
    bench.check_forwarded(&moved, Reason::Pinned)?;
    // The second packet confirms the flow's pin from FLOWS_NEW into FLOWS, where the
    // measured packets find it.
    bench.check_forwarded(&moved, Reason::Pinned)?;
    let mut rows = bench.repeated(plan, &stable, &moved)?;
    let (new_rows, insert_ns) = bench.new_flows(plan)?;
    rows.extend(new_rows);
    let changed_slots = bench.changed_slots()?;
    let setup = Setup { vip: bench.vip, changed_slots, frame_len: stable.bytes().len(), insert_ns };
    Ok((rows, setup))
}

impl Bench {
    /// Established (stable and changed slot) and non-VIP packets, `plan.repeat` runs per
    /// call, interleaved with the empty program over `plan.rounds` rounds.
    fn repeated(&self, plan: &Plan, stable: &Frame, moved: &Frame) -> Result<Vec<Row>> {
        let client = IpAddr::from([198, NET_ESTABLISHED, 255, 1]);
        let non_vip = Frame { tcp_flags: ACK, ..Frame::new(client, NOT_A_VIP.into(), TCP, 40_000, VIP_PORT) };
        let cases = [
            (PROG_PASS, stable.bytes(), &EMPTY),
            (PROG_LB, stable.bytes(), &STABLE),
            (PROG_LB, moved.bytes(), &PINNED),
            (PROG_LB, non_vip.bytes(), &NOT_VIP),
        ];
        let samples = self.rounds(plan, &cases)?;
        let empty = Summary::of(&samples[0]);
        let method = format!("repeat {} × {} rounds", plan.repeat, plan.rounds);
        let row = |case, i: usize, target| Row {
            case,
            method: method.clone(),
            raw: Summary::of(&samples[i]),
            net: Some(Summary::of(&samples[i]).minus(empty.median)),
            target: Some(target),
        };
        Ok(vec![
            Row { case: "empty program (xdp_pass)", method: method.clone(), raw: empty, net: None, target: None },
            row("a. established, stable slot", 1, STABLE_SLOT),
            row("b. established, changed slot (flow-table hit)", 2, CHANGED_SLOT),
            row("d. non-VIP (IPv4 TCP)", 3, NON_VIP),
        ])
    }

    /// Kernel-reported ns per run of each case, one sample per round; a first,
    /// shorter round warms up and is not kept.
    fn rounds(&self, plan: &Plan, cases: &[(&'static str, Vec<u8>, &Expect)]) -> Result<Vec<Vec<f64>>> {
        let mut samples = vec![Vec::with_capacity(plan.rounds); cases.len()];
        for round in 0..=plan.rounds {
            let repeat = if round == 0 { (plan.repeat / 100).max(1) } else { plan.repeat };
            for ((name, frame, want), kept) in cases.iter().zip(samples.iter_mut()) {
                let prog = self.prog(name)?;
                let ns = self.checked(want, repeat.into(), || call(prog, frame, repeat, want.verdict))?;
                if round > 0 {
                    kept.push(ns);
                }
            }
        }
        Ok(samples)
    }

    /// New flows: `plan.new_flows` distinct SYNs landing in stable slots, then as many
    /// landing in changed slots (one flow-table insert each), one run per call, each
    /// call interleaved with a call of the empty program on the same frame. Also returns
    /// the insert's own cost (difference of the medians).
    fn new_flows(&self, plan: &Plan) -> Result<(Vec<Row>, f64)> {
        let stable = self.pick(NET_NEW, SYN, Reason::Stable, plan.new_flows)?;
        let changed = self.pick(NET_NEW, SYN, Reason::NewFlow, plan.new_flows)?;
        let (mut empty, stable_ns) = self.single_runs(&stable, &STABLE)?;
        let (empty_changed, changed_ns) = self.single_runs(&changed, &INSERTED)?;
        empty.extend(empty_changed);
        let empty = Summary::of(&empty);
        let method = format!("1 run × {} distinct SYNs", plan.new_flows);
        let row = |case, ns: &[f64]| Row {
            case,
            method: method.clone(),
            raw: Summary::of(ns),
            net: Some(Summary::of(ns).minus(empty.median)),
            target: Some(NEW_FLOW),
        };
        let insert_ns = Summary::of(&changed_ns).median - Summary::of(&stable_ns).median;
        let rows = vec![
            Row {
                case: "empty program (xdp_pass), 1 run per call",
                method: format!("1 run × {} calls", empty.samples),
                raw: empty,
                net: None,
                target: None,
            },
            row("c. new flow (SYN), stable slot", &stable_ns),
            row("c. new flow (SYN), changed slot (flow-table insert)", &changed_ns),
        ];
        Ok((rows, insert_ns))
    }

    /// (empty program ns, balancer ns) for each frame, one run per call.
    fn single_runs(&self, frames: &[Frame], want: &Expect) -> Result<(Vec<f64>, Vec<f64>)> {
        let (pass, lb) = (self.prog(PROG_PASS)?, self.prog(PROG_LB)?);
        let bytes: Vec<Vec<u8>> = frames.iter().map(Frame::bytes).collect();
        let mut empty = Vec::with_capacity(bytes.len());
        let mut full = Vec::with_capacity(bytes.len());
        self.checked(want, bytes.len() as u64, || {
            for b in &bytes {
                empty.push(call(pass, b, 1, XDP_PASS)?);
                full.push(call(lb, b, 1, want.verdict)?);
            }
            Ok(())
        })?;
        Ok((empty, full))
    }
}
