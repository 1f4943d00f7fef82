//! The read-only commands (`status`, `explain`, `top`) and the metrics endpoint, against
//! the real agent in a namespace lab with real traffic.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use lb_agent::cli::StatusJson;
use lb_agent::config::XdpModeChoice;
use lb_tests::agent::{agent_binary, Agent};
use lb_tests::lab::{backend_addrs, Lab, CLIENT4, VIP4};
use lb_tests::netns::{command_in, run_in};
use lb_tests::servers::{start_backend, tcp_backends, udp_backends, TCP_PORT, UDP_PORT};

const VIP_TCP: &str = "192.0.2.100:8080/tcp";
const VIP_UDP: &str = "192.0.2.100:5353/udp";
/// (backend index, weight)
const WEIGHTS: [(usize, u32); 3] = [(0, 1), (1, 2), (2, 3)];
const TIMEOUT: Duration = Duration::from_secs(5);

/// Both VIPs with the three backends at full weight from the start.
fn config() -> String {
    config_with(&WEIGHTS)
}

fn config_with(weights: &[(usize, u32)]) -> String {
    let mut out = String::new();
    for vip in [VIP_TCP, VIP_UDP] {
        out += &format!("[[vip]]\naddress = \"{vip}\"\n");
        for &(i, w) in weights {
            let addr = backend_addrs(i).0;
            out += &format!("[[vip.backend]]\naddress = \"{addr}\"\nweight = {w}\nstart_progress = 100\n");
        }
    }
    out
}

fn lab(tag: &str) -> Result<Lab> {
    let lab = Lab::new(tag, WEIGHTS.len(), XdpModeChoice::Native)?;
    for i in 0..WEIGHTS.len() {
        start_backend(&lab, i)?;
    }
    Ok(lab)
}

fn start(lab: &Lab, extra: &[&str]) -> Result<Agent> {
    let mut args = vec!["--xdp-mode", "native"];
    args.extend_from_slice(extra);
    let mut agent = Agent::start(lab, &config(), &args)?;
    agent.wait_programmed(2, 6)?;
    Ok(agent)
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse().unwrap(), port)
}

/// `lb-agent ARGS --iface eth0 --pin-root <lab's>` in the LB namespace.
fn lb_agent(lab: &Lab, args: &[&str]) -> Result<Output> {
    let mut cmd = command_in(&lab.lb(), &agent_binary()?)?;
    cmd.args(args).args(["--iface", "eth0", "--pin-root"]).arg(lab.pin_root()).env("LB_LOG", "error");
    cmd.output().with_context(|| format!("running lb-agent {args:?}"))
}

/// The same, which must succeed: its stdout.
fn run(lab: &Lab, args: &[&str]) -> Result<String> {
    let out = lb_agent(lab, args)?;
    ensure!(out.status.success(), "lb-agent {args:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How many times each backend name occurs.
fn counts(names: &[String]) -> BTreeMap<String, u64> {
    names.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.clone()).or_default() += 1;
        m
    })
}

/// Checks one VIP of `status -o json`: weights, and per-backend counters that cover
/// what the client saw (`min_packets` client->VIP packets per greeting/answer).
fn check_vip(doc: &StatusJson, vip: &str, greeted: &BTreeMap<String, u64>, min_packets: u64) -> Result<()> {
    let vips = doc["vips"].as_array().context("vips")?;
    let v = vips.iter().find(|v| v["vip"] == vip).with_context(|| format!("{vip} missing from status"))?;
    let backends = v["backends"].as_array().context("backends")?;
    ensure!(backends.len() == WEIGHTS.len(), "{vip}: backends {backends:?}");
    let mut sum = 0;
    for (i, w) in WEIGHTS {
        let addr = backend_addrs(i).0.to_string();
        let b = backends.iter().find(|b| b["addr"] == addr.as_str()).with_context(|| format!("{vip}: no {addr}"))?;
        ensure!(b["weight"] == w && b["target_weight"] == w && b["progress"] == 100, "{vip} {addr}: {b}");
        let packets = b["traffic"]["packets"].as_u64().context("packets")?;
        let want = greeted.get(&format!("b{i}")).copied().unwrap_or(0) * min_packets;
        ensure!(packets >= want, "{vip} {addr}: {packets} packets counted, at least {want} sent");
        sum += packets;
    }
    let total: u64 = greeted.values().sum::<u64>() * min_packets;
    println!("{vip}: backends counted {sum} packets; the client accounts for at least {total}");
    ensure!(sum >= total, "{vip}: backends counted {sum} packets, the client sent at least {total}");
    ensure!(v["traffic"]["packets"].as_u64() >= Some(sum), "{vip}: VIP counter below its backends': {v}");
    Ok(())
}

#[test]
fn status_reads_the_maps_after_the_agent_stopped() {
    if lb_tests::skip("status_reads_the_maps_after_the_agent_stopped") {
        return;
    }
    let lab = lab("ost").unwrap();
    let agent = start(&lab, &[]).unwrap();
    // A short TCP connection is at least SYN, ACK and FIN from the client.
    let tcp = counts(&tcp_backends(&lab, sock(VIP4, TCP_PORT), 150).unwrap());
    let udp = counts(&udp_backends(&lab, sock(VIP4, UDP_PORT), 60).unwrap());
    let status = agent.stop().unwrap();
    assert!(status.success(), "lb-agent exited with {status}");

    let json = run(&lab, &["status", "-o", "json"]).unwrap();
    let doc: StatusJson = json.parse().expect("status -o json is JSON");
    assert_eq!(doc["vips"].as_array().map(Vec::len), Some(2), "{json}");
    check_vip(&doc, VIP_TCP, &tcp, 3).unwrap();
    check_vip(&doc, VIP_UDP, &udp, 1).unwrap();

    let table = run(&lab, &["status"]).unwrap();
    println!("{table}");
    for want in [VIP_TCP, VIP_UDP, "192.0.2.11", "192.0.2.12", "192.0.2.13", "1/1", "2/2", "3/3", "active", "tx"] {
        assert!(table.contains(want), "status lacks {want:?}:\n{table}");
    }
}

/// An open TCP connection from CLIENT4:`port` to the TCP VIP, and who greeted it.
struct Held {
    port: u16,
    backend: String,
    stream: TcpStream,
}

impl Held {
    fn open(port: u16) -> Result<Held> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(sock(CLIENT4, port)))?;
        s.connect_timeout(&SockAddr::from(sock(VIP4, TCP_PORT)), TIMEOUT)
            .with_context(|| format!("from port {port}"))?;
        let stream = TcpStream::from(s);
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut name = String::new();
        BufReader::new(&stream).read_line(&mut name).with_context(|| format!("greeting on port {port}"))?;
        Ok(Held { port, backend: name.trim().to_string(), stream })
    }

    /// The connection still talks to the backend that greeted it.
    fn echo(&self) -> Result<()> {
        writeln!(&self.stream, "ping")?;
        let mut reply = String::new();
        BufReader::new(&self.stream).read_line(&mut reply)?;
        ensure!(reply.trim() == format!("{}:ping", self.backend), "port {}: echo {reply:?}", self.port);
        Ok(())
    }

    fn backend_addr(&self) -> IpAddr {
        backend_addrs(self.backend.trim_start_matches('b').parse().unwrap()).0
    }
}

fn hold(lab: &Lab, ports: impl Iterator<Item = u16> + Send + 'static) -> Result<Vec<Held>> {
    run_in(&lab.client(), move || ports.map(Held::open).collect::<Result<Vec<_>>>())?
}

/// Runs `explain` for each held connection and checks it names the backend that
/// greeted it; returns how often each reason was given.
fn explain_all(lab: &Lab, held: &[Held]) -> Result<BTreeMap<String, u64>> {
    let mut reasons = BTreeMap::new();
    for h in held {
        let client = format!("{CLIENT4}:{}", h.port);
        let text = run(lab, &["explain", &client, VIP_TCP])?;
        let first = text.lines().next().unwrap_or_default();
        let named = first.strip_prefix("backend ").and_then(|r| r.split_whitespace().next()?.parse::<IpAddr>().ok());
        ensure!(named == Some(h.backend_addr()), "{client}: {} answered; explain says:\n{text}", h.backend);
        let why = first.split_once("): ").and_then(|(_, r)| r.split_once(", ")).map(|(_, w)| w).unwrap_or(first);
        *reasons.entry(why.to_string()).or_default() += 1;
    }
    Ok(reasons)
}

/// Waits until `status` shows every backend at its weight in `weights` (both VIPs).
fn wait_weights(lab: &Lab, weights: &[(usize, u32)]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc: StatusJson = run(lab, &["status", "-o", "json"])?.parse()?;
        let want = |b: &StatusJson| {
            weights.iter().any(|(i, w)| b["addr"] == backend_addrs(*i).0.to_string() && b["weight"] == *w)
        };
        let vips = doc["vips"].as_array().context("vips")?;
        if vips.iter().flat_map(|v| v["backends"].as_array().into_iter().flatten()).all(want) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "weights {weights:?} not applied in 10 s: {doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn explain_names_the_backend_that_answered() {
    if lb_tests::skip("explain_names_the_backend_that_answered") {
        return;
    }
    let lab = lab("oex").unwrap();
    let agent = start(&lab, &[]).unwrap();
    // 40 connections from chosen source ports, kept open.
    let before = hold(&lab, (0..40).map(|i| 40_000 + i * 37)).unwrap();
    let reasons = explain_all(&lab, &before).unwrap();
    let answered = counts(&before.iter().map(|h| h.backend.clone()).collect::<Vec<_>>());
    println!("explain agreed on {} connections {answered:?}: {reasons:?}", before.len());
    assert!(answered.len() >= 2, "40 connections reached more than one backend: {answered:?}");

    // Reverse the weights: many slots change. Established connections stay where they
    // are (and explain says why); new ones take the new table and are pinned.
    let reversed = [(0, 3), (1, 2), (2, 1)];
    agent.reload(&config_with(&reversed)).unwrap();
    wait_weights(&lab, &reversed).unwrap();
    for h in &before {
        h.echo().unwrap();
    }
    let kept = explain_all(&lab, &before).unwrap();
    println!("after the change, established connections: {kept:?}");
    let after = hold(&lab, (0..40).map(|i| 45_000 + i * 37)).unwrap();
    let new = explain_all(&lab, &after).unwrap();
    println!("after the change, new connections: {new:?}");
    let changed: u64 = kept.iter().chain(&new).filter(|(why, _)| why.starts_with("slot changed")).map(|(_, n)| n).sum();
    assert!(changed > 0, "some of 80 connections hashed to changed slots: {kept:?} {new:?}");

    // Bad input, and a pin root where no agent ran: one line naming it, exit code 64.
    let nowhere = |args: &[&str]| -> Result<Output> {
        let mut cmd = command_in(&lab.lb(), &agent_binary()?)?;
        Ok(cmd.args(args).args(["--iface", "eth0", "--pin-root", "/nonexistent"]).output()?)
    };
    for (out, want) in [
        (lb_agent(&lab, &["explain", "192.0.2.1", VIP_TCP]), "CLIENT:PORT \"192.0.2.1\": expected ADDRESS:PORT"),
        (
            lb_agent(&lab, &["explain", "192.0.2.1:1", "192.0.2.100:8080"]),
            "VIP:PORT/PROTO \"192.0.2.100:8080\": expected",
        ),
        (nowhere(&["explain", "192.0.2.1:1", VIP_TCP]), "no pinned maps at /nonexistent/eth0"),
        (nowhere(&["status"]), "no pinned maps at /nonexistent/eth0"),
        (nowhere(&["top", "--iterations", "1"]), "no pinned maps at /nonexistent/eth0"),
    ] {
        let out = out.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{want}: {stderr}");
        assert!(stderr.lines().count() == 1 && stderr.starts_with("lb-agent: ") && stderr.contains(want), "{stderr}");
    }
}

/// Short TCP connections and UDP requests to the VIPs until `stop` is set.
fn background_traffic(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Result<u64>> {
    let ns = lab.client();
    std::thread::spawn(move || {
        run_in(&ns, move || -> Result<u64> {
            let (mut n, udp) = (0, UdpSocket::bind("0.0.0.0:0")?);
            udp.set_read_timeout(Some(Duration::from_millis(200)))?;
            while !stop.load(Ordering::Relaxed) {
                let mut c = TcpStream::connect_timeout(&sock(VIP4, TCP_PORT), TIMEOUT)?;
                c.set_read_timeout(Some(TIMEOUT))?;
                c.shutdown(std::net::Shutdown::Write)?;
                c.read_to_end(&mut Vec::new())?;
                udp.send_to(b"who", sock(VIP4, UDP_PORT))?;
                let _ = udp.recv(&mut [0u8; 64]);
                n += 1;
            }
            Ok(n)
        })?
    })
}

/// The packet rate on a frame's line for `vip` ("VIP  12.5 pkt/s ...").
fn vip_rate(frame: &str, vip: &str) -> Option<f64> {
    let line = frame.lines().find(|l| l.starts_with(vip))?;
    line.split("pkt/s").next()?.split_whitespace().last()?.parse().ok()
}

#[test]
fn top_prints_frames_with_rates() {
    if lb_tests::skip("top_prints_frames_with_rates") {
        return;
    }
    let lab = lab("otp").unwrap();
    let _agent = start(&lab, &[]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = background_traffic(&lab, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&lab, &["top", "--iterations", "2", "--interval", "200ms"]);
    stop.store(true, Ordering::Relaxed);
    let rounds = traffic.join().expect("traffic thread").unwrap();
    let out = out.unwrap();
    println!("{out}\n({rounds} rounds of traffic)");
    assert!(!out.contains('\x1b'), "no terminal escapes when stdout is not a terminal");
    let frames: Vec<&str> = out.split("lb-agent top:").skip(1).collect();
    assert_eq!(frames.len(), 2, "two frames:\n{out}");
    for frame in &frames {
        for want in [VIP_TCP, VIP_UDP, "192.0.2.11", "192.0.2.12", "192.0.2.13", "[##########] 100%", "tx"] {
            assert!(frame.contains(want), "frame lacks {want:?}:\n{frame}");
        }
        for vip in [VIP_TCP, VIP_UDP] {
            let rate = vip_rate(frame, vip).unwrap_or_else(|| panic!("no rate for {vip}:\n{frame}"));
            assert!(rate > 0.0, "{vip}: traffic flowed, rate {rate}:\n{frame}");
        }
    }
}

/// `GET path` on the agent's metrics address from inside the LB namespace: (status, body).
fn http_get(lab: &Lab, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    run_in(&lab.lb(), move || -> Result<(u16, String)> {
        let mut c = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        // One write: the endpoint reads the request with a single read.
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        c.read_to_string(&mut text)?;
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("HTTP status line")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    })?
}

/// Polls `path` until it answers `code` (5 s).
fn wait_for(lab: &Lab, addr: SocketAddr, path: &str, code: u16) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = http_get(lab, addr, path);
        match got {
            Ok((c, body)) if c == code => return Ok(body),
            _ if Instant::now() > deadline => bail!("{path} did not answer {code}: {got:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The value of the series `name{labels}` in a Prometheus text page.
fn series(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[test]
fn metrics_endpoint_serves_health_readiness_and_counters() {
    if lb_tests::skip("metrics_endpoint_serves_health_readiness_and_counters") {
        return;
    }
    let lab = lab("omt").unwrap();
    let port = run_in(&lab.lb(), || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())).unwrap().unwrap();
    let addr_flag = port.to_string();
    let agent = start(&lab, &["--metrics-addr", &addr_flag]).unwrap();
    wait_for(&lab, port, "/healthz", 200).unwrap();
    wait_for(&lab, port, "/readyz", 200).unwrap();

    let names = tcp_backends(&lab, sock(VIP4, TCP_PORT), 40).unwrap();
    let page = wait_for(&lab, port, "/metrics", 200).unwrap();
    for (i, w) in WEIGHTS {
        let weight = format!("lb_backend_weight{{vip=\"{VIP_TCP}\",backend=\"{}\"}}", backend_addrs(i).0);
        assert_eq!(series(&page, &weight), Some(w as f64), "{weight} in:\n{page}");
    }
    let packets = series(&page, &format!("lb_vip_packets_total{{vip=\"{VIP_TCP}\"}}")).unwrap_or(0.0);
    println!("after {} connections: lb_vip_packets_total {packets}", names.len());
    assert!(packets >= 3.0 * names.len() as f64, "lb_vip_packets_total {packets} for {} connections", names.len());
    assert_eq!(series(&page, "lb_ready"), Some(1.0), "{page}");
    let (code, _) = http_get(&lab, port, "/nosuch").unwrap();
    assert_eq!(code, 404);
    // A program that is no longer attached is no health: /healthz says so and why.
    let link = lb_agent::dataplane::xdp::loader::link_path(&agent.pin_dir);
    let out = std::process::Command::new("bpftool").args(["link", "detach", "pinned"]).arg(&link).output().unwrap();
    assert!(out.status.success(), "bpftool link detach: {}", String::from_utf8_lossy(&out.stderr));
    let body = wait_for(&lab, port, "/healthz", 503).unwrap();
    assert!(body.contains("detached"), "/healthz body: {body}");
    assert!(agent.stop().unwrap().success());
}

#[test]
fn health_fails_when_the_loop_stops_turning() {
    use lb_agent::view::{AgentView, STUCK_AFTER_MS};
    let v = AgentView { ready: true, heartbeat_ms: 1_000_000, ..Default::default() };
    assert!(v.health(1_000_000 + STUCK_AFTER_MS).is_ok());
    assert!(v.health(1_000_001 + STUCK_AFTER_MS).unwrap_err().contains("not turned"));
    let failing = AgentView { sync_failing: true, ..v.clone() };
    assert!(v.readiness().is_ok() && failing.readiness().is_err());
}
