//! `lb-agent status`: VIPs, backends, weights, ramp and drain state, counters and the
//! flow table, read from the pinned maps (in the spirit of `ipvsadm -Ln --stats`).

use std::time::Duration;

use super::table::Table;
use super::{duration, human_secs, print, CliError, PinArgs};
use crate::dataplane::xdp::read::{BackendInfo, Inspection, VipInfo};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The whole reading as JSON, for programs.
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
    /// How long a flow may be silent and still count as live.
    #[arg(long, env = "LB_FLOW_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub flow_idle_timeout: Duration,
}

pub fn run(args: &StatusArgs) -> Result<(), CliError> {
    let insp = args.pins.inspect(args.flow_idle_timeout)?;
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&insp).map_err(CliError::Json)? + "\n",
        Format::Table => render(&insp, args.pins.iface()?, args.flow_idle_timeout),
    };
    print(&text)
}

/// What a backend is doing, in one word (plus its live flows while it drains).
pub fn state(b: &BackendInfo) -> String {
    if b.draining {
        format!("draining ({} live)", b.live_flows)
    } else if !b.active {
        "unresolved".into()
    } else if b.progress < 100 {
        "ramping".into()
    } else {
        "active".into()
    }
}

fn vip_line(v: &VipInfo) -> String {
    let t = &v.traffic;
    let mut line = format!(
        "{}  packets {}  bytes {}  new flows {}  changed slots {}",
        v.vip, t.packets, t.bytes, t.new_flows, v.changed_slots
    );
    if v.affinity_timeout_s > 0 {
        line += &format!("  affinity {}", human_secs(v.affinity_timeout_s as u64));
    }
    if v.backends.is_empty() {
        line += "  (no backends)";
    }
    line
}

const BACKEND_HEADER: [&str; 9] =
    ["BACKEND", "MAC", "WEIGHT", "RAMP", "STATE", "PACKETS", "BYTES", "NEW FLOWS", "LIVE FLOWS"];

fn backend_cells(b: &BackendInfo) -> [String; 9] {
    [
        b.addr.to_string(),
        b.mac.clone(),
        format!("{}/{}", b.weight, b.target_weight),
        format!("{}%", b.progress),
        state(b),
        b.traffic.packets.to_string(),
        b.traffic.bytes.to_string(),
        b.traffic.new_flows.to_string(),
        b.live_flows.to_string(),
    ]
}

/// The table view.
pub fn render(insp: &Inspection, iface: &str, flow_idle: Duration) -> String {
    let mut t = Table::new(5, "  ");
    t.text(format!(
        "{iface}: {} VIP(s), table size {}, hash seed {}",
        insp.vips.len(),
        insp.table_size,
        insp.hash_seed
    ));
    for v in &insp.vips {
        t.text("");
        t.text(vip_line(v));
        if !v.backends.is_empty() {
            t.cells(BACKEND_HEADER);
        }
        for b in &v.backends {
            t.cells(backend_cells(b));
        }
    }
    let mut out = t.render();
    out += &verdicts(insp);
    out += &format!(
        "\nflow table: {} entries, {} live (idle timeout {})\n",
        insp.flows,
        insp.live_flows,
        human_secs(flow_idle.as_secs())
    );
    out
}

/// The verdict counters that are not zero.
fn verdicts(insp: &Inspection) -> String {
    let nonzero: Vec<_> = insp.reasons.iter().filter(|(_, c)| c.packets > 0).collect();
    if nonzero.is_empty() {
        return "\nverdicts: none counted yet\n".into();
    }
    let mut t = Table::new(1, "  ");
    t.text("");
    t.text("verdicts (non-zero):");
    t.cells(["REASON", "PACKETS", "BYTES"]);
    for (name, c) in nonzero {
        t.cells([name.clone(), c.packets.to_string(), c.bytes.to_string()]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::xdp::read::Counts;

    fn backend(addr: &str, weight: u32, progress: u32, draining: bool, active: bool) -> BackendInfo {
        BackendInfo {
            addr: addr.parse().unwrap(),
            id: 0,
            mac: "02:00:00:00:00:0b".into(),
            active,
            draining,
            weight,
            target_weight: 4,
            progress,
            since_unix_ms: 0,
            traffic: Counts { packets: 10, bytes: 1000, new_flows: 2 },
            live_flows: 3,
        }
    }

    #[test]
    fn states() {
        assert_eq!(state(&backend("10.0.0.1", 4, 100, false, true)), "active");
        assert_eq!(state(&backend("10.0.0.1", 2, 50, false, true)), "ramping");
        assert_eq!(state(&backend("10.0.0.1", 0, 100, true, true)), "draining (3 live)");
        assert_eq!(state(&backend("10.0.0.1", 4, 100, false, false)), "unresolved");
    }

    #[test]
    fn table_lists_vips_backends_and_nonzero_verdicts() {
        let insp = Inspection {
            table_size: 16381,
            hash_seed: 7,
            vips: vec![VipInfo {
                vip: "192.0.2.10:80/tcp".into(),
                id: 0,
                affinity_timeout_s: 300,
                traffic: Counts { packets: 20, bytes: 2000, new_flows: 4 },
                backends: vec![backend("10.0.0.2", 2, 50, false, true), backend("10.0.0.3", 0, 100, true, true)],
                changed_slots: 5,
            }],
            reasons: vec![
                ("tx".into(), Counts { packets: 20, bytes: 2000, new_flows: 0 }),
                ("drop_table".into(), Counts::default()),
            ],
            flows: 9,
            live_flows: 6,
        };
        let text = render(&insp, "eth0", Duration::from_secs(120));
        assert!(text.contains("192.0.2.10:80/tcp  packets 20  bytes 2000  new flows 4  changed slots 5  affinity 5m"));
        assert!(text.contains("  10.0.0.2  02:00:00:00:00:0b  2/4     50%   ramping"), "{text}");
        assert!(text.contains("draining (3 live)"));
        assert!(text.contains("  tx           20   2000"), "{text}");
        assert!(!text.contains("drop_table"));
        assert!(text.contains("flow table: 9 entries, 6 live (idle timeout 2m)"));
    }
}
