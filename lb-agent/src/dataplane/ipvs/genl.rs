//! The kernel's IPVS generic netlink family (`IPVS`, uapi `linux/ip_vs.h`): commands and
//! attributes as typed values, encoded and decoded with `netlink-packet-core`'s NLA
//! helpers. Only what the data plane uses: services and their destinations (real
//! servers), with their counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    emit_u16, emit_u16_be, emit_u32, parse_string, parse_u16, parse_u16_be, parse_u32, parse_u64, DecodeError,
    DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

pub const FAMILY_NAME: &str = "IPVS";
const VERSION: u8 = 1;

pub const CMD_NEW_SERVICE: u8 = 1;
pub const CMD_SET_SERVICE: u8 = 2;
pub const CMD_DEL_SERVICE: u8 = 3;
pub const CMD_GET_SERVICE: u8 = 4;
pub const CMD_NEW_DEST: u8 = 5;
pub const CMD_SET_DEST: u8 = 6;
pub const CMD_DEL_DEST: u8 = 7;
pub const CMD_GET_DEST: u8 = 8;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_STATS64: u16 = 12;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;

const STATS_ATTR_CONNS: u16 = 1;
const STATS_ATTR_INPKTS: u16 = 2;
const STATS_ATTR_OUTPKTS: u16 = 3;
const STATS_ATTR_INBYTES: u16 = 4;
const STATS_ATTR_OUTBYTES: u16 = 5;

/// Direct routing ("gatewaying"): the frame goes to the real server with only its MAC
/// changed, as the XDP data plane does.
pub const FWD_DIRECT_ROUTE: u32 = 3;
/// Persistent service: a client's connections go to one real server for `timeout`.
pub const SVC_F_PERSISTENT: u32 = 1;
/// Which service flags a SET changes.
pub const SVC_FLAGS_MASK: u32 = 0xffff_ffff;

/// A virtual service: the address, port and protocol it matches, how it schedules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub family: u16,
    pub protocol: u16,
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub scheduler: String,
    pub flags: u32,
    /// Persistence timeout (s), with `SVC_F_PERSISTENT`.
    pub timeout: u32,
    pub stats: Stats,
}

/// A destination (real server) of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dest {
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub forward: u32,
    pub weight: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persist_conns: u32,
    pub stats: Stats,
}

/// A service's or destination's counters, as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// One IPVS request or answer: a command and its service and destination, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub service: Option<Service>,
    pub dest: Option<Dest>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        VERSION
    }
}

/// An attribute to emit: its kind and its value bytes (nested ones pre-encoded).
struct Raw(u16, Vec<u8>);

impl Nla for Raw {
    fn value_len(&self) -> usize {
        self.1.len()
    }
    fn kind(&self) -> u16 {
        self.0
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        buffer[..self.1.len()].copy_from_slice(&self.1);
    }
}

fn u16_ne(v: u16) -> Vec<u8> {
    let mut b = vec![0; 2];
    emit_u16(&mut b, v).expect("2 bytes");
    b
}
fn u16_be(v: u16) -> Vec<u8> {
    let mut b = vec![0; 2];
    emit_u16_be(&mut b, v).expect("2 bytes");
    b
}
fn u32_ne(v: u32) -> Vec<u8> {
    let mut b = vec![0; 4];
    emit_u32(&mut b, v).expect("4 bytes");
    b
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
fn inet_addr(addr: IpAddr) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    match addr {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b.copy_from_slice(&a.octets()),
    }
    b
}

fn parse_inet_addr(family: u16, payload: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET if payload.len() >= 4 => {
            Some(Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]).into())
        }
        libc::AF_INET6 if payload.len() >= 16 => {
            Some(Ipv6Addr::from(<[u8; 16]>::try_from(&payload[..16]).expect("16 bytes")).into())
        }
        _ => None,
    }
}

/// Emits `nlas` one after the other into a byte vector (a nested attribute's value).
fn nested(nlas: &[Raw]) -> Vec<u8> {
    let mut b = vec![0u8; nlas.buffer_len()];
    nlas.emit(&mut b);
    b
}

impl Service {
    /// The attributes that name the service (family, protocol, address, port).
    fn key_nlas(&self) -> Vec<Raw> {
        let mut v = vec![Raw(SVC_ATTR_AF, u16_ne(self.family)), Raw(SVC_ATTR_PROTOCOL, u16_ne(self.protocol))];
        if let Some(a) = self.addr {
            v.push(Raw(SVC_ATTR_ADDR, inet_addr(a)));
        }
        v.push(Raw(SVC_ATTR_PORT, u16_be(self.port)));
        v
    }

    fn nlas(&self, full: bool) -> Vec<Raw> {
        let mut v = self.key_nlas();
        if full {
            let mut sched = self.scheduler.as_bytes().to_vec();
            sched.push(0);
            let mut flags = u32_ne(self.flags);
            flags.extend(u32_ne(SVC_FLAGS_MASK));
            let netmask = if self.family as i32 == libc::AF_INET6 { 128 } else { u32::MAX };
            v.extend([
                Raw(SVC_ATTR_SCHED_NAME, sched),
                Raw(SVC_ATTR_FLAGS, flags),
                Raw(SVC_ATTR_TIMEOUT, u32_ne(self.timeout)),
                Raw(SVC_ATTR_NETMASK, u32_ne(netmask)),
            ]);
        }
        v
    }

    fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut s = Service::default();
        let mut addr = None;
        for nla in NlasIterator::new(payload) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() {
                SVC_ATTR_AF => s.family = parse_u16(v)?,
                SVC_ATTR_PROTOCOL => s.protocol = parse_u16(v)?,
                SVC_ATTR_ADDR => addr = Some(v.to_vec()),
                SVC_ATTR_PORT => s.port = parse_u16_be(v)?,
                SVC_ATTR_SCHED_NAME => s.scheduler = parse_string(v)?,
                SVC_ATTR_FLAGS if v.len() >= 4 => s.flags = parse_u32(&v[..4])?,
                SVC_ATTR_TIMEOUT => s.timeout = parse_u32(v)?,
                SVC_ATTR_STATS64 => s.stats = Stats::parse(v)?,
                _ => {}
            }
        }
        s.addr = addr.and_then(|a| parse_inet_addr(s.family, &a));
        Ok(s)
    }
}

impl Dest {
    fn nlas(&self, family: u16) -> Vec<Raw> {
        let mut v = Vec::new();
        if let Some(a) = self.addr {
            v.push(Raw(DEST_ATTR_ADDR, inet_addr(a)));
        }
        v.extend([
            Raw(DEST_ATTR_PORT, u16_be(self.port)),
            Raw(DEST_ATTR_FWD_METHOD, u32_ne(self.forward)),
            Raw(DEST_ATTR_WEIGHT, u32_ne(self.weight)),
            Raw(DEST_ATTR_U_THRESH, u32_ne(0)),
            Raw(DEST_ATTR_L_THRESH, u32_ne(0)),
            Raw(DEST_ATTR_ADDR_FAMILY, u16_ne(family)),
        ]);
        v
    }

    fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Dest::default();
        let (mut addr, mut family) = (None, 0);
        for nla in NlasIterator::new(payload) {
            let nla = nla?;
            let v = nla.value();
            match nla.kind() {
                DEST_ATTR_ADDR => addr = Some(v.to_vec()),
                DEST_ATTR_PORT => d.port = parse_u16_be(v)?,
                DEST_ATTR_FWD_METHOD => d.forward = parse_u32(v)? & 0x7,
                DEST_ATTR_WEIGHT => d.weight = parse_u32(v)?,
                DEST_ATTR_ACTIVE_CONNS => d.active_conns = parse_u32(v)?,
                DEST_ATTR_INACT_CONNS => d.inactive_conns = parse_u32(v)?,
                DEST_ATTR_PERSIST_CONNS => d.persist_conns = parse_u32(v)?,
                DEST_ATTR_ADDR_FAMILY => family = parse_u16(v)?,
                DEST_ATTR_STATS64 => d.stats = Stats::parse(v)?,
                _ => {}
            }
        }
        // Kernels before 4.x send no family for the destination: it is the service's.
        let family = if family != 0 {
            family
        } else if addr.as_ref().is_some_and(|a| a[4..].iter().any(|b| *b != 0)) {
            libc::AF_INET6 as u16
        } else {
            libc::AF_INET as u16
        };
        d.addr = addr.and_then(|a| parse_inet_addr(family, &a));
        Ok(d)
    }
}

impl Stats {
    fn parse(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut s = Stats::default();
        for nla in NlasIterator::new(payload) {
            let nla = nla?;
            let v = nla.value();
            let value = if v.len() >= 8 { parse_u64(&v[..8])? } else { u64::from(parse_u32(v)?) };
            match nla.kind() {
                STATS_ATTR_CONNS => s.conns = value,
                STATS_ATTR_INPKTS => s.in_packets = value,
                STATS_ATTR_OUTPKTS => s.out_packets = value,
                STATS_ATTR_INBYTES => s.in_bytes = value,
                STATS_ATTR_OUTBYTES => s.out_bytes = value,
                _ => {}
            }
        }
        Ok(s)
    }
}

impl IpvsMessage {
    fn nlas(&self) -> Vec<Raw> {
        let mut v = Vec::new();
        let full = matches!(self.cmd, CMD_NEW_SERVICE | CMD_SET_SERVICE);
        if let Some(s) = &self.service {
            v.push(Raw(CMD_ATTR_SERVICE | NLA_F_NESTED, nested(&s.nlas(full))));
        }
        if let Some(d) = &self.dest {
            let family = self.service.as_ref().map_or(libc::AF_INET as u16, |s| s.family);
            let family =
                d.addr.map_or(family, |a| if a.is_ipv4() { libc::AF_INET as u16 } else { libc::AF_INET6 as u16 });
            v.push(Raw(CMD_ATTR_DEST | NLA_F_NESTED, nested(&d.nlas(family))));
        }
        v
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        let nlas = self.nlas();
        nlas.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        let nlas = self.nlas();
        let nlas: &[Raw] = &nlas;
        Emitable::emit(&nlas, buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(payload: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut m = IpvsMessage { cmd: header.cmd, ..Default::default() };
        for nla in NlasIterator::new(payload) {
            let nla: NlaBuffer<&[u8]> = nla?;
            match nla.kind() & !NLA_F_NESTED {
                CMD_ATTR_SERVICE => m.service = Some(Service::parse(nla.value())?),
                CMD_ATTR_DEST => m.dest = Some(Dest::parse(nla.value())?),
                _ => {
                    let _ = DefaultNla::parse(&nla)?;
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: &IpvsMessage) -> IpvsMessage {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        IpvsMessage::parse_with_param(&b, GenlHeader { cmd: m.cmd, version: VERSION }).unwrap()
    }

    #[test]
    fn services_and_dests_roundtrip() {
        let svc = Service {
            family: libc::AF_INET as u16,
            protocol: libc::IPPROTO_TCP as u16,
            addr: Some("192.0.2.10".parse().unwrap()),
            port: 80,
            scheduler: "wrr".into(),
            flags: SVC_F_PERSISTENT,
            timeout: 300,
            stats: Stats::default(),
        };
        let dest = Dest {
            addr: Some("10.0.0.2".parse().unwrap()),
            port: 80,
            forward: FWD_DIRECT_ROUTE,
            weight: 70,
            ..Dest::default()
        };
        let m = IpvsMessage { cmd: CMD_NEW_DEST, service: Some(svc.clone()), dest: Some(dest.clone()) };
        let back = roundtrip(&m);
        // A DEST command carries the service's key only.
        let key = Service { scheduler: String::new(), flags: 0, timeout: 0, ..svc.clone() };
        assert_eq!(back.service, Some(key));
        assert_eq!(back.dest, Some(dest));
        let m = IpvsMessage { cmd: CMD_NEW_SERVICE, service: Some(svc.clone()), dest: None };
        assert_eq!(roundtrip(&m).service, Some(svc));
        let v6 = Service {
            family: libc::AF_INET6 as u16,
            protocol: libc::IPPROTO_UDP as u16,
            addr: Some("2001:db8::10".parse().unwrap()),
            port: 53,
            scheduler: "mh".into(),
            ..Service::default()
        };
        let m = IpvsMessage { cmd: CMD_SET_SERVICE, service: Some(v6.clone()), dest: None };
        assert_eq!(roundtrip(&m).service, Some(v6));
    }
}
