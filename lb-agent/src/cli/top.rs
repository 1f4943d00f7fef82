//! `lb-agent top`: a live view of the pinned maps: packet and byte rates per VIP and
//! backend, weights and ramp progress, draining backends, verdict rates.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::status::state;
use super::table::Table;
use super::{duration, human_bytes, print, CliError, PinArgs};
use crate::dataplane::xdp::read::{Counts, Inspection};

/// Clears the terminal and moves the cursor home.
const CLEAR: &str = "\x1b[2J\x1b[H";

#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Time between two frames (rates are taken over it).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// Stop after this many frames (0 = run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
    /// How long a flow may be silent and still count as live.
    #[arg(long, env = "LB_FLOW_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub flow_idle_timeout: Duration,
}

pub fn run(args: &TopArgs) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut before = (Instant::now(), args.pins.inspect(args.flow_idle_timeout)?);
    for frame in 1.. {
        std::thread::sleep(args.interval);
        let now = (Instant::now(), args.pins.inspect(args.flow_idle_timeout)?);
        let secs = now.0.duration_since(before.0).as_secs_f64().max(1e-3);
        let iface = args.pins.iface()?;
        let title = match args.iterations {
            0 => format!("lb-agent top: {iface}, every {:?}, frame {frame}", args.interval),
            n => format!("lb-agent top: {iface}, every {:?}, frame {frame} of {n}", args.interval),
        };
        let body = render(&title, &before.1, &now.1, secs);
        let text = match (tty, frame) {
            (true, _) => format!("{CLEAR}{body}"),
            (false, 1) => body,
            (false, _) => format!("\n{body}"),
        };
        print(&text)?;
        if args.iterations != 0 && frame >= args.iterations {
            break;
        }
        before = now;
    }
    Ok(())
}

/// Per-second rates between two readings of the same counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub packets: f64,
    pub bytes: f64,
    pub new_flows: f64,
}

impl Rate {
    /// Counters that went down (maps re-created) count from zero.
    pub fn between(before: Option<&Counts>, now: &Counts, secs: f64) -> Rate {
        let b = before.copied().unwrap_or(*now);
        let b = if b.packets > now.packets { Counts::default() } else { b };
        let per = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
        Rate {
            packets: per(b.packets, now.packets),
            bytes: per(b.bytes, now.bytes),
            new_flows: per(b.new_flows, now.new_flows),
        }
    }

    fn cells(&self) -> [String; 3] {
        [
            format!("{:.1} pkt/s", self.packets),
            format!("{}/s", human_bytes(self.bytes)),
            format!("{:.1}/s", self.new_flows),
        ]
    }
}

/// `[#####.....] 50%`
pub fn bar(progress: u32) -> String {
    let p = progress.min(100) as usize;
    format!("[{}{}] {p}%", "#".repeat(p / 10), ".".repeat(10 - p / 10))
}

/// One frame: the difference between two readings taken `secs` apart.
pub fn render(title: &str, before: &Inspection, now: &Inspection, secs: f64) -> String {
    let vips_before: BTreeMap<&str, _> = before.vips.iter().map(|v| (v.vip.as_str(), v)).collect();
    let mut t = Table::new(4, "  ");
    t.text(title);
    for v in &now.vips {
        let old = vips_before.get(v.vip.as_str());
        let r = Rate::between(old.map(|o| &o.traffic), &v.traffic, secs).cells();
        t.text("");
        t.text(format!("{}  {}  {}  new {}  changed slots {}", v.vip, r[0], r[1], r[2], v.changed_slots));
        if v.backends.is_empty() {
            continue;
        }
        t.cells(["BACKEND", "WEIGHT", "RAMP", "STATE", "PACKETS", "BYTES", "NEW", "LIVE"]);
        let old_backends: BTreeMap<IpAddr, &Counts> =
            old.map(|o| o.backends.iter().map(|b| (b.addr, &b.traffic)).collect()).unwrap_or_default();
        for b in &v.backends {
            let [p, by, n] = Rate::between(old_backends.get(&b.addr).copied(), &b.traffic, secs).cells();
            let weight = format!("{}/{}", b.weight, b.target_weight);
            t.cells([b.addr.to_string(), weight, bar(b.progress), state(b), p, by, n, b.live_flows.to_string()]);
        }
    }
    let mut out = t.render();
    out += &verdicts(before, now, secs);
    out += &format!("\nflow table: {} entries, {} live\n", now.flows, now.live_flows);
    out
}

/// `tx` and every pass/drop reason that ever counted, with its rate.
fn verdicts(before: &Inspection, now: &Inspection, secs: f64) -> String {
    let old: BTreeMap<&str, &Counts> = before.reasons.iter().map(|(n, c)| (n.as_str(), c)).collect();
    let mut t = Table::new(1, "  ");
    t.text("");
    t.cells(["VERDICT", "PACKETS", "BYTES", "TOTAL PACKETS"]);
    for (name, c) in &now.reasons {
        let shown = name == "tx" || ((name.starts_with("pass_") || name.starts_with("drop_")) && c.packets > 0);
        if shown {
            let [p, b, _] = Rate::between(old.get(name.as_str()).copied(), c, secs).cells();
            t.cells([name.clone(), p, b, c.packets.to_string()]);
        }
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::xdp::read::{BackendInfo, VipInfo};

    fn reading(packets: u64, progress: u32, draining: bool) -> Inspection {
        let traffic = Counts { packets, bytes: packets * 100, new_flows: packets / 10 };
        let b = BackendInfo {
            addr: "10.0.0.2".parse().unwrap(),
            id: 0,
            mac: "02:00:00:00:00:02".into(),
            active: true,
            draining,
            weight: 1,
            target_weight: 2,
            progress,
            since_unix_ms: 0,
            traffic,
            live_flows: 7,
        };
        Inspection {
            table_size: 7,
            hash_seed: 0,
            vips: vec![VipInfo {
                vip: "192.0.2.10:80/tcp".into(),
                id: 0,
                affinity_timeout_s: 0,
                traffic,
                backends: vec![b],
                changed_slots: 0,
            }],
            reasons: vec![("tx".into(), traffic), ("pass_not_vip".into(), Counts::default())],
            flows: 3,
            live_flows: 2,
        }
    }

    #[test]
    fn rates_bars_and_states() {
        assert_eq!(bar(50), "[#####.....] 50%");
        assert_eq!(bar(100), "[##########] 100%");
        let text = render("t", &reading(100, 50, false), &reading(300, 50, true), 2.0);
        assert!(text.contains("192.0.2.10:80/tcp  100.0 pkt/s  9.8 KiB/s  new 10.0/s"), "{text}");
        assert!(text.contains("1/2     [#####.....] 50%  draining (7 live)  100.0 pkt/s"), "{text}");
        assert!(text.contains("  tx       100.0 pkt/s"), "{text}");
        assert!(!text.contains("pass_not_vip"), "{text}");
    }

    #[test]
    fn counters_that_went_down_count_from_zero() {
        let r = Rate::between(
            Some(&Counts { packets: 50, bytes: 5, new_flows: 0 }),
            &Counts { packets: 10, bytes: 1, new_flows: 0 },
            1.0,
        );
        assert_eq!(r.packets, 10.0);
    }
}
