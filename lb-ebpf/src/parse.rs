//! Header parsing with one bounds-checked accessor.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::stats::Verdict;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A pointer to a `T` at `off` bytes into the frame, if the frame holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// What the balancer needs from a packet. Addresses are little-endian words of the
/// network-order bytes; IPv4 uses word 0 only.
pub struct Flow {
    pub family: u8,
    pub proto: u8,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// A TCP FIN or RST from the client: the connection is ending.
    pub closing: bool,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port_be: u16,
    pub dst_port_be: u16,
}

/// Parses Ethernet, IPv4/IPv6 and the TCP/UDP ports. A packet the balancer does not
/// handle comes back as `Err(Verdict::Pass(reason))`.
#[inline(always)]
pub fn flow(ctx: &XdpContext) -> Result<Flow, Verdict> {
    let ethertype = unsafe { *ptr_at::<u16>(ctx, 12).ok_or(Verdict::Pass(stats::PASS_TRUNCATED))? };
    match u16::from_be(ethertype) {
        ETH_P_IP => ipv4(ctx),
        ETH_P_IPV6 => ipv6(ctx),
        _ => Err(Verdict::Pass(stats::PASS_NOT_IP)),
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Result<Flow, Verdict> {
    let ip = ptr_at::<[u32; 5]>(ctx, ETH_HLEN).ok_or(Verdict::Pass(stats::PASS_TRUNCATED))?;
    let ip = unsafe { *ip };
    let b0 = ip[0] as u8; // version and IHL
    let ihl = (b0 & 0x0f) as usize;
    if ihl < 5 {
        return Err(Verdict::Pass(stats::PASS_TRUNCATED));
    }
    // Flags+fragment offset are bytes 6..8: MF set or a non-zero offset is a fragment.
    let frag = u16::from_be((ip[1] >> 16) as u16);
    if frag & 0x3fff != 0 {
        return Err(Verdict::Pass(stats::PASS_FRAGMENT));
    }
    if ihl > 5 {
        crate::stats::note(stats::NOTE_IPV4_OPTIONS);
    }
    let proto = (ip[2] >> 8) as u8;
    let mut flow = Flow {
        family: FAMILY_V4,
        proto,
        syn: false,
        closing: false,
        src: [ip[3], 0, 0, 0],
        dst: [ip[4], 0, 0, 0],
        src_port_be: 0,
        dst_port_be: 0,
    };
    ports(ctx, ETH_HLEN + ihl * 4, &mut flow)?;
    Ok(flow)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext) -> Result<Flow, Verdict> {
    let ip = ptr_at::<[u32; 10]>(ctx, ETH_HLEN).ok_or(Verdict::Pass(stats::PASS_TRUNCATED))?;
    let ip = unsafe { *ip };
    let next = (ip[1] >> 16) as u8;
    let mut flow = Flow {
        family: FAMILY_V6,
        proto: next,
        syn: false,
        closing: false,
        src: [ip[2], ip[3], ip[4], ip[5]],
        dst: [ip[6], ip[7], ip[8], ip[9]],
        src_port_be: 0,
        dst_port_be: 0,
    };
    match next {
        // hop-by-hop, routing, fragment, ESP, AH, destination options, mobility
        0 | 43 | 44 | 50 | 51 | 60 | 135 => Err(Verdict::Pass(stats::PASS_IPV6_EXT)),
        _ => {
            ports(ctx, ETH_HLEN + IPV6_HLEN, &mut flow)?;
            Ok(flow)
        }
    }
}

/// Reads the ports (and for TCP the flags) of the transport header at `off`.
#[inline(always)]
fn ports(ctx: &XdpContext, off: usize, flow: &mut Flow) -> Result<(), Verdict> {
    // One bounds check per header: the whole header is checked, the ports are its start.
    let ports = match flow.proto {
        PROTO_TCP => {
            let tcp = ptr_at::<[u8; 14]>(ctx, off).ok_or(Verdict::Pass(stats::PASS_TRUNCATED))?;
            // SAFETY: `tcp` points at 14 bytes inside the frame.
            let flags = unsafe { (*tcp)[13] };
            flow.syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            flow.closing = flags & (TCP_FIN | TCP_RST) != 0;
            tcp as *const [u16; 2]
        }
        PROTO_UDP => ptr_at::<[u8; 8]>(ctx, off).ok_or(Verdict::Pass(stats::PASS_TRUNCATED))? as *const [u16; 2],
        _ => return Err(Verdict::Pass(stats::PASS_OTHER_PROTO)),
    };
    // SAFETY: the first 4 bytes of a header checked above (at an even offset, like before).
    let p = unsafe { *ports };
    flow.src_port_be = p[0];
    flow.dst_port_be = p[1];
    Ok(())
}
