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

/// A TCP connection from a chosen local address (any port).
fn connect_from(src: IpAddr, vip: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (domain, len) = if vip.is_ipv4() { (libc::AF_INET, 16) } else { (libc::AF_INET6, 28) };
    // SAFETY: plain socket syscalls on a descriptor owned by the returned stream.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let (local, remote) = (sockaddr(SocketAddr::new(src, 0)), sockaddr(vip));
        if libc::bind(fd, local.as_ptr().cast(), len) != 0 || libc::connect(fd, remote.as_ptr().cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// A `sockaddr_in`/`sockaddr_in6` as bytes.
fn sockaddr(a: SocketAddr) -> Vec<u8> {
    let mut out = vec![0u8; 28];
    match a {
        SocketAddr::V4(v) => {
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v.port().to_be_bytes());
            out[4..8].copy_from_slice(&v.ip().octets());
        }
        SocketAddr::V6(v) => {
            out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v.port().to_be_bytes());
            out[8..24].copy_from_slice(&v.ip().octets());
        }
    }
    out
}

/// Backends of `n` short connections from each of `sources` (client addresses).
pub fn tcp_backends_from(lab: &Lab, sources: Vec<IpAddr>, vip: SocketAddr, n: usize) -> Result<Vec<Vec<String>>> {
    run_in(&lab.client(), move || {
        sources
            .iter()
            .map(|src| {
                (0..n)
                    .map(|_| {
                        let stream = connect_from(*src, vip).with_context(|| format!("connect {src} -> {vip}"))?;
                        greet(stream, vip).map(|c| c.backend)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()
    })?
}

fn open(vip: SocketAddr) -> Result<Conn> {
    let stream = TcpStream::connect_timeout(&vip, TIMEOUT).with_context(|| format!("connect {vip}"))?;
    greet(stream, vip)
}

fn greet(stream: TcpStream, vip: SocketAddr) -> Result<Conn> {
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

/// One short connection: connect, read the greeting, close. Returns the backend.
pub fn open_and_close(vip: SocketAddr) -> Result<String> {
    let mut c = open(vip)?;
    c.stream.get_mut().shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest)?;
    Ok(c.backend)
}

/// Opens `n` short TCP connections; returns the backend of each.
pub fn tcp_backends(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<String>> {
    run_in(&lab.client(), move || {
        (0..n).map(|i| open_and_close(vip).with_context(|| format!("connection {i}"))).collect::<Result<Vec<_>>>()
    })?
}

/// Sends `n` UDP requests, each from a new socket (a new source port); returns the
/// backend that answered each.
pub fn udp_backends(lab: &Lab, vip: SocketAddr, n: usize) -> Result<Vec<String>> {
    udp_backends_from(lab, vip, n, 0)
}

/// As `udp_backends`, from source ports `first_port..first_port + n` (0: the kernel's
/// choice). A UDP flow is its addresses and ports: a source port used within the flow
/// idle time is the same flow and keeps its backend, so a check that new flows avoid a
/// draining backend must use ports it never used before (below the ephemeral range).
pub fn udp_backends_from(lab: &Lab, vip: SocketAddr, n: usize, first_port: u16) -> Result<Vec<String>> {
    run_in(&lab.client(), move || {
        (0..n)
            .map(|i| {
                let port = if first_port == 0 { 0 } else { first_port + i as u16 };
                let any: std::net::IpAddr = if vip.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                };
                let s = UdpSocket::bind(SocketAddr::new(any, port))?;
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
