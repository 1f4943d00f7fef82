//! Header parsing. Every length a header announces is checked against the frame and
//! against the other headers before anything is forwarded; headers are laid out by
//! `network-types`' structs and read through one bounds-checked accessor.

use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{stats::Reason, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

pub const ETH_LEN: usize = EthHdr::LEN;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Offset of the flags byte in the TCP header (after the data offset byte).
const TCP_FLAGS: usize = 13;
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

/// Reads a field at `off` bytes into a header that `ptr_at` checked.
///
/// # Safety
/// `hdr + off + size_of::<T>()` must lie inside that checked header. The load may be
/// misaligned (an IPv4 header starts 2 bytes past a word): BPF JITs on the platforms we
/// run on do misaligned packet loads, and the verifier allows them unless a program is
/// loaded with BPF_F_STRICT_ALIGNMENT, which ours is not. A byte-wise read would cost a
/// load, a shift and an or per byte on every packet.
#[inline(always)]
pub unsafe fn field<T: Copy>(hdr: *const u8, off: usize) -> T {
    // SAFETY: in bounds per the caller; alignment as explained above.
    unsafe { (hdr.add(off) as *const T).read() }
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The IP layer of a frame whose IP header is complete and consistent.
pub struct Ip {
    pub family: u8,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    /// The transport header cannot be read here: an IPv4 fragment, or an IPv6 extension
    /// header in front of it.
    pub opaque: bool,
    /// IPv4 with options.
    pub options: bool,
    /// Where the IP payload starts, and its length as the IP header gives it.
    pub l4_off: usize,
    pub l4_len: usize,
    /// Addresses as little-endian words of the network-order bytes; IPv4 in word 0.
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The IP family of an Ethernet frame (`FAMILY_V4` / `FAMILY_V6`); anything else is
/// `Err(reason)` (passed). Callers parse each family on a path of its own
/// (`ipv4`/`ipv6`), so that the compiler never merges the two and an IPv4 packet
/// carries no IPv6-sized state through the program.
#[inline(always)]
pub fn family(ctx: &XdpContext) -> Result<u8, Reason> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(Reason::PASS_TRUNCATED)? as *const u8;
    // SAFETY: inside the checked Ethernet header.
    let ethertype = u16::from_be(unsafe { field(eth, offset_of!(EthHdr, ether_type)) });
    match ethertype {
        ETH_P_IP => Ok(FAMILY_V4),
        ETH_P_IPV6 => Ok(FAMILY_V6),
        _ => Err(Reason::PASS_NOT_IP),
    }
}

/// An IPv4 header, complete and consistent with the frame, or `Err(reason)` (passed).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Ip, Reason> {
    let h = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN).ok_or(Reason::PASS_TRUNCATED)? as *const u8;
    // SAFETY (all reads): fields of the checked 20-byte header.
    let vihl: u8 = unsafe { field(h, offset_of!(Ipv4Hdr, vihl)) };
    if vihl >> 4 != 4 {
        return Err(Reason::PASS_MALFORMED);
    }
    let hlen = (vihl & 0x0f) as usize * 4;
    if hlen < Ipv4Hdr::LEN {
        return Err(Reason::PASS_MALFORMED);
    }
    let frame = frame_len(ctx);
    if ETH_LEN + hlen > frame {
        return Err(Reason::PASS_TRUNCATED);
    }
    let total = u16::from_be(unsafe { field(h, offset_of!(Ipv4Hdr, tot_len)) }) as usize;
    if total < hlen {
        return Err(Reason::PASS_MALFORMED);
    }
    if ETH_LEN + total > frame {
        return Err(Reason::PASS_TRUNCATED);
    }
    // More-fragments set or a non-zero offset: a fragment.
    let frags = u16::from_be(unsafe { field(h, offset_of!(Ipv4Hdr, frags)) });
    Ok(Ip {
        family: FAMILY_V4,
        proto: unsafe { field(h, offset_of!(Ipv4Hdr, proto)) },
        opaque: frags & 0x3fff != 0,
        options: hlen > Ipv4Hdr::LEN,
        l4_off: ETH_LEN + hlen,
        l4_len: total - hlen,
        src: [unsafe { field(h, offset_of!(Ipv4Hdr, src_addr)) }, 0, 0, 0],
        dst: [unsafe { field(h, offset_of!(Ipv4Hdr, dst_addr)) }, 0, 0, 0],
    })
}

/// IPv6 next-header values of extension headers (hop-by-hop, routing, fragment, ESP,
/// AH, destination options, mobility, HIP, shim6, experimental).
#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// An IPv6 header, complete and consistent with the frame, or `Err(reason)` (passed).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext) -> Result<Ip, Reason> {
    let h = ptr_at::<Ipv6Hdr>(ctx, ETH_LEN).ok_or(Reason::PASS_TRUNCATED)? as *const u8;
    // SAFETY (all reads): fields of the checked 40-byte header.
    let version: u8 = unsafe { field(h, offset_of!(Ipv6Hdr, vcf)) };
    if version >> 4 != 6 {
        return Err(Reason::PASS_MALFORMED);
    }
    let payload = u16::from_be(unsafe { field(h, offset_of!(Ipv6Hdr, payload_len)) }) as usize;
    if ETH_LEN + Ipv6Hdr::LEN + payload > frame_len(ctx) {
        return Err(Reason::PASS_TRUNCATED);
    }
    let next: u8 = unsafe { field(h, offset_of!(Ipv6Hdr, next_hdr)) };
    let src = offset_of!(Ipv6Hdr, src_addr);
    let dst = offset_of!(Ipv6Hdr, dst_addr);
    Ok(Ip {
        family: FAMILY_V6,
        proto: next,
        opaque: is_extension(next),
        options: false,
        l4_off: ETH_LEN + Ipv6Hdr::LEN,
        l4_len: payload,
        src: unsafe { [field(h, src), field(h, src + 4), field(h, src + 8), field(h, src + 12)] },
        dst: unsafe { [field(h, dst), field(h, dst + 4), field(h, dst + 8), field(h, dst + 12)] },
    })
}

/// What the balancer needs from a TCP or UDP header.
pub struct Ports {
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// A TCP FIN or RST from the client: the connection is ending.
    pub closing: bool,
}

/// The TCP or UDP header at `ip.l4_off`, checked against the IP payload length.
#[inline(always)]
pub fn transport(ctx: &XdpContext, ip: &Ip) -> Result<Ports, Reason> {
    if ip.proto == PROTO_TCP {
        if ip.l4_len < TcpHdr::LEN {
            return Err(Reason::PASS_MALFORMED);
        }
        let h = ptr_at::<TcpHdr>(ctx, ip.l4_off).ok_or(Reason::PASS_TRUNCATED)? as *const u8;
        // SAFETY (all reads): fields of the checked 20-byte header.
        let doff: u8 = unsafe { field(h, offset_of!(TcpHdr, _bitfield_1)) };
        let hlen = (doff >> 4) as usize * 4;
        if hlen < TcpHdr::LEN || hlen > ip.l4_len {
            return Err(Reason::PASS_MALFORMED);
        }
        let flags: u8 = unsafe { field(h, TCP_FLAGS) };
        Ok(Ports {
            src_port_be: unsafe { field(h, offset_of!(TcpHdr, source)) },
            dst_port_be: unsafe { field(h, offset_of!(TcpHdr, dest)) },
            syn: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            closing: flags & (TCP_FIN | TCP_RST) != 0,
        })
    } else {
        debug_assert!(ip.proto == PROTO_UDP);
        if ip.l4_len < UdpHdr::LEN {
            return Err(Reason::PASS_MALFORMED);
        }
        let h = ptr_at::<UdpHdr>(ctx, ip.l4_off).ok_or(Reason::PASS_TRUNCATED)? as *const u8;
        // SAFETY (all reads): fields of the checked 8-byte header.
        let len = u16::from_be(unsafe { field(h, offset_of!(UdpHdr, len)) }) as usize;
        if len < UdpHdr::LEN || len > ip.l4_len {
            return Err(Reason::PASS_MALFORMED);
        }
        Ok(Ports {
            src_port_be: unsafe { field(h, offset_of!(UdpHdr, src)) },
            dst_port_be: unsafe { field(h, offset_of!(UdpHdr, dst)) },
            syn: false,
            closing: false,
        })
    }
}
