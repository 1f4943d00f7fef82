//! Prometheus `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1.
//!
//! Counters and weights come from the pinned maps at scrape time (the same reading as
//! `lb-agent status`); sync health and drain progress come from the agent's view.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::view::{AgentView, SharedView};
use crate::inspect::{inspect, Inspection};
use crate::loader::Maps;

/// Binds `addr` and serves in the background. `flow_idle` (`--flow-idle-timeout`): flows
/// silent for longer do not count as live, as in the data path and `lb-agent status`.
pub async fn spawn(addr: SocketAddr, pin_dir: PathBuf, view: SharedView, flow_idle: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let (pin_dir, view) = (pin_dir.clone(), view.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut conn).await else { return };
                let request = String::from_utf8_lossy(&head);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = respond(path, &pin_dir, &view, flow_idle);
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Reads a request up to the end of its headers (a request may arrive in pieces).
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, conn.read(&mut buf)).await.ok()?.ok()?;
        if n == 0 || head.len() > 16 * 1024 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

fn respond(path: &str, pin_dir: &std::path::Path, view: &SharedView, flow_idle: Duration) -> (&'static str, String) {
    let v = view.lock().expect("view lock").clone();
    match path {
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" if v.ready => ("200 OK", "ready\n".into()),
        "/readyz" => ("503 Service Unavailable", "not ready: no successful sync yet\n".into()),
        "/metrics" => {
            let maps = Maps::from_pinned(pin_dir).map_err(|e| e.to_string());
            let insp = maps.and_then(|(m, meta)| inspect(&m, &meta, flow_idle).map_err(|e| e.to_string()));
            match insp {
                Ok(i) => ("200 OK", render(&i, &v)),
                Err(e) => ("500 Internal Server Error", format!("reading the maps: {e}\n")),
            }
        }
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".into()),
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// A per-backend series: name, type, help text, value.
type Series = (&'static str, &'static str, &'static str, fn(&crate::inspect::BackendInfo) -> u64);

/// The Prometheus text exposition of an inspection and the agent's view.
pub fn render(i: &Inspection, v: &AgentView) -> String {
    let mut o = String::new();
    help(&mut o, "lb_vip_packets_total", "counter", "Packets forwarded for a VIP.");
    for x in &i.vips {
        let _ = writeln!(o, "lb_vip_packets_total{{vip=\"{}\"}} {}", x.vip, x.traffic.packets);
    }
    help(&mut o, "lb_vip_bytes_total", "counter", "Bytes forwarded for a VIP.");
    for x in &i.vips {
        let _ = writeln!(o, "lb_vip_bytes_total{{vip=\"{}\"}} {}", x.vip, x.traffic.bytes);
    }
    help(&mut o, "lb_vip_new_flows_total", "counter", "New TCP connections (SYNs) for a VIP.");
    for x in &i.vips {
        let _ = writeln!(o, "lb_vip_new_flows_total{{vip=\"{}\"}} {}", x.vip, x.traffic.new_flows);
    }
    help(
        &mut o,
        "lb_vip_changed_slots",
        "gauge",
        "Table slots of a VIP still consulting the flow table after a change.",
    );
    for x in &i.vips {
        let _ = writeln!(o, "lb_vip_changed_slots{{vip=\"{}\"}} {}", x.vip, x.changed_slots);
    }
    let backend_series: [Series; 7] = [
        ("lb_backend_packets_total", "counter", "Packets sent to a backend.", |b| b.traffic.packets),
        ("lb_backend_bytes_total", "counter", "Bytes sent to a backend.", |b| b.traffic.bytes),
        ("lb_backend_new_flows_total", "counter", "New TCP connections sent to a backend.", |b| b.traffic.new_flows),
        ("lb_backend_weight", "gauge", "Effective weight in the live table.", |b| b.weight as u64),
        ("lb_backend_target_weight", "gauge", "Weight once the ramp is done.", |b| b.target_weight as u64),
        ("lb_backend_ramp_progress_percent", "gauge", "Slow-start progress.", |b| b.progress as u64),
        ("lb_backend_draining", "gauge", "1 while the backend drains.", |b| b.draining as u64),
    ];
    for (name, kind, text, f) in backend_series {
        help(&mut o, name, kind, text);
        for x in &i.vips {
            for b in &x.backends {
                let _ = writeln!(o, "{name}{{vip=\"{}\",backend=\"{}\"}} {}", x.vip, b.addr, f(b));
            }
        }
    }
    help(
        &mut o,
        "lb_backend_live_flows",
        "gauge",
        "Live flows pinned to a backend (all flows of a draining backend are pinned).",
    );
    for x in &i.vips {
        for b in &x.backends {
            let _ = writeln!(o, "lb_backend_live_flows{{vip=\"{}\",backend=\"{}\"}} {}", x.vip, b.addr, b.live_flows);
        }
    }
    help(&mut o, "lb_packets_total", "counter", "Packets by verdict reason (tx, pass_*, drop_*, note_*).");
    for (name, c) in &i.reasons {
        let _ = writeln!(o, "lb_packets_total{{reason=\"{name}\"}} {}", c.packets);
    }
    help(&mut o, "lb_flow_table_entries", "gauge", "Entries in the flow table.");
    let _ = writeln!(o, "lb_flow_table_entries {}", i.flows);
    help(&mut o, "lb_sync_total", "counter", "Sync passes of the agent.");
    let _ = writeln!(o, "lb_sync_total {}", v.syncs);
    help(&mut o, "lb_sync_errors_total", "counter", "Sync passes that failed.");
    let _ = writeln!(o, "lb_sync_errors_total {}", v.sync_errors);
    help(&mut o, "lb_sync_duration_seconds", "gauge", "Duration of the last sync pass.");
    let _ = writeln!(o, "lb_sync_duration_seconds {}", v.last_sync_seconds);
    help(&mut o, "lb_config_errors_total", "counter", "Config reloads that failed or skipped a VIP.");
    let _ = writeln!(o, "lb_config_errors_total {}", v.config_errors);
    help(&mut o, "lb_ready", "gauge", "1 after the first successful sync.");
    let _ = writeln!(o, "lb_ready {}", v.ready as u8);
    o
}
