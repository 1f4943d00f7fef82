//! The frame mix: pure random bytes, random bytes dressed as IP to a VIP, other
//! ethertypes, and frames built from templates (flows to VIPs, closed ports, other
//! addresses and protocols, fragments, IPv6 extension headers, IPv4 options, ICMP,
//! path-MTU errors), of which a share is then mutated (`mutate`).
//!
//! Addresses and ports come from small pools, so flows repeat (the test checks that a
//! flow and the ICMP errors about it keep one backend), with random ones mixed in.

use std::net::IpAddr;

use super::mutate;
use super::wire::{self, Built, IpOpts, ETH_IPV4, ETH_IPV6};
use super::{FuzzVip, Rng, World, ICMP, ICMPV6, TCP, UDP};

/// Clients: inside and outside the source ranges (`super::RANGES4`, `RANGES6`), on the
/// boundaries, and addresses whose bytes alias a range of the other family.
const CLIENTS4: [&str; 12] = [
    "198.51.100.7",
    "198.51.100.0",
    "198.51.100.255",
    "203.0.113.200",
    "203.0.113.128",
    "203.0.113.127",
    "203.0.113.5",
    "198.51.101.0",
    "198.51.99.255",
    "32.1.13.192",
    "10.9.8.7",
    "192.0.2.10",
];
const CLIENTS6: [&str; 10] = [
    "2001:db8:1::7",
    "2001:db8:1:ffff::1",
    "2001:db8:2::1",
    "2001:db8:8000::1",
    "2001:db8:ffff:ffff::1",
    "2001:db8:7fff:ffff::1",
    "c633:6407::",
    "2001:dc0::5",
    "2001:db9::1",
    "fe80::1",
];
/// Addresses that are no VIP's, some close to one: neighbours, the IPv4-mapped and
/// prefix-alias forms of an IPv4 VIP in IPv6.
const NOT_VIPS4: [&str; 4] = ["192.0.2.14", "192.0.2.9", "198.51.100.1", "10.0.0.2"];
const NOT_VIPS6: [&str; 4] = ["2001:db8::14", "::ffff:192.0.2.10", "c000:20a::", "2001:db8::10:0"];
const CLIENT_PORTS: [u16; 8] = [1024, 40000, 40001, 55555, 65535, 12345, 33333, 0];
const TCP_FLAGS: [u8; 6] = [0x02, 0x10, 0x12, 0x11, 0x04, 0x18];
/// IPv6 extension header types the generator puts in front of a transport.
const EXTS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Sample {
    pub frame: Vec<u8>,
    /// Which generator made it, for failure messages and the mix summary.
    pub kind: &'static str,
    pub mutated: bool,
}

/// The generator. Deterministic for a seed.
pub struct Gen {
    rng: Rng,
    vips: Vec<FuzzVip>,
    addrs: Vec<IpAddr>,
    clients4: Vec<IpAddr>,
    clients6: Vec<IpAddr>,
    not_vips4: Vec<IpAddr>,
    not_vips6: Vec<IpAddr>,
}

fn parse_all(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("test constant {s}: {e}"))).collect()
}

impl Gen {
    pub fn new(world: &World, seed: u64) -> Gen {
        Gen {
            rng: Rng::new(seed),
            vips: world.vips.clone(),
            addrs: world.addrs(),
            clients4: parse_all(&CLIENTS4),
            clients6: parse_all(&CLIENTS6),
            not_vips4: parse_all(&NOT_VIPS4),
            not_vips6: parse_all(&NOT_VIPS6),
        }
    }

    pub fn next_sample(&mut self) -> Sample {
        let (frame, kind) = match self.rng.below(100) {
            0..=7 => {
                let n = self.rng.range(0, 160);
                (self.rng.bytes(n), "random")
            }
            8..=14 => (self.ip_random(), "ip-random"),
            15..=17 => (self.not_ip(), "not-ip"),
            _ => {
                let (mut b, kind) = self.template();
                if self.rng.percent(45) {
                    mutate::mutate(&mut self.rng, &mut b, &self.addrs);
                    return Sample { frame: b.frame, kind, mutated: true };
                }
                (b.frame, kind)
            }
        };
        Sample { frame, kind, mutated: false }
    }

    fn template(&mut self) -> (Built, &'static str) {
        let v6 = self.rng.percent(40);
        match self.rng.below(93) {
            0..=29 => (self.vip_flow(v6), "vip-flow"),
            30..=37 => (self.closed_port(v6), "closed-port"),
            38..=42 => (self.other_proto(v6), "other-proto"),
            43..=52 => (self.not_vip(v6), "not-vip"),
            53..=56 => (self.opaque(v6), if v6 { "v6-ext" } else { "fragment" }),
            57..=68 => (self.icmp(v6), "icmp"),
            _ => (self.too_big(v6), "ptb"),
        }
    }

    fn family_vips(&self, v6: bool) -> Vec<FuzzVip> {
        self.vips.iter().filter(|v| v.addr.is_ipv6() == v6).cloned().collect()
    }

    fn vip_addr(&mut self, v6: bool) -> IpAddr {
        let own: Vec<IpAddr> = self.addrs.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
        *self.rng.pick(&own)
    }

    fn client(&mut self, v6: bool) -> IpAddr {
        if self.rng.percent(25) {
            return self.random_addr(v6);
        }
        if v6 {
            *self.rng.pick(&self.clients6)
        } else {
            *self.rng.pick(&self.clients4)
        }
    }

    fn random_addr(&mut self, v6: bool) -> IpAddr {
        if v6 {
            let mut a = [0u8; 16];
            a.iter_mut().for_each(|b| *b = self.rng.byte());
            IpAddr::from(a)
        } else {
            IpAddr::from([self.rng.byte(), self.rng.byte(), self.rng.byte(), self.rng.byte()])
        }
    }

    fn client_port(&mut self) -> u16 {
        if self.rng.percent(30) {
            self.rng.u16()
        } else {
            *self.rng.pick(&CLIENT_PORTS)
        }
    }

    fn ip_opts(&mut self, v6: bool) -> IpOpts {
        let mut o = IpOpts { frag: if self.rng.percent(80) { 0x4000 } else { 0 }, ..IpOpts::default() };
        if !v6 && self.rng.percent(15) {
            let n = 4 * self.rng.range(1, 10);
            o.options = (0..n).map(|_| if self.rng.percent(60) { 1 } else { self.rng.byte() }).collect();
        }
        o
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = if self.rng.percent(70) { self.rng.range(0, 16) } else { self.rng.range(0, 64) };
        self.rng.bytes(n)
    }

    /// A transport header of `proto` (anything else: random bytes).
    fn transport(&mut self, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let payload = self.payload();
        match proto {
            TCP => {
                let flags = if self.rng.percent(10) { self.rng.byte() } else { *self.rng.pick(&TCP_FLAGS) };
                let n = if self.rng.percent(20) { self.rng.range(1, 40) } else { 0 };
                let opts = self.rng.bytes(n);
                wire::tcp(sport, dport, flags, &opts, &payload)
            }
            UDP => wire::udp(sport, dport, &payload),
            _ => payload,
        }
    }

    /// A TCP or UDP flow to a configured VIP.
    fn vip_flow(&mut self, v6: bool) -> Built {
        let vips = self.family_vips(v6);
        let v = self.rng.pick(&vips).clone();
        let (client, port) = (self.client(v6), self.client_port());
        let l4 = self.transport(v.proto, port, v.port);
        let o = self.ip_opts(v6);
        wire::frame(v6, client, v.addr, v.proto, &o, &l4)
    }

    /// TCP or UDP to a VIP address on a port / protocol it does not serve.
    fn closed_port(&mut self, v6: bool) -> Built {
        let vips = self.family_vips(v6);
        let v = self.rng.pick(&vips).clone();
        let (proto, port) = match self.rng.below(3) {
            0 => (if v.proto == TCP { UDP } else { TCP }, v.port),
            1 => (v.proto, self.rng.pick(&vips).port),
            _ => (if self.rng.percent(50) { TCP } else { UDP }, self.rng.u16()),
        };
        let (client, cport) = (self.client(v6), self.client_port());
        let l4 = self.transport(proto, cport, port);
        let o = self.ip_opts(v6);
        wire::frame(v6, client, v.addr, proto, &o, &l4)
    }

    /// A VIP address, a protocol other than TCP, UDP and the family's ICMP.
    fn other_proto(&mut self, v6: bool) -> Built {
        let protos: &[u8] = if v6 { &[ICMP, 47, 132, 59, 41, 4, 255] } else { &[ICMPV6, 47, 132, 50, 41, 0, 255] };
        let proto = if self.rng.percent(20) { self.rng.byte() } else { *self.rng.pick(protos) };
        let (dst, src) = (self.vip_addr(v6), self.client(v6));
        let l4 = if proto == ICMP || proto == ICMPV6 {
            wire::icmp(if v6 { 8 } else { 128 }, 0, [0; 4], b"ping")
        } else {
            self.transport(proto, 1, 2)
        };
        let o = self.ip_opts(v6);
        wire::frame(v6, src, dst, proto, &o, &l4)
    }

    /// Any protocol to an address that is no VIP's.
    fn not_vip(&mut self, v6: bool) -> Built {
        let dst = match (self.rng.percent(50), v6) {
            (true, _) => self.random_addr(v6),
            (false, true) => *self.rng.pick(&self.not_vips6),
            (false, false) => *self.rng.pick(&self.not_vips4),
        };
        let vips = self.family_vips(v6);
        let v = self.rng.pick(&vips).clone();
        let any = self.rng.byte();
        let proto = *self.rng.pick(&[v.proto, v.proto, ICMP, ICMPV6, any]);
        let (client, cport) = (self.client(v6), self.client_port());
        let l4 = self.transport(proto, cport, v.port);
        let mut o = self.ip_opts(v6);
        if self.rng.percent(10) {
            o.frag = 0x2000;
        }
        wire::frame(v6, client, dst, proto, &o, &l4)
    }

    /// An IPv4 fragment or an IPv6 extension header, to a VIP's port.
    fn opaque(&mut self, v6: bool) -> Built {
        let vips = self.family_vips(v6);
        let v = self.rng.pick(&vips).clone();
        let (client, cport) = (self.client(v6), self.client_port());
        let l4 = self.transport(v.proto, cport, v.port);
        let mut o = self.ip_opts(v6);
        if v6 {
            o.ext = Some(*self.rng.pick(&EXTS));
        } else {
            // More fragments, an offset, or both; DF may stay set.
            let any = (self.rng.u16() & 0x3fff) | 1;
            o.frag = (o.frag & 0x4000) | *self.rng.pick(&[0x2000, 0x0001, 0x2010, 0x1fff, any]);
        }
        wire::frame(v6, client, v.addr, v.proto, &o, &l4)
    }

    /// ICMP that is not a path-MTU error about a VIP: echo, neighbour discovery, others.
    fn icmp(&mut self, v6: bool) -> Built {
        let types: &[u8] =
            if v6 { &[128, 128, 129, 133, 134, 135, 136, 137, 1, 3, 4, 2] } else { &[8, 8, 8, 0, 3, 11, 5, 13] };
        let ty = if self.rng.percent(10) { self.rng.byte() } else { *self.rng.pick(types) };
        let code = if self.rng.percent(70) { 0 } else { self.rng.byte() & 0x0f };
        let dst = match (self.rng.percent(85), v6) {
            (true, _) => self.vip_addr(v6),
            (false, true) => *self.rng.pick(&self.not_vips6),
            (false, false) => *self.rng.pick(&self.not_vips4),
        };
        let body = self.payload();
        let mut l4 = wire::icmp(ty, code, [0, 1, 0, 1], &body);
        if self.rng.percent(6) {
            l4.truncate(self.rng.below(8));
        }
        let o = self.ip_opts(v6);
        let proto = if v6 { ICMPV6 } else { ICMP };
        wire::frame(v6, self.client(v6), dst, proto, &o, &l4)
    }

    /// An ICMP "fragmentation needed" / ICMPv6 "packet too big" quoting a packet a VIP
    /// sent to a client; now and then about something else.
    fn too_big(&mut self, v6: bool) -> Built {
        let vips = self.family_vips(v6);
        let v = self.rng.pick(&vips).clone();
        let (client, cport) = (self.client(v6), self.client_port());
        let mut src = v.addr;
        let (mut vport, mut proto) = (v.port, v.proto);
        match self.rng.below(12) {
            0 => vport = self.rng.pick(&vips).port,
            1 => proto = if proto == TCP { UDP } else { TCP },
            2 => {
                let any = self.rng.byte();
                proto = *self.rng.pick(&[ICMP, ICMPV6, 47, any]);
            }
            3 => src = self.vip_addr(v6),
            _ => {}
        }
        let o = IpOpts { options: self.ip_opts(v6).options, ..IpOpts::default() };
        let transport = match proto {
            TCP => wire::tcp(vport, cport, 0x10, &[], &self.payload()),
            UDP => wire::udp(vport, cport, &self.payload()),
            _ => [vport.to_be_bytes(), cport.to_be_bytes()].concat(),
        };
        let (mut quoted, off) = wire::ip_packet(v6, src, client, proto, &o, &transport);
        // RFC 792 quotes the IP header and 8 bytes; RFC 4443 as much as fits.
        let keep = off + 8 + if self.rng.percent(50) { 0 } else { self.rng.range(0, transport.len()) };
        quoted.truncate(keep.min(quoted.len()));
        let mtu = 1280 + self.rng.below(200) as u16;
        let (ty, code) = if v6 { (2, 0) } else { (3, 4) };
        let rest = [0, 0, (mtu >> 8) as u8, mtu as u8]; // unused, next-hop MTU (both RFCs: 32 bits)
        let code = if self.rng.percent(5) { code ^ (1 + self.rng.byte() % 7) } else { code };
        let l4 = wire::icmp(ty, code, rest, &quoted);
        let dst = match self.rng.below(20) {
            0 => self.vip_addr(v6),
            1 => self.random_addr(v6),
            _ => v.addr,
        };
        let router = self.random_addr(v6);
        let outer = self.ip_opts(v6);
        let mut b = wire::frame(v6, router, dst, if v6 { ICMPV6 } else { ICMP }, &outer, &l4);
        b.inner = Some(b.l4 + 8);
        b
    }

    /// Random bytes dressed as IPv4 / IPv6, mostly to a VIP address, with the lengths
    /// often consistent so the parser gets past them.
    fn ip_random(&mut self) -> Vec<u8> {
        let v6 = self.rng.percent(40);
        let len = self.rng.range(14, 160);
        let mut f = self.rng.bytes(len);
        let ethertype = if v6 { ETH_IPV6 } else { ETH_IPV4 };
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        let dst = if self.rng.percent(70) { self.vip_addr(v6) } else { self.random_addr(v6) };
        let any = self.rng.byte();
        let proto = *self.rng.pick(&[TCP, UDP, ICMP, ICMPV6, any]);
        let (hdr, len_off, len_base, proto_off, dst_off) = if v6 { (54, 18, 54, 20, 38) } else { (34, 16, 14, 23, 30) };
        if len < hdr {
            return f;
        }
        f[14] = if v6 {
            0x60 | (f[14] & 0x0f)
        } else if self.rng.percent(70) {
            0x45
        } else {
            0x40 | (f[14] & 0x0f)
        };
        if self.rng.percent(70) {
            f[len_off..len_off + 2].copy_from_slice(&((len - len_base) as u16).to_be_bytes());
        }
        if !v6 && self.rng.percent(80) {
            f[20..22].copy_from_slice(&[0x40, 0]);
        }
        f[proto_off] = proto;
        f[dst_off..dst_off + if v6 { 16 } else { 4 }].copy_from_slice(&wire::octets(dst, v6));
        f
    }

    /// ARP, 802.1Q-tagged IP to a VIP, LLDP, or a random ethertype.
    fn not_ip(&mut self) -> Vec<u8> {
        let any = self.rng.u16();
        let ethertype = *self.rng.pick(&[0x0806, 0x8100, 0x88a8, 0x88cc, 0x86de, 0x0801, any]);
        let mut f = wire::eth(ethertype);
        if ethertype == 0x8100 {
            f.extend([0, 1, 0x08, 0x00]);
            let inner = self.vip_flow(false);
            f.extend(&inner.frame[14..]);
        } else {
            let n = self.rng.range(0, 80);
            f.extend(self.rng.bytes(n));
        }
        f
    }
}
