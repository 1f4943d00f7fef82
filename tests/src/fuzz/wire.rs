//! Frames byte by byte (RFC 791, 8200, 793, 768, 792, 4443 layouts), with the header
//! offsets the mutator aims at. Written for the fuzzer alone: `crate::frames` is the
//! packet table's builder and is not reused, so a bug there cannot hide one here.

use std::net::IpAddr;

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_LEN: usize = 14;

/// A frame and where its headers start (before any mutation).
#[derive(Clone, Debug)]
pub struct Built {
    pub frame: Vec<u8>,
    pub v6: bool,
    /// Transport (or ICMP) header offset.
    pub l4: usize,
    /// IPv4 protocol / IPv6 next header of the transport.
    pub proto: u8,
    /// The quoted IP header inside an ICMP error.
    pub inner: Option<usize>,
}

/// What goes into an IP header besides addresses and protocol.
#[derive(Clone, Debug, Default)]
pub struct IpOpts {
    /// IPv4 options (padded to a multiple of 4, at most 40 bytes).
    pub options: Vec<u8>,
    /// IPv4 flags + fragment offset.
    pub frag: u16,
    /// IPv6: one 8-byte extension header of this type before the transport.
    pub ext: Option<u8>,
}

/// The address bytes in the family of `v6` (a mismatched address is mapped or cut, so
/// builders never fail).
pub fn octets(addr: IpAddr, v6: bool) -> Vec<u8> {
    match (addr, v6) {
        (IpAddr::V4(a), false) => a.octets().to_vec(),
        (IpAddr::V6(a), true) => a.octets().to_vec(),
        (IpAddr::V4(a), true) => a.to_ipv6_mapped().octets().to_vec(),
        (IpAddr::V6(a), false) => a.octets()[..4].to_vec(),
    }
}

/// The Internet checksum (RFC 1071).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IP packet (no Ethernet header): the header, then `l4`. Returns the packet and
/// the offset of `l4` in it.
pub fn ip_packet(v6: bool, src: IpAddr, dst: IpAddr, proto: u8, o: &IpOpts, l4: &[u8]) -> (Vec<u8>, usize) {
    let mut p = Vec::with_capacity(60 + l4.len());
    if v6 {
        let ext_len = if o.ext.is_some() { 8 } else { 0 };
        p.extend([0x60, 0, 0, 0]);
        p.extend(((ext_len + l4.len()) as u16).to_be_bytes());
        p.push(o.ext.unwrap_or(proto));
        p.push(64);
        p.extend(octets(src, true));
        p.extend(octets(dst, true));
        if o.ext.is_some() {
            p.extend([proto, 0, 1, 4, 0, 0, 0, 0]); // next header, length 0, PadN
        }
    } else {
        let mut options = o.options.clone();
        options.truncate(40);
        while !options.len().is_multiple_of(4) {
            options.push(0); // end of option list
        }
        let hlen = 20 + options.len();
        p.push(0x40 | (hlen / 4) as u8);
        p.push(0);
        p.extend(((hlen + l4.len()) as u16).to_be_bytes());
        p.extend([0x12, 0x34]);
        p.extend(o.frag.to_be_bytes());
        p.extend([64, proto, 0, 0]);
        p.extend(octets(src, false));
        p.extend(octets(dst, false));
        p.extend(&options);
        let sum = checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let off = p.len();
    p.extend(l4);
    (p, off)
}

/// Ethernet (to the LB, from the client) carrying `ethertype`.
pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend(LB_MAC);
    f.extend(CLIENT_MAC);
    f.extend(ethertype.to_be_bytes());
    f
}

/// A whole IP frame.
pub fn frame(v6: bool, src: IpAddr, dst: IpAddr, proto: u8, o: &IpOpts, l4: &[u8]) -> Built {
    let mut f = eth(if v6 { ETH_IPV6 } else { ETH_IPV4 });
    let (p, off) = ip_packet(v6, src, dst, proto, o, l4);
    f.extend(p);
    Built { frame: f, v6, l4: ETH_LEN + off, proto, inner: None }
}

/// A TCP header with `options` (padded to 4 bytes, at most 40), then `payload`.
pub fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut opts = options.to_vec();
    opts.truncate(40);
    while !opts.len().is_multiple_of(4) {
        opts.push(1); // NOP
    }
    let mut t = Vec::with_capacity(20 + opts.len() + payload.len());
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend(0x0100_0000u32.to_be_bytes()); // sequence
    t.extend(0u32.to_be_bytes()); // acknowledgement
    t.push((((20 + opts.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend(65535u16.to_be_bytes());
    t.extend([0, 0, 0, 0]); // checksum (XDP does not check it), urgent pointer
    t.extend(opts);
    t.extend(payload);
    t
}

/// A UDP header and `payload`, the length field consistent.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend(((8 + payload.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    u
}

/// An ICMP / ICMPv6 message: type, code, checksum (left 0), 4 type-specific bytes, body.
pub fn icmp(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend(rest);
    m.extend(body);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_tcp_layout() {
        let o = IpOpts { options: vec![1, 1, 1], frag: 0x4000, ext: None };
        let b = frame(
            false,
            "198.51.100.1".parse().unwrap(),
            "192.0.2.10".parse().unwrap(),
            6,
            &o,
            &tcp(1, 80, 2, &[], b"x"),
        );
        assert_eq!(b.l4, 14 + 24);
        assert_eq!(b.frame[14], 0x46);
        assert_eq!(u16::from_be_bytes([b.frame[16], b.frame[17]]) as usize, b.frame.len() - 14);
        assert_eq!(checksum(&b.frame[14..38]), 0, "header checksum verifies");
        assert_eq!(&b.frame[30..34], &[192, 0, 2, 10]);
        assert_eq!(b.frame[b.l4 + 12] >> 4, 5);
    }

    #[test]
    fn ipv6_ext_layout() {
        let o = IpOpts { ext: Some(0), ..IpOpts::default() };
        let b =
            frame(true, "2001:db8:1::1".parse().unwrap(), "2001:db8::10".parse().unwrap(), 17, &o, &udp(1, 53, b""));
        assert_eq!(b.l4, 14 + 40 + 8);
        assert_eq!(b.frame[20], 0);
        assert_eq!(b.frame[54], 17);
        assert_eq!(u16::from_be_bytes([b.frame[18], b.frame[19]]), 16);
    }
}
