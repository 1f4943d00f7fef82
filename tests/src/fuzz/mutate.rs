//! Mutations of a built frame, aimed at the fields the parser trusts: byte flips
//! concentrated in the headers, truncation, wrong versions, lengths that contradict the
//! frame or each other (IPv4 total length and IHL, IPv6 payload length, UDP length, TCP
//! data offset), padding, ethertype swaps, ICMP types, fragment fields and addresses.
//! Offsets come from the frame as built; after an earlier mutation they are only hints,
//! which is fine: every write is bounds-checked, and the oracle judges whatever results.

use std::net::IpAddr;

use super::wire::{self, Built, ETH_IPV4, ETH_IPV6};
use super::Rng;

/// Applies one to three mutations.
pub fn mutate(rng: &mut Rng, b: &mut Built, addrs: &[IpAddr]) {
    for _ in 0..rng.range(1, 3) {
        match rng.below(12) {
            0 | 1 => flip(rng, b),
            2 => truncate(rng, b),
            3 => version(rng, b),
            4 => ip_length(rng, b),
            5 => ihl(rng, b),
            6 => transport_length(rng, b),
            7 => pad(rng, b),
            8 => ethertype(rng, b),
            9 => icmp_or_proto(rng, b),
            10 => address(rng, b, addrs),
            _ => fragment(rng, b),
        }
    }
}

/// Sets `f[off..off + 2]` if the frame holds it.
fn put16(f: &mut [u8], off: usize, v: u16) {
    if let Some(s) = f.get_mut(off..off + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

fn get16(f: &[u8], off: usize) -> Option<u16> {
    f.get(off..off + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

/// A length near `actual` (off by a little either way), or an extreme.
fn near(rng: &mut Rng, actual: u16) -> u16 {
    match rng.below(6) {
        0 => 0,
        1 => 0xffff,
        2 => rng.u16(),
        3 => actual.wrapping_add(rng.range(1, 8) as u16),
        _ => actual.wrapping_sub(rng.range(1, 8) as u16),
    }
}

fn flip(rng: &mut Rng, b: &mut Built) {
    if b.frame.is_empty() {
        return;
    }
    let header_end = (b.l4 + 48).min(b.frame.len());
    for _ in 0..rng.range(1, 4) {
        let pos = if rng.percent(70) { rng.below(header_end) } else { rng.below(b.frame.len()) };
        b.frame[pos] = if rng.percent(50) { b.frame[pos] ^ (1 << rng.below(8)) } else { rng.byte() };
    }
}

fn truncate(rng: &mut Rng, b: &mut Built) {
    let len = b.frame.len();
    if len == 0 {
        return;
    }
    let cut = if rng.percent(10) {
        rng.below(len)
    } else if rng.percent(60) {
        rng.range(14.min(len - 1), (b.l4 + 28).min(len - 1))
    } else {
        rng.range(14.min(len - 1), len - 1)
    };
    b.frame.truncate(cut);
}

/// A wrong IP version in the outer or the quoted header.
fn version(rng: &mut Rng, b: &mut Built) {
    let at = match b.inner {
        Some(inner) if rng.percent(50) => inner,
        _ => wire::ETH_LEN,
    };
    if let Some(v) = b.frame.get_mut(at) {
        let wrong = loop {
            let n = rng.byte() & 0x0f;
            if n != *v >> 4 {
                break n;
            }
        };
        *v = (wrong << 4) | (*v & 0x0f);
    }
}

/// IPv4 total length / IPv6 payload length.
fn ip_length(rng: &mut Rng, b: &mut Built) {
    let off = if b.v6 { 18 } else { 16 };
    let actual = get16(&b.frame, off).unwrap_or(0);
    let v = near(rng, actual);
    put16(&mut b.frame, off, v);
}

/// IPv4 header length, outer or quoted.
fn ihl(rng: &mut Rng, b: &mut Built) {
    let at = match b.inner {
        Some(inner) if rng.percent(50) => inner,
        _ => wire::ETH_LEN,
    };
    if let Some(v) = b.frame.get_mut(at) {
        *v = (*v & 0xf0) | (rng.byte() & 0x0f);
    }
}

/// TCP data offset or UDP length (whichever the protocol has; both if unsure).
fn transport_length(rng: &mut Rng, b: &mut Built) {
    let (tcp, udp) = (b.proto == super::TCP, b.proto == super::UDP);
    if tcp || !udp {
        if let Some(v) = b.frame.get_mut(b.l4 + 12) {
            *v = ((rng.byte() & 0x0f) << 4) | (*v & 0x0f);
        }
    }
    if udp || !tcp {
        let actual = get16(&b.frame, b.l4 + 4).unwrap_or(8);
        let v = near(rng, actual);
        put16(&mut b.frame, b.l4 + 4, v);
    }
}

/// Ethernet padding after the IP packet (zeros or junk).
fn pad(rng: &mut Rng, b: &mut Built) {
    let n = rng.range(1, 48);
    if rng.percent(50) {
        b.frame.extend(std::iter::repeat_n(0, n));
    } else {
        b.frame.extend(rng.bytes(n));
    }
}

/// IPv4 frame labelled IPv6 and the other way round, or something else entirely.
fn ethertype(rng: &mut Rng, b: &mut Built) {
    let t = match get16(&b.frame, 12) {
        _ if rng.percent(15) => rng.u16(),
        Some(ETH_IPV4) => ETH_IPV6,
        _ => ETH_IPV4,
    };
    put16(&mut b.frame, 12, t);
}

/// ICMP type or code, or the IP protocol / next header.
fn icmp_or_proto(rng: &mut Rng, b: &mut Built) {
    let at = match rng.below(3) {
        0 => b.l4,
        1 => b.l4 + 1,
        _ if b.v6 => 20,
        _ => 23,
    };
    let v = if rng.percent(50) { rng.byte() } else { *rng.pick(&[0, 1, 2, 3, 4, 6, 8, 17, 58, 128, 135]) };
    if let Some(x) = b.frame.get_mut(at) {
        *x = v;
    }
}

/// Destination becomes another VIP address (maybe of the other family), or the source
/// a random one.
fn address(rng: &mut Rng, b: &mut Built, addrs: &[IpAddr]) {
    let (src, dst, n) = if b.v6 { (22, 38, 16) } else { (26, 30, 4) };
    let bytes = if rng.percent(70) { wire::octets(*rng.pick(addrs), b.v6) } else { rng.bytes(n) };
    let at = if rng.percent(60) { dst } else { src };
    if let Some(s) = b.frame.get_mut(at..at + n) {
        s.copy_from_slice(&bytes);
    }
}

/// IPv4 flags + fragment offset.
fn fragment(rng: &mut Rng, b: &mut Built) {
    if b.v6 {
        if let Some(x) = b.frame.get_mut(20) {
            *x = *rng.pick(&[0, 43, 44, 60, 59, 6, 17]);
        }
        return;
    }
    let any = rng.u16();
    let v = *rng.pick(&[0x0000, 0x4000, 0x2000, 0x8000, 0x0001, 0x6000, any]);
    put16(&mut b.frame, 20, v);
}
