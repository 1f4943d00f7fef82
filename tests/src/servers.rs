//! Backend servers and client traffic for the lab.
//!
//! A backend's TCP server greets every connection with its name, then echoes lines
//! prefixed with its name; its UDP server answers every datagram with its name. UDP
//! sockets are bound to the VIPs so that replies leave from the VIP (direct return).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, VIP4, VIP6};
use crate::netns::run_in;

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 5353;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the servers of backend `i` (named `b{i}`); they live as long as the process.
pub fn start_backend(lab: &Lab, i: usize) -> Result<()> {
    let name = format!("b{i}");
    let ns = lab.backend(i);
    let (tcp, udp4, udp6) = run_in(&ns, || -> std::io::Result<_> {
        Ok((
            TcpListener::bind(("::", TCP_PORT))?,
            UdpSocket::bind((VIP4.parse::<IpAddr>().unwrap(), UDP_PORT))?,
            UdpSocket::bind((VIP6.parse::<IpAddr>().unwrap(), UDP_PORT))?,
        ))
    })??;
    let n = name.clone();
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            let n = n.clone();
            std::thread::spawn(move || serve_tcp(conn, &n));
        }
    });
    for sock in [udp4, udp6] {
        let n = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(n.as_bytes(), peer);
            }
        });
    }
    Ok(())
}

fn serve_tcp(conn: TcpStream, name: &str) {
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if writeln!(w, "{name}").is_err() {
        return;
    }
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if writeln!(w, "{name}:{line}").is_err() {
            return;
        }
    }
}

/// A TCP connection to a VIP that knows which backend answered.
pub struct Conn {
    pub backend: String,
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Sends a line and checks the echo comes from the same backend.
    pub fn echo(&mut self, line: &str) -> Result<()> {
        writeln!(self.stream.get_mut(), "{line}").context("write")?;
        let mut reply = String::new();
        self.stream.read_line(&mut reply).context("read echo")?;
        let want = format!("{}:{line}", self.backend);
        if reply.trim_end() != want {
            bail!("echo {reply:?}, expected {want:?} (connection moved or broke)");
        }
        Ok(())
    }
}

fn open(vip: SocketAddr) -> Result<Conn> {
    let stream = TcpStream::connect_timeout(&vip, TIMEOUT).with_context(|| format!("connect {vip}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    stream.read_line(&mut name).context("read greeting")?;
    let backend = name.trim().to_string();
    if backend.is_empty() {
        bail!("connection to {vip} closed without a greeting");
    }
    Ok(Conn { backend, stream })
}

/// Opens `n` TCP connections to `vip` from the client namespace and keeps them.
pub fn connect_many(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<Conn>> {
    run_in(&lab.client(), move || (0..n).map(|_| open(vip)).collect::<Result<Vec<_>>>())?
}

/// Opens `n` short TCP connections; returns the backend of each.
pub fn tcp_backends(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<String>> {
    run_in(&lab.client(), move || {
        (0..n)
            .map(|i| {
                let mut c = open(vip).with_context(|| format!("connection {i}"))?;
                let mut rest = Vec::new();
                c.stream.get_mut().shutdown(std::net::Shutdown::Write)?;
                c.stream.read_to_end(&mut rest)?;
                Ok(c.backend)
            })
            .collect::<Result<Vec<_>>>()
    })?
}

/// Sends `n` UDP requests, each from a new socket (a new source port); returns the
/// backend that answered each.
pub fn udp_backends(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<String>> {
    run_in(&lab.client(), move || {
        (0..n)
            .map(|i| {
                let bind: SocketAddr = if vip.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
                let s = UdpSocket::bind(bind)?;
                s.connect(vip)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.send(b"who")?;
                let mut buf = [0u8; 64];
                let len = s.recv(&mut buf).with_context(|| format!("UDP request {i} to {vip}: no answer"))?;
                Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
            })
            .collect::<Result<Vec<_>>>()
    })?
}

/// Share of each backend name in `names`.
pub fn split(names: &[String]) -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0.0) += 1.0;
    }
    m.values_mut().for_each(|v| *v /= names.len() as f64);
    m
}
