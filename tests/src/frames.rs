//! Building test frames byte by byte.

use std::net::IpAddr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// A frame to build: defaults are an IPv4 TCP SYN with a small payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// IPv4 options bytes (a multiple of 4).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset field.
    pub frag: u16,
    /// IPv6 next header to put before the transport header (e.g. 0 = hop-by-hop).
    pub v6_ext: Option<u8>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Self {
        Frame {
            src,
            dst,
            proto,
            sport,
            dport,
            tcp_flags: SYN,
            ip_options: vec![],
            frag: 0x4000, // DF
            v6_ext: None,
            payload: b"hello".to_vec(),
        }
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(self.sport.to_be_bytes());
        l4.extend(self.dport.to_be_bytes());
        match self.proto {
            TCP => {
                l4.extend(1000u32.to_be_bytes()); // seq
                l4.extend(0u32.to_be_bytes()); // ack
                l4.push(5 << 4);
                l4.push(self.tcp_flags);
                l4.extend(65535u16.to_be_bytes());
                l4.extend([0, 0, 0, 0]); // checksum (not checked by XDP), urgent
            }
            UDP => {
                l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend([0, 0]);
            }
            _ => {
                l4.extend([8, 0, 0, 0]); // ICMP echo-ish
            }
        }
        l4.extend(&self.payload);
        l4
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend([0x02, 0, 0, 0, 0, 0xfe]); // to the LB
        f.extend(CLIENT_MAC);
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                let ihl = 5 + self.ip_options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let mut ip = vec![0x40 | ihl as u8, 0];
                ip.extend(total.to_be_bytes());
                ip.extend([0x12, 0x34]);
                ip.extend(self.frag.to_be_bytes());
                ip.extend([64, self.proto, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                ip.extend(&self.ip_options);
                let sum = checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                let ext_len = if self.v6_ext.is_some() { 8 } else { 0 };
                f.extend([0x60, 0, 0, 0]);
                f.extend(((l4.len() + ext_len) as u16).to_be_bytes());
                f.push(self.v6_ext.unwrap_or(self.proto));
                f.push(64);
                f.extend(s.octets());
                f.extend(d.octets());
                if self.v6_ext.is_some() {
                    f.extend([self.proto, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop with PadN
                }
            }
            _ => panic!("mixed address families"),
        }
        f.extend(l4);
        f
    }
}

/// An ARP request frame.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(CLIENT_MAC);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend(CLIENT_MAC);
    f.extend([192, 0, 2, 1]);
    f.extend([0; 6]);
    f.extend([192, 0, 2, 10]);
    f
}

/// The Internet checksum.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
