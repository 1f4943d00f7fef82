//! ICMP to a VIP address. Echo requests and neighbour discovery are the host's to
//! answer. "Fragmentation needed" (ICMP 3/4) and "packet too big" (ICMPv6 2/0) about a
//! reply of a VIP flow go to that flow's backend: in direct server return the backend
//! sent the reply, so only it can lower its path MTU. Anything else is dropped.

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{stats::Reason, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use network_types::{
    icmp::{Icmpv4Hdr, Icmpv6Hdr},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    parse::{field, ptr_at, Ip},
    select::Flow,
    stats::Verdict,
    vip::{self, Quoted},
};

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
/// Bytes of the offending packet's transport header an ICMP error must quote (ports).
const QUOTED_L4: usize = 8;

/// The ICMP protocol number of a family.
#[inline(always)]
pub fn proto_of(family: u8) -> u8 {
    if family == FAMILY_V4 {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    }
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, ip: &Ip, quoted: &mut Quoted) -> Result<Verdict, Reason> {
    if ip.l4_len < Icmpv4Hdr::LEN {
        return vip::pass_if_vip_addr(ip, Reason::PASS_MALFORMED);
    }
    let Some(h) = ptr_at::<Icmpv4Hdr>(ctx, ip.l4_off) else {
        return vip::pass_if_vip_addr(ip, Reason::PASS_TRUNCATED);
    };
    let h = h as *const u8;
    // SAFETY: the first two bytes of the checked 8-byte header (same in ICMPv6).
    let (kind, code): (u8, u8) = unsafe { (field(h, 0), field(h, 1)) };
    let local = if ip.family == FAMILY_V4 { kind == 8 } else { kind == 128 || (133..=137).contains(&kind) };
    if local {
        return vip::pass_if_vip_addr(ip, Reason::PASS_LOCAL_ICMP);
    }
    let ptb = if ip.family == FAMILY_V4 { kind == 3 && code == 4 } else { kind == 2 && code == 0 };
    if !ptb {
        return vip::closed(ip, Reason::DROP_CLOSED);
    }
    if ip.family == FAMILY_V4 {
        packet_too_big_v4(ctx, ip, quoted)
    } else {
        packet_too_big_v6(ctx, ip, quoted)
    }
}

/// The quoted packet is a reply of the flow: VIP:port -> client:port.
#[inline(always)]
fn packet_too_big_v4(ctx: &XdpContext, ip: &Ip, quoted: &mut Quoted) -> Result<Verdict, Reason> {
    let inner_off = ip.l4_off + Icmpv4Hdr::LEN;
    if ip.l4_len < Icmpv4Hdr::LEN + Ipv4Hdr::LEN + QUOTED_L4 {
        return vip::pass_if_vip_addr(ip, Reason::PASS_MALFORMED);
    }
    let Some(h) = ptr_at::<Ipv4Hdr>(ctx, inner_off) else {
        return vip::pass_if_vip_addr(ip, Reason::PASS_TRUNCATED);
    };
    let h = h as *const u8;
    // SAFETY (all reads): fields of the checked inner 20-byte header.
    let vihl: u8 = unsafe { field(h, offset_of!(Ipv4Hdr, vihl)) };
    let hlen = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || hlen < Ipv4Hdr::LEN || Icmpv4Hdr::LEN + hlen + QUOTED_L4 > ip.l4_len {
        return vip::pass_if_vip_addr(ip, Reason::PASS_MALFORMED);
    }
    let src: u32 = unsafe { field(h, offset_of!(Ipv4Hdr, src_addr)) };
    let client: u32 = unsafe { field(h, offset_of!(Ipv4Hdr, dst_addr)) };
    let proto: u8 = unsafe { field(h, offset_of!(Ipv4Hdr, proto)) };
    if src != ip.dst[0] || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return vip::closed(ip, Reason::DROP_CLOSED);
    }
    quoted_flow(ctx, ip, inner_off + hlen, proto, [client, 0, 0, 0], quoted)
}

#[inline(always)]
fn packet_too_big_v6(ctx: &XdpContext, ip: &Ip, quoted: &mut Quoted) -> Result<Verdict, Reason> {
    let inner_off = ip.l4_off + Icmpv6Hdr::LEN;
    if ip.l4_len < Icmpv6Hdr::LEN + Ipv6Hdr::LEN + QUOTED_L4 {
        return vip::pass_if_vip_addr(ip, Reason::PASS_MALFORMED);
    }
    let Some(h) = ptr_at::<Ipv6Hdr>(ctx, inner_off) else {
        return vip::pass_if_vip_addr(ip, Reason::PASS_TRUNCATED);
    };
    let h = h as *const u8;
    // SAFETY (all reads): fields of the checked inner 40-byte header.
    let version: u8 = unsafe { field(h, offset_of!(Ipv6Hdr, vcf)) };
    if version >> 4 != 6 {
        return vip::pass_if_vip_addr(ip, Reason::PASS_MALFORMED);
    }
    let (s, d) = (offset_of!(Ipv6Hdr, src_addr), offset_of!(Ipv6Hdr, dst_addr));
    let src: [u32; 4] = unsafe { [field(h, s), field(h, s + 4), field(h, s + 8), field(h, s + 12)] };
    let client: [u32; 4] = unsafe { [field(h, d), field(h, d + 4), field(h, d + 8), field(h, d + 12)] };
    let proto: u8 = unsafe { field(h, offset_of!(Ipv6Hdr, next_hdr)) };
    if src != ip.dst || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return vip::closed(ip, Reason::DROP_CLOSED);
    }
    quoted_flow(ctx, ip, inner_off + Ipv6Hdr::LEN, proto, client, quoted)
}

/// The quoted flow, to forward the message to its backend (looked up as an established
/// flow's packet, and left unpinned).
#[inline(always)]
fn quoted_flow(
    ctx: &XdpContext,
    ip: &Ip,
    ports_off: usize,
    proto: u8,
    client: [u32; 4],
    quoted: &mut Quoted,
) -> Result<Verdict, Reason> {
    let Some(p) = ptr_at::<[u16; 2]>(ctx, ports_off) else {
        return vip::pass_if_vip_addr(ip, Reason::PASS_TRUNCATED);
    };
    // SAFETY: the checked 4 bytes of ports (source = the VIP's port, destination = the client's).
    let [vip_port_be, client_port_be] = unsafe { p.read_unaligned() };
    let Some(meta) = vip::lookup(ip, vip_port_be, proto) else {
        return vip::closed(ip, Reason::DROP_CLOSED);
    };
    let flow = Flow {
        family: ip.family,
        proto,
        src: client,
        dst: ip.dst,
        src_port_be: client_port_be,
        dst_port_be: vip_port_be,
        syn: false,
        closing: false,
        icmp: true,
    };
    *quoted = Quoted { flow, meta };
    Ok(Verdict::Tx)
}
