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

use crate::inspect::{inspect, Inspection};
use crate::loader::Maps;
use crate::view::{unix_ms, AgentView, SharedView};

/// Flows silent for longer do not count as live in `/metrics`.
const FLOW_IDLE: Duration = Duration::from_secs(120);

/// Binds `addr` and serves in the background.
pub async fn spawn(addr: SocketAddr, pin_dir: PathBuf, view: SharedView) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let (pin_dir, view) = (pin_dir.clone(), view.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut conn).await else { return };
                let request = String::from_utf8_lossy(&head);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                // Reading the maps (the flow table at /metrics) takes a worker thread,
                // never the runtime thread the agent's loop runs on.
                let answer = tokio::task::spawn_blocking(move || respond(&path, &pin_dir, &view)).await;
                let Ok((status, body)) = answer else { return };
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

fn respond(path: &str, pin_dir: &std::path::Path, view: &SharedView) -> (&'static str, String) {
    let v = view.lock().expect("view lock").clone();
    match path {
        "/healthz" => match v.health(unix_ms()) {
            Ok(()) => ("200 OK", "ok\n".into()),
            Err(why) => ("503 Service Unavailable", format!("unhealthy: {why}\n")),
        },
        "/readyz" => match v.readiness() {
            Ok(()) => ("200 OK", "ready\n".into()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let maps = Maps::from_pinned(pin_dir).map_err(|e| e.to_string());
            let insp = maps.and_then(|(m, meta)| inspect(&m, &meta, FLOW_IDLE).map_err(|e| e.to_string()));
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
    help(&mut o, "lb_vips_not_applied", "gauge", "Wanted VIPs the data plane or the host refused (retried).");
    let _ = writeln!(o, "lb_vips_not_applied{{cause=\"capacity\"}} {}", v.vip_capacity_failures);
    let _ = writeln!(o, "lb_vips_not_applied{{cause=\"refused\"}} {}", v.vip_failures - v.vip_capacity_failures);
    help(&mut o, "lb_ready", "gauge", "1 after the first successful sync.");
    let _ = writeln!(o, "lb_ready {}", v.ready as u8);
    o
}
