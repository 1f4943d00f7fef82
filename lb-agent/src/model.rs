//! The wanted state, independent of where it came from and of how it is applied.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use lb_common::{VipKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A VIP: the (address, port, protocol) that packets are matched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl Vip {
    /// The `VIPS` map key for this VIP.
    pub fn key(&self) -> VipKey {
        VipKey {
            addr: addr_bytes(self.addr),
            port_be: self.port.to_be(),
            proto: self.proto.number(),
            family: family(self.addr),
        }
    }
}

impl Vip {
    /// The VIP a `VIPS` key stands for (`None` for a protocol or family we never write).
    pub fn from_key(key: &VipKey) -> Option<Vip> {
        let proto = match key.proto {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        if key.family != FAMILY_V4 && key.family != FAMILY_V6 {
            return None;
        }
        Some(Vip { addr: addr_from_bytes(key.family, &key.addr), port: u16::from_be(key.port_be), proto })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.addr, self.port), self.proto.name())
    }
}

/// Why a VIP string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipSyntax {
    #[error("expected ADDRESS:PORT/PROTOCOL, e.g. 192.0.2.10:80/tcp or [2001:db8::10]:53/udp")]
    Shape,
    #[error("protocol must be tcp or udp")]
    Protocol,
    #[error("port must be 1-65535")]
    Port,
}

impl FromStr for Vip {
    type Err = VipSyntax;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (sock, proto) = s.rsplit_once('/').ok_or(VipSyntax::Shape)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(VipSyntax::Protocol),
        };
        let sock: SocketAddr = sock.parse().map_err(|_| VipSyntax::Shape)?;
        if sock.port() == 0 {
            return Err(VipSyntax::Port);
        }
        Ok(Vip { addr: sock.ip(), port: sock.port(), proto })
    }
}

/// A backend as wanted: where to send, and its target weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    pub weight: u32,
    /// Ramp progress (percent) a new backend starts at; `None` = the default.
    pub start_progress: Option<u32>,
    /// Marked draining by its source: weight 0, established flows continue.
    pub draining: bool,
}

impl BackendSpec {
    pub fn new(addr: IpAddr, weight: u32) -> Self {
        BackendSpec { addr, weight, start_progress: None, draining: false }
    }
}

/// A VIP as wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipSpec {
    pub backends: Vec<BackendSpec>,
    /// Per-VIP slow-start override (step in points, interval).
    pub ramp: Option<RampPolicy>,
    /// Client-address affinity timeout in seconds; 0 = none.
    pub affinity_timeout_s: u32,
    /// Allowed clients; empty = every client.
    pub source_ranges: Vec<ipnet::IpNet>,
}

/// Largest accepted weight (IPVS accepts the same range).
pub const MAX_WEIGHT: u32 = 65_535;
pub const DEFAULT_WEIGHT: u32 = 1;

/// The wanted state: every VIP with its backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub vips: BTreeMap<Vip, VipSpec>,
}

/// Address bytes in the layout of `VipKey::addr` / `Backend::addr`.
pub fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

pub fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// The inverse of `addr_bytes`.
pub fn addr_from_bytes(family_: u8, bytes: &[u8; 16]) -> IpAddr {
    if family_ == FAMILY_V4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_parse_and_display() {
        let v: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        assert_eq!(v.to_string(), "192.0.2.10:80/tcp");
        let v: Vip = "[2001:db8::10]:53/UDP".parse().unwrap();
        assert_eq!(v.to_string(), "[2001:db8::10]:53/udp");
        assert_eq!("192.0.2.10:80".parse::<Vip>(), Err(VipSyntax::Shape));
        assert_eq!("192.0.2.10:80/sctp".parse::<Vip>(), Err(VipSyntax::Protocol));
        assert_eq!("192.0.2.10:0/tcp".parse::<Vip>(), Err(VipSyntax::Port));
        assert_eq!("300.0.2.10:80/tcp".parse::<Vip>(), Err(VipSyntax::Shape));
    }

    #[test]
    fn key_layout() {
        let v: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let k = v.key();
        assert_eq!(&k.addr[..4], &[192, 0, 2, 10]);
        assert!(k.addr[4..].iter().all(|&b| b == 0));
        assert_eq!(k.port_be, 80u16.to_be());
        assert_eq!((k.proto, k.family), (6, 4));
        assert_eq!(addr_from_bytes(4, &k.addr), v.addr);
        assert_eq!(Vip::from_key(&k), Some(v));
        let v6: Vip = "[2001:db8::1]:53/udp".parse().unwrap();
        assert_eq!(Vip::from_key(&v6.key()), Some(v6));
    }
}

/// Slow start: how a new backend's weight ramps up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RampPolicy {
    /// Percentage points added per interval (1-100).
    pub step: u32,
    pub interval: Duration,
}

impl Default for RampPolicy {
    fn default() -> Self {
        RampPolicy { step: 20, interval: Duration::from_secs(10) }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainPolicy {
    /// A drain ends when no live flow is left, but not before this.
    pub min_drain: Duration,
    /// A drain ends at the latest after this.
    pub timeout: Duration,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        DrainPolicy { min_drain: Duration::from_secs(5), timeout: Duration::from_secs(300) }
    }
}
