//! Probes for the hardening tests: one-shot TCP/UDP attempts that tell "served",
//! "refused" and "dropped" apart, greeting listeners, long-lived UDP flows, config
//! files, reason counters; ICMP packet-too-big messages in `icmp`.

mod icmp;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use lb_common::stats::{Reason, REASON_COUNT};
use lb_common::{BACKEND_F_ACTIVE, BACKEND_F_DRAINING};
use socket2::{Domain, Socket, Type};

pub use icmp::{learned_mtu, ptb, send_icmp, IcmpWatch, Seen};

use crate::agent::PinnedMaps;
use crate::lab::backend_addrs;
use crate::netns::run_in;

/// What a connection attempt or a request got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, by the server of that name (a backend's `b{i}`, or a greeter's).
    Served(String),
    /// Refused by a host (TCP RST, ICMP port unreachable).
    Refused,
    /// Nothing came back before the timeout: dropped on the way.
    Dropped,
}

/// One TCP connection attempt from `ns`: the server's greeting, a refusal, or nothing.
pub fn tcp_try(ns: &str, to: SocketAddr, timeout: Duration) -> Result<Outcome> {
    run_in(ns, move || match TcpStream::connect_timeout(&to, timeout) {
        Ok(s) => {
            s.set_read_timeout(Some(timeout))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).with_context(|| format!("greeting from {to}"))?;
            Ok(Outcome::Served(line.trim().to_string()))
        }
        Err(e) if e.kind() == ErrorKind::TimedOut => Ok(Outcome::Dropped),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Outcome::Refused),
        Err(e) => Err(e).with_context(|| format!("connect {to}")),
    })?
}

/// One UDP request from `ns` (a new socket): the answer, a port unreachable, or nothing.
pub fn udp_try(ns: &str, to: SocketAddr, timeout: Duration) -> Result<Outcome> {
    run_in(ns, move || -> Result<Outcome> {
        let s = UdpSocket::bind(unspecified(to))?;
        s.connect(to)?;
        s.set_read_timeout(Some(timeout))?;
        s.send(b"who")?;
        let mut buf = [0u8; 64];
        match s.recv(&mut buf) {
            Ok(n) => Ok(Outcome::Served(String::from_utf8_lossy(&buf[..n]).into_owned())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(Outcome::Dropped),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Outcome::Refused),
            Err(e) => Err(e).with_context(|| format!("UDP request to {to}")),
        }
    })?
}

/// A probe: `tcp_try` or `udp_try`.
pub type Probe = fn(&str, SocketAddr, Duration) -> Result<Outcome>;

/// Runs probes from `ns` side by side (each may wait `timeout` for nothing).
pub fn side_by_side(ns: &str, probes: &[(Probe, SocketAddr)], timeout: Duration) -> Result<Vec<(SocketAddr, Outcome)>> {
    std::thread::scope(|s| {
        let running: Vec<_> = probes.iter().map(|&(p, to)| s.spawn(move || Ok((to, p(ns, to, timeout)?)))).collect();
        running.into_iter().map(|h| h.join().map_err(|_| anyhow!("a probe panicked"))?).collect()
    })
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    let any: IpAddr = if like.is_ipv4() { [0u8; 4].into() } else { [0u8; 16].into() };
    SocketAddr::new(any, 0)
}

/// TCP listeners in `ns` on `addrs` (IPv6 ones v6-only) that greet every connection
/// with `name` and close it. They live as long as the process.
pub fn greeter(ns: &str, name: &str, addrs: &[SocketAddr]) -> Result<()> {
    let addrs = addrs.to_vec();
    let listeners = run_in(ns, move || -> std::io::Result<Vec<TcpListener>> {
        addrs
            .iter()
            .map(|a| {
                let s = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
                if a.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.set_reuse_address(true)?;
                s.bind(&(*a).into())?;
                s.listen(64)?;
                Ok(s.into())
            })
            .collect()
    })??;
    for l in listeners {
        let name = name.to_string();
        std::thread::spawn(move || {
            for mut conn in l.incoming().flatten() {
                let _ = writeln!(conn, "{name}");
            }
        });
    }
    Ok(())
}

/// One `[[vip]]` of a config file.
pub struct VipConf {
    pub vip: SocketAddr,
    pub proto: &'static str,
    /// Extra lines of the VIP's table (`session_affinity = ...`).
    pub lines: Vec<String>,
    /// (backend index, weight, draining); every backend at full weight at once.
    pub backends: Vec<(usize, u32, bool)>,
}

impl VipConf {
    pub fn new(vip: SocketAddr, proto: &'static str, backends: &[(usize, u32, bool)]) -> VipConf {
        VipConf { vip, proto, lines: vec![], backends: backends.to_vec() }
    }
    pub fn line(mut self, line: &str) -> VipConf {
        self.lines.push(line.to_string());
        self
    }
}

/// The config file text for `vips`.
pub fn config(vips: &[VipConf]) -> String {
    let mut out = String::new();
    for v in vips {
        out += &format!("[[vip]]\naddress = \"{}/{}\"\n", v.vip, v.proto);
        for l in &v.lines {
            out += &format!("{l}\n");
        }
        for (i, w, draining) in &v.backends {
            let (b4, b6) = backend_addrs(*i);
            let addr = if v.vip.is_ipv4() { b4 } else { b6 };
            out += &format!("[[vip.backend]]\naddress = \"{addr}\"\nweight = {w}\nstart_progress = 100\n");
            if *draining {
                out += "draining = true\n";
            }
        }
    }
    out
}

/// Whether the maps hold `list` (index, weight, draining) for both families' backends.
pub fn programmed(maps: &PinnedMaps, list: &[(usize, u32, bool)]) -> Result<bool> {
    for (i, w, draining) in list {
        let (b4, b6) = backend_addrs(*i);
        for addr in [b4, b6] {
            let Some(b) = maps.backend_by_addr(addr)? else { return Ok(false) };
            let ok = if *draining {
                b.flags & BACKEND_F_DRAINING != 0
            } else {
                b.flags & (BACKEND_F_ACTIVE | BACKEND_F_DRAINING) == BACKEND_F_ACTIVE && b.target_weight == *w
            };
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Reason counters read at one moment, to see which moved since.
pub struct Since<'a>(&'a PinnedMaps, Vec<u64>);

impl<'a> Since<'a> {
    pub fn now(maps: &'a PinnedMaps) -> Result<Since<'a>> {
        Ok(Since(maps, (0..REASON_COUNT).map(|r| maps.reason(r)).collect::<Result<_>>()?))
    }
    pub fn moved(&self, r: Reason) -> Result<u64> {
        Ok(self.0.reason(r.0)? - self.1[r.0 as usize])
    }
}

/// A flow from the client to a VIP, kept open, and the backend that answered it.
pub struct Flow {
    pub backend: String,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    /// `lb_common::PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    _tcp: Option<TcpStream>,
    _udp: Option<UdpSocket>,
}

/// A UDP flow: two requests from one socket, both answered by the same backend.
pub fn udp_flow(ns: &str, vip: SocketAddr) -> Result<Flow> {
    run_in(ns, move || -> Result<Flow> {
        let s = UdpSocket::bind(unspecified(vip))?;
        s.connect(vip)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut names = vec![];
        for _ in 0..2 {
            s.send(b"who")?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).with_context(|| format!("UDP flow to {vip}: no answer"))?;
            names.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        anyhow::ensure!(names[0] == names[1], "UDP flow to {vip} answered by {names:?}");
        let client = s.local_addr()?;
        Ok(Flow { backend: names.remove(0), client, vip, proto: lb_common::PROTO_UDP, _tcp: None, _udp: Some(s) })
    })?
}

/// A TCP connection, kept open after the backend's greeting.
pub fn tcp_flow(ns: &str, vip: SocketAddr) -> Result<Flow> {
    run_in(ns, move || -> Result<Flow> {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).with_context(|| format!("connect {vip}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(s.try_clone()?).read_line(&mut line).context("greeting")?;
        let client = s.local_addr()?;
        Ok(Flow {
            backend: line.trim().to_string(),
            client,
            vip,
            proto: lb_common::PROTO_TCP,
            _tcp: Some(s),
            _udp: None,
        })
    })?
}

/// What one long-lived UDP socket saw.
#[derive(Debug, Default)]
pub struct UdpReport {
    pub vip: Option<SocketAddr>,
    pub first: String,
    /// Replies per phase (the test moves the phase after each change).
    pub replies: Vec<usize>,
    /// Replies from another backend than `first`: (phase, backend).
    pub moved: Vec<(usize, String)>,
    pub lost: usize,
    pub error: Option<String>,
}

/// UDP sockets, each connected to a VIP and sending a request every `every`.
pub struct UdpStreams {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    pub first: Vec<String>,
    handles: Vec<JoinHandle<UdpReport>>,
}

impl UdpStreams {
    /// Opens `n` sockets per VIP in `vips` from `ns`; each got its first answer on return.
    pub fn start(ns: &str, vips: &[SocketAddr], n: usize, every: Duration) -> Result<UdpStreams> {
        let (stop, phase) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let mut streams = UdpStreams { stop, phase, first: vec![], handles: vec![] };
        for vip in vips.iter().flat_map(|v| std::iter::repeat_n(*v, n)) {
            let flow = udp_flow(ns, vip)?;
            let sock = flow._udp.context("UDP flow socket")?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut r = UdpReport { vip: Some(vip), first: flow.backend, replies: vec![0], ..Default::default() };
            streams.first.push(r.first.clone());
            let (stop, phase) = (streams.stop.clone(), streams.phase.clone());
            streams.handles.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let p = phase.load(Ordering::Relaxed);
                    r.replies.resize(r.replies.len().max(p + 1), 0);
                    let got = sock.send(b"tick").and_then(|_| sock.recv(&mut buf));
                    match got {
                        Ok(len) => {
                            let name = String::from_utf8_lossy(&buf[..len]).into_owned();
                            r.replies[p] += 1;
                            if name != r.first {
                                r.moved.push((p, name));
                            }
                        }
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => r.lost += 1,
                        Err(e) => {
                            r.error = Some(e.to_string());
                            break;
                        }
                    }
                    std::thread::sleep(every);
                }
                r
            }));
        }
        Ok(streams)
    }

    /// Starts the next phase (call after each change is programmed).
    pub fn next_phase(&self) {
        self.phase.fetch_add(1, Ordering::Relaxed);
    }

    pub fn finish(self) -> Result<Vec<UdpReport>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("UDP stream thread panicked"))).collect()
    }
}
