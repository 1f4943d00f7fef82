//! Prometheus `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1.
//!
//! Counters and weights come from the pinned maps at scrape time (the same reading as
//! `lb-agent status`); sync health and drain progress come from the agent's view.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::io::Write as _;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::dataplane::xdp::loader::Maps;
use crate::dataplane::xdp::read::{inspect, Inspection};
use crate::view::{unix_ms, AgentView, SharedView};

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
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                // The maps are read (the flow table at /metrics) and the page written on
                // a worker thread, never on the runtime thread the agent's loop runs on;
                // the page is streamed, so its size (about 700 bytes per backend) is
                // never held in memory at once.
                let Ok(conn) = conn.into_std().and_then(|c| c.set_nonblocking(false).map(|()| c)) else { return };
                let _ = tokio::task::spawn_blocking(move || answer(conn, &path, &pin_dir, &view, flow_idle)).await;
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

/// Answers one request on a blocking socket; the body ends with the connection.
fn answer(
    conn: std::net::TcpStream,
    path: &str,
    pin_dir: &std::path::Path,
    view: &SharedView,
    flow_idle: Duration,
) -> std::io::Result<()> {
    // A scraper that stops reading does not hold a worker thread for long.
    conn.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, conn);
    let head = |status: &str| {
        format!("HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\nconnection: close\r\n\r\n")
    };
    if path == "/metrics" {
        let v = view.lock().expect("view lock").clone();
        let maps = Maps::from_pinned(pin_dir).map_err(|e| e.to_string());
        match maps.and_then(|(m, meta)| inspect(&m, &meta, flow_idle).map_err(|e| e.to_string())) {
            Ok(i) => {
                out.write_all(head("200 OK").as_bytes())?;
                let written = render_to(&i, &v, &mut out);
                drop(i);
                // The reading of 100,000 backends is tens of MB, allocated on this worker
                // thread's own heap arena: given back now, not kept until the next scrape.
                crate::mem::give_back_free_memory();
                written?;
            }
            Err(e) => writeln!(out, "{}reading the maps: {e}", head("500 Internal Server Error"))?,
        }
    } else {
        let (status, body) = respond(path, view);
        write!(out, "{}{body}", head(status))?;
    }
    std::io::Write::flush(&mut out)
}

fn respond(path: &str, view: &SharedView) -> (&'static str, String) {
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
        _ => ("404 Not Found", "try /metrics, /healthz or /readyz\n".into()),
    }
}

fn help(out: &mut impl std::fmt::Write, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// A per-backend series: name, type, help text, value.
type Series = (&'static str, &'static str, &'static str, fn(&crate::dataplane::xdp::read::BackendInfo) -> u64);

/// Text written through in 64 KiB pieces (the first write error is kept).
struct Sink<'a, W: std::io::Write> {
    buf: String,
    out: &'a mut W,
    error: Option<std::io::Error>,
}

impl<W: std::io::Write> std::fmt::Write for Sink<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= 64 * 1024 {
            self.flush();
        }
        Ok(())
    }
}

impl<W: std::io::Write> Sink<'_, W> {
    fn flush(&mut self) {
        if self.error.is_none() {
            self.error = self.out.write_all(self.buf.as_bytes()).err();
        }
        self.buf.clear();
    }
}

/// The Prometheus text exposition of an inspection and the agent's view.
pub fn render(i: &Inspection, v: &AgentView) -> String {
    let mut page = Vec::new();
    render_to(i, v, &mut page).expect("writing to memory");
    String::from_utf8(page).expect("UTF-8")
}

/// The same, written to `out` as it is made.
pub fn render_to(i: &Inspection, v: &AgentView, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut o = Sink { buf: String::with_capacity(64 * 1024), out, error: None };
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
    o.flush();
    o.error.map_or(Ok(()), Err)
}
