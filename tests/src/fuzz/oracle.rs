//! What the XDP program must do with a frame, from the issue 8 decision order alone.
//!
//! Offsets are those of the RFCs: Ethernet II (ethertype at 12), IPv4 (RFC 791: version
//! and IHL at 0, total length at 2, flags + fragment offset at 6, protocol at 9,
//! addresses at 12 and 16), IPv6 (RFC 8200: payload length at 4, next header at 6,
//! addresses at 8 and 24), TCP (data offset at 12), UDP (length at 4), ICMP / ICMPv6
//! (type, code, 4 bytes, then the quoted packet of an error).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::stats::Reason;

use super::{World, ICMP, ICMPV6, TCP, UDP};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// IPv6 next-header values that are extension headers, not a transport.
const IPV6_EXT: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

/// Where a forwarded frame goes: the VIP and the client flow it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Forward {
    pub vip: usize,
    pub client: IpAddr,
    pub client_port: u16,
}

/// The oracle's answer for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub reason: Reason,
    /// For `Reason::TX`.
    pub forward: Option<Forward>,
    /// A forwarded IPv4 frame with options (`note_ipv4_options`).
    pub ipv4_options: bool,
    /// A forwarded ICMP frag-needed / ICMPv6 packet-too-big (`note_icmp_ptb`).
    pub ptb: bool,
}

impl Expected {
    fn verdict(reason: Reason) -> Expected {
        Expected { reason, forward: None, ipv4_options: false, ptb: false }
    }

    /// The XDP action the reason implies.
    pub fn action(&self) -> u32 {
        action_of(self.reason)
    }
}

/// XDP action of a verdict reason: tx, then five pass reasons, then drops.
pub fn action_of(reason: Reason) -> u32 {
    match reason.0 {
        0 => XDP_TX,
        1..=5 => XDP_PASS,
        _ => XDP_DROP,
    }
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        _ => "XDP_?",
    }
}

fn be16(f: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([f[off], f[off + 1]])
}

fn v4_at(f: &[u8], off: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(f[off], f[off + 1], f[off + 2], f[off + 3]))
}

fn v6_at(f: &[u8], off: usize) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&f[off..off + 16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

/// The IP layer of a frame whose IP header is complete and consistent.
struct Ip {
    v6: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: usize,
    l4len: usize,
    /// An IPv4 fragment or an IPv6 extension header: no transport header to read.
    opaque: bool,
    options: bool,
}

/// Steps 1 and 2: Ethernet and the IP header.
fn ip_layer(f: &[u8]) -> Result<Ip, Reason> {
    let len = f.len();
    if len < 14 {
        return Err(Reason::PASS_TRUNCATED);
    }
    match be16(f, 12) {
        0x0800 => ipv4(f),
        0x86dd => ipv6(f),
        _ => Err(Reason::PASS_NOT_IP),
    }
}

fn ipv4(f: &[u8]) -> Result<Ip, Reason> {
    let len = f.len();
    if len < 14 + 20 {
        return Err(Reason::PASS_TRUNCATED);
    }
    if f[14] >> 4 != 4 {
        return Err(Reason::PASS_MALFORMED);
    }
    let hlen = usize::from(f[14] & 0x0f) * 4;
    if hlen < 20 {
        return Err(Reason::PASS_MALFORMED);
    }
    if 14 + hlen > len {
        return Err(Reason::PASS_TRUNCATED);
    }
    let total = usize::from(be16(f, 16));
    if total < hlen {
        return Err(Reason::PASS_MALFORMED);
    }
    if 14 + total > len {
        return Err(Reason::PASS_TRUNCATED);
    }
    Ok(Ip {
        v6: false,
        src: v4_at(f, 26),
        dst: v4_at(f, 30),
        proto: f[23],
        l4: 14 + hlen,
        l4len: total - hlen,
        opaque: be16(f, 20) & 0x3fff != 0,
        options: hlen > 20,
    })
}

fn ipv6(f: &[u8]) -> Result<Ip, Reason> {
    let len = f.len();
    if len < 14 + 40 {
        return Err(Reason::PASS_TRUNCATED);
    }
    if f[14] >> 4 != 6 {
        return Err(Reason::PASS_MALFORMED);
    }
    let payload = usize::from(be16(f, 18));
    if 54 + payload > len {
        return Err(Reason::PASS_TRUNCATED);
    }
    let next = f[20];
    Ok(Ip {
        v6: true,
        src: v6_at(f, 22),
        dst: v6_at(f, 38),
        proto: next,
        l4: 54,
        l4len: payload,
        opaque: IPV6_EXT.contains(&next),
        options: false,
    })
}

/// The verdict, reason and notes the program must produce for `f`.
pub fn expect(world: &World, f: &[u8]) -> Expected {
    let ip = match ip_layer(f) {
        Ok(ip) => ip,
        Err(reason) => return Expected::verdict(reason),
    };
    if !world.is_vip_addr(ip.dst) {
        return Expected::verdict(Reason::PASS_NOT_VIP);
    }
    let mut e = match to_vip_addr(world, f, &ip) {
        Ok(e) => e,
        Err(reason) => Expected::verdict(reason),
    };
    // Any forwarded IPv4 frame with options, path-MTU errors included: the spec's
    // "a *forwarded* IPv4 packet carried options" makes no exception for them.
    e.ipv4_options = e.reason == Reason::TX && ip.options;
    e
}

/// Step 4: a packet to a VIP address.
fn to_vip_addr(world: &World, f: &[u8], ip: &Ip) -> Result<Expected, Reason> {
    if ip.opaque {
        return Err(Reason::DROP_CLOSED);
    }
    let l4 = ip.l4;
    match ip.proto {
        TCP => {
            if ip.l4len < 20 {
                return Err(Reason::PASS_MALFORMED);
            }
            let doff = usize::from(f[l4 + 12] >> 4) * 4;
            if doff < 20 || doff > ip.l4len {
                return Err(Reason::PASS_MALFORMED);
            }
        }
        UDP => {
            if ip.l4len < 8 {
                return Err(Reason::PASS_MALFORMED);
            }
            let ulen = usize::from(be16(f, l4 + 4));
            if ulen < 8 || ulen > ip.l4len {
                return Err(Reason::PASS_MALFORMED);
            }
        }
        ICMP if !ip.v6 => return icmp(world, f, ip),
        ICMPV6 if ip.v6 => return icmp(world, f, ip),
        _ => return Err(Reason::DROP_CLOSED),
    }
    let (sport, dport) = (be16(f, l4), be16(f, l4 + 2));
    let vip = world.vip(ip.dst, dport, ip.proto).ok_or(Reason::DROP_CLOSED)?;
    admit(world, vip, ip.src, sport, false)
}

/// Step 5: source ranges, then backends.
fn admit(world: &World, vip: usize, client: IpAddr, client_port: u16, ptb: bool) -> Result<Expected, Reason> {
    let v = &world.vips[vip];
    if !v.ranges.is_empty() && !v.ranges.iter().any(|c| c.contains(client)) {
        return Err(Reason::DROP_SOURCE_RANGE);
    }
    if v.backends.is_empty() {
        return Err(Reason::DROP_NO_BACKEND);
    }
    let forward = Some(Forward { vip, client, client_port });
    Ok(Expected { reason: Reason::TX, forward, ipv4_options: false, ptb })
}

/// ICMP to a VIP address: answered locally, a path-MTU error about a VIP flow, or closed.
fn icmp(world: &World, f: &[u8], ip: &Ip) -> Result<Expected, Reason> {
    if ip.l4len < 8 {
        return Err(Reason::PASS_MALFORMED);
    }
    let (ty, code) = (f[ip.l4], f[ip.l4 + 1]);
    let local = if ip.v6 { ty == 128 || (133..=137).contains(&ty) } else { ty == 8 };
    if local {
        return Err(Reason::PASS_LOCAL_ICMP);
    }
    let too_big = if ip.v6 { ty == 2 && code == 0 } else { ty == 3 && code == 4 };
    if !too_big {
        return Err(Reason::DROP_CLOSED);
    }
    packet_too_big(world, f, ip)
}

/// Step 6: the quoted packet is one the VIP sent (direct server return: the backend
/// answers from the VIP address) to a client; the error goes to that flow's backend.
fn packet_too_big(world: &World, f: &[u8], ip: &Ip) -> Result<Expected, Reason> {
    let inner = ip.l4 + 8;
    let quoted = ip.l4len - 8;
    let (hlen, proto, src, dst) = if ip.v6 {
        if quoted < 40 + 8 || f[inner] >> 4 != 6 {
            return Err(Reason::PASS_MALFORMED);
        }
        (40, f[inner + 6], v6_at(f, inner + 8), v6_at(f, inner + 24))
    } else {
        if quoted < 20 + 8 || f[inner] >> 4 != 4 {
            return Err(Reason::PASS_MALFORMED);
        }
        let hlen = usize::from(f[inner] & 0x0f) * 4;
        if hlen < 20 || hlen + 8 > quoted {
            return Err(Reason::PASS_MALFORMED);
        }
        (hlen, f[inner + 9], v4_at(f, inner + 12), v4_at(f, inner + 16))
    };
    if src != ip.dst || (proto != TCP && proto != UDP) {
        return Err(Reason::DROP_CLOSED);
    }
    let ports = inner + hlen;
    let (vip_port, client_port) = (be16(f, ports), be16(f, ports + 2));
    let vip = world.vip(ip.dst, vip_port, proto).ok_or(Reason::DROP_CLOSED)?;
    admit(world, vip, dst, client_port, true)
}

#[cfg(test)]
mod tests {
    use super::super::wire::{self, IpOpts};
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reason(f: &[u8]) -> Reason {
        expect(&World::standard(), f).reason
    }

    #[test]
    fn decision_order_on_hand_built_frames() {
        let o = IpOpts::default();
        let c4 = ip("198.51.100.7");
        let tcp =
            |dst: &str, port: u16| wire::frame(false, c4, ip(dst), TCP, &o, &wire::tcp(4000, port, 2, &[], b"")).frame;
        assert_eq!(reason(&tcp("192.0.2.10", 80)), Reason::TX);
        assert_eq!(reason(&tcp("192.0.2.10", 81)), Reason::DROP_CLOSED);
        assert_eq!(reason(&tcp("192.0.2.11", 80)), Reason::DROP_NO_BACKEND);
        assert_eq!(reason(&tcp("192.0.2.99", 80)), Reason::PASS_NOT_VIP);
        assert_eq!(reason(&tcp("192.0.2.12", 443)), Reason::TX, "client inside the ranges");
        let outside = wire::frame(false, ip("32.1.13.192"), ip("192.0.2.12"), TCP, &o, &wire::tcp(1, 443, 2, &[], b""));
        assert_eq!(reason(&outside.frame), Reason::DROP_SOURCE_RANGE);
        let mut short = tcp("192.0.2.10", 80);
        short.truncate(40);
        assert_eq!(reason(&short), Reason::PASS_TRUNCATED);
        let echo = wire::frame(false, c4, ip("192.0.2.10"), ICMP, &o, &wire::icmp(8, 0, [0; 4], b"ping"));
        assert_eq!(reason(&echo.frame), Reason::PASS_LOCAL_ICMP);
    }

    #[test]
    fn packet_too_big_goes_to_the_quoted_flow() {
        let o = IpOpts::default();
        let vip = ip("2001:db8::10");
        let (quoted, _) = wire::ip_packet(true, vip, ip("2001:db8:1::9"), UDP, &o, &wire::udp(53, 3333, b""));
        let ptb = wire::frame(true, ip("2001:db8:ff::1"), vip, ICMPV6, &o, &wire::icmp(2, 0, [0, 0, 5, 0], &quoted));
        let e = expect(&World::standard(), &ptb.frame);
        assert_eq!(e.reason, Reason::TX);
        assert!(e.ptb);
        assert_eq!(e.forward.map(|f| (f.client, f.client_port)), Some((ip("2001:db8:1::9"), 3333)));
    }
}
