//! Hand-made ICMP "fragmentation needed" / ICMPv6 "packet too big" messages, sent with
//! raw sockets, and raw sockets in the backends that see where they arrive.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};

use anyhow::{anyhow, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Flow;
use crate::lab::Lab;
use crate::netns::{ip, run_in};

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" quoting a reply of
/// the flow `vip` -> `client` (a truncated 1400-byte packet, as a router would). The
/// ICMPv6 checksum is left to the kernel (raw ICMPv6 sockets always compute it).
pub fn ptb(vip: SocketAddr, client: SocketAddr, proto: u8, mtu: u16) -> Vec<u8> {
    let mut l4 = [vip.port().to_be_bytes(), client.port().to_be_bytes()].concat();
    if proto == lb_common::PROTO_TCP {
        l4.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&(1400u16 - 20).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    match (vip.ip(), client.ip()) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            let mut inner = vec![0x45, 0, 0x05, 0x78, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
            inner.extend_from_slice(&v.octets());
            inner.extend_from_slice(&c.octets());
            let sum = checksum(&inner);
            inner[10..12].copy_from_slice(&sum.to_be_bytes());
            let mut icmp = vec![3, 4, 0, 0, 0, 0];
            icmp.extend_from_slice(&mtu.to_be_bytes());
            icmp.extend_from_slice(&inner);
            icmp.extend_from_slice(&l4);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            icmp
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            let mut icmp = vec![2, 0, 0, 0];
            icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
            icmp.extend_from_slice(&[0x60, 0, 0, 0, 0x05, 0x50, proto, 64]);
            icmp.extend_from_slice(&v.octets());
            icmp.extend_from_slice(&c.octets());
            icmp.extend_from_slice(&l4);
            icmp
        }
        _ => panic!("ptb: {vip} and {client} are of different families"),
    }
}

fn raw_icmp(v6: bool) -> std::io::Result<Socket> {
    if v6 {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
    }
}

/// Sends an ICMP/ICMPv6 message (`ptb`'s output) from `ns` to `dst` with a raw socket.
pub fn send_icmp(ns: &str, dst: IpAddr, msg: Vec<u8>) -> Result<()> {
    run_in(ns, move || -> std::io::Result<()> {
        raw_icmp(dst.is_ipv6())?.send_to(&msg, &SockAddr::from(SocketAddr::new(dst, 0)))?;
        Ok(())
    })??;
    Ok(())
}

/// A packet-too-big message a backend received: which flow's replies it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub v6: bool,
    /// Inner protocol and inner destination port (the client's port).
    pub proto: u8,
    pub client_port: u16,
}

impl Seen {
    pub fn of(flow: &Flow) -> Seen {
        Seen { v6: flow.vip.is_ipv6(), proto: flow.proto, client_port: flow.client.port() }
    }
}

/// Raw ICMP and ICMPv6 sockets in every backend's namespace: which packet-too-big
/// messages each backend received.
pub struct IcmpWatch {
    socks: Vec<[Socket; 2]>,
    pub seen: Vec<Vec<Seen>>,
}

impl IcmpWatch {
    pub fn open(lab: &Lab) -> Result<IcmpWatch> {
        let mut socks = vec![];
        for i in 0..lab.backends {
            socks.push(run_in(&lab.backend(i), || -> std::io::Result<[Socket; 2]> {
                let pair = [raw_icmp(false)?, raw_icmp(true)?];
                for s in &pair {
                    s.set_nonblocking(true)?;
                }
                Ok(pair)
            })??);
        }
        Ok(IcmpWatch { seen: vec![vec![]; socks.len()], socks })
    }

    /// Reads what arrived since the last call into `seen`.
    pub fn collect(&mut self) -> Result<()> {
        let mut buf = [0u8; 2048];
        for (i, pair) in self.socks.iter().enumerate() {
            for (v6, mut s) in [(false, &pair[0]), (true, &pair[1])] {
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(anyhow!("reading ICMP in backend {i}: {e}")),
                    };
                    self.seen[i].extend(parse_ptb(&buf[..n], v6));
                }
            }
        }
        Ok(())
    }
}

/// What a received PTB is about: an IPv4 raw socket reads the IP header too, an
/// ICMPv6 one only the ICMPv6 message.
fn parse_ptb(p: &[u8], v6: bool) -> Option<Seen> {
    let at = |i: usize| p.get(i).copied();
    let port = |i: usize| Some(u16::from_be_bytes([at(i)?, at(i + 1)?]));
    if v6 {
        (at(0)? == 2).then_some(())?;
        Some(Seen { v6, proto: at(8 + 6)?, client_port: port(8 + 40 + 2)? })
    } else {
        let icmp = usize::from(at(0)? & 15) * 4;
        (at(icmp)? == 3 && at(icmp + 1)? == 4).then_some(())?;
        let inner = icmp + 8;
        let l4 = inner + usize::from(at(inner)? & 15) * 4;
        Some(Seen { v6, proto: at(inner + 9)?, client_port: port(l4 + 2)? })
    }
}

/// Whether backend `i` learned a path MTU of `mtu` towards `client` (`ip route get`).
pub fn learned_mtu(lab: &Lab, i: usize, client: IpAddr, mtu: u16) -> Result<bool> {
    let fam = if client.is_ipv6() { "-6" } else { "-4" };
    let route = ip(&lab.backend(i), &[fam, "route", "get", &client.to_string()])?;
    Ok(route.contains(&format!("mtu {mtu}")))
}
