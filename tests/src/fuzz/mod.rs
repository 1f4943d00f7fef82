//! Fuzzing the XDP program: a frame generator (`gen`, `mutate`, `wire`) and an oracle
//! (`oracle`) written from the issue 8 decision order, byte offsets and RFC field
//! meanings only. Neither calls lb-common's parsing, hashing or Maglev code, nor
//! `lb_agent::dataplane::xdp::explain`: the only shared piece is the numbering of the reasons, which is
//! the contract itself.
//!
//! `World` is the configuration both sides see: the test turns it into an agent
//! `Snapshot` (`World::snapshot`), the oracle reads it directly.

pub mod gen;
pub mod mutate;
pub mod oracle;
pub mod wire;

use std::net::IpAddr;

use anyhow::{Context, Result};
use lb_agent::dataplane::{SnapBackend, SnapVip, Snapshot};
use lb_agent::model::Vip;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// SplitMix64: small, seedable, and good enough to drive a fuzzer.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn u16(&mut self) -> u16 {
        self.next_u64() as u16
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// An address range, matched family-aware (an IPv4 range never matches an IPv6 client).
#[derive(Clone, Copy, Debug)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip): (Vec<u8>, Vec<u8>) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => (n.octets().to_vec(), a.octets().to_vec()),
            (IpAddr::V6(n), IpAddr::V6(a)) => (n.octets().to_vec(), a.octets().to_vec()),
            _ => return false,
        };
        let bits = self.len as usize;
        let whole = bits / 8;
        if net[..whole] != ip[..whole] {
            return false;
        }
        let rest = bits % 8;
        rest == 0 || (net[whole] ^ ip[whole]) & (0xffu8 << (8 - rest)) == 0
    }
}

/// One VIP as the test configures it.
#[derive(Clone, Debug)]
pub struct FuzzVip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    /// (address, MAC) of every backend; empty = a VIP with no backend.
    pub backends: Vec<(IpAddr, [u8; 6])>,
    /// Allowed clients; empty = everyone.
    pub ranges: Vec<Cidr>,
    pub affinity_s: u32,
}

/// The configuration under test.
#[derive(Clone, Debug)]
pub struct World {
    pub vips: Vec<FuzzVip>,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("test constant {s}: {e}"))
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap_or_else(|| panic!("test constant {s}: no prefix length"));
    Cidr { addr: ip(a), len: l.parse().unwrap_or_else(|e| panic!("test constant {s}: {e}")) }
}

/// Source ranges of the range-limited VIPs, per family (the agent's config refuses a
/// range of the other family, so a data plane only ever gets ranges of the VIP's). The
/// client pools (`gen`) hold addresses on both sides of every boundary.
pub const RANGES4: [&str; 2] = ["198.51.100.0/24", "203.0.113.128/25"];
pub const RANGES6: [&str; 3] = ["2001:db8:1::/48", "2001:db8:8000::/33", "2001:dc0::/32"];

impl World {
    /// VIPs of both families and protocols; one without backends, one with source ranges
    /// per family, one with affinity per family. Every backend has its own MAC.
    pub fn standard() -> World {
        #[rustfmt::skip]
        let table: [(&str, u16, u8, usize, bool, u32); 12] = [
            ("192.0.2.10", 80, TCP, 3, false, 0),
            ("192.0.2.10", 53, UDP, 2, false, 0),
            ("192.0.2.11", 80, TCP, 0, false, 0),
            ("192.0.2.12", 443, TCP, 2, true, 0),
            ("192.0.2.12", 443, UDP, 2, true, 0),
            ("192.0.2.13", 8080, TCP, 3, false, 60),
            ("192.0.2.13", 5000, UDP, 2, false, 60),
            ("2001:db8::10", 80, TCP, 2, false, 0),
            ("2001:db8::10", 53, UDP, 3, false, 0),
            ("2001:db8::11", 443, UDP, 2, true, 0),
            ("2001:db8::12", 80, TCP, 0, false, 0),
            ("2001:db8::13", 8443, TCP, 2, false, 30),
        ];
        let vips = table
            .iter()
            .enumerate()
            .map(|(i, &(addr, port, proto, n, limited, affinity_s))| {
                let addr = ip(addr);
                let backends = (0..n)
                    .map(|b| {
                        let host = (i * 8 + b + 2) as u8;
                        let baddr = match addr {
                            IpAddr::V4(_) => IpAddr::from([10, 0, 0, host]),
                            IpAddr::V6(_) => IpAddr::from([0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, u16::from(host)]),
                        };
                        (baddr, [0x02, 0xbe, 0, 0, i as u8, b as u8])
                    })
                    .collect();
                let ranges = match (limited, addr.is_ipv6()) {
                    (false, _) => vec![],
                    (true, false) => RANGES4.iter().map(|s| cidr(s)).collect(),
                    (true, true) => RANGES6.iter().map(|s| cidr(s)).collect(),
                };
                FuzzVip { addr, port, proto, backends, ranges, affinity_s }
            })
            .collect();
        World { vips }
    }

    /// Some VIP has this address (any port, any protocol).
    pub fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr == addr)
    }

    /// The index of the VIP (address, port, protocol).
    pub fn vip(&self, addr: IpAddr, port: u16, proto: u8) -> Option<usize> {
        self.vips.iter().position(|v| v.addr == addr && v.port == port && v.proto == proto)
    }

    /// Every distinct VIP address.
    pub fn addrs(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.vips.iter().map(|v| v.addr).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The agent's view of this configuration.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        for v in &self.vips {
            let proto = if v.proto == TCP { "tcp" } else { "udp" };
            let name = format!("{}/{proto}", std::net::SocketAddr::new(v.addr, v.port));
            let key: Vip = name.parse().with_context(|| format!("VIP {name}"))?;
            let backends = v.backends.iter().map(|(a, mac)| SnapBackend::steady(*a, 1, Some(*mac))).collect();
            let source_ranges = v
                .ranges
                .iter()
                .map(|c| format!("{}/{}", c.addr, c.len).parse().with_context(|| format!("range {c:?}")))
                .collect::<Result<_>>()?;
            s.vips.insert(key, SnapVip { backends, affinity_timeout_s: v.affinity_s, source_ranges });
        }
        Ok(s)
    }
}

/// Lower-case hex of a frame, 32 bytes a line, for failure messages.
pub fn hex(frame: &[u8]) -> String {
    frame.chunks(32).map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matches_by_family_and_prefix() {
        let c = cidr("198.51.100.0/24");
        assert!(c.contains(ip("198.51.100.255")));
        assert!(!c.contains(ip("198.51.101.0")));
        assert!(!c.contains(ip("c633:6400::")), "no cross-family match");
        let c = cidr("203.0.113.128/25");
        assert!(c.contains(ip("203.0.113.128")) && !c.contains(ip("203.0.113.127")));
        assert!(cidr("2001:db8:8000::/33").contains(ip("2001:db8:ffff::1")));
        assert!(!cidr("2001:db8:8000::/33").contains(ip("2001:db8:7fff::1")));
        assert!(!cidr("2001:dc0::/32").contains(ip("32.1.13.192")), "IPv4 alias of the prefix bytes");
    }

    #[test]
    fn rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
