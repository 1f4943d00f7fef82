//! What happens on a VIP address: its (port, protocol)s are served, echo and neighbour
//! discovery go to the host, path-MTU messages about its flows go to their backends,
//! and everything else is dropped, so no host service answers on a VIP.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::XdpContext};
use lb_common::{
    hash, stats::Reason, AddrKey, SrcRangeKey, VipKey, VipMeta, FAMILY_V4, PROTO_TCP, PROTO_UDP, SRC_RANGE_FULL_PREFIX,
    VIP_F_NO_BACKENDS, VIP_F_SOURCE_RANGES,
};

use crate::{
    forward, icmp,
    maps::{SRC_RANGES, VIPS, VIP_ADDRS, VIP_FILTER},
    parse::{self, Ip},
    select::{self, Flow},
    stats::{traffic, Verdict},
};
use crate::maps::{BACKEND_STATS, VIP_STATS};

/// The balancer: `Ok` is a verdict, `Err` a drop reason.
#[inline(always)]
pub fn try_lb(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let ip = match parse::family(ctx) {
        Ok(FAMILY_V4) => parse::ipv4(ctx),
        Ok(_) => return ip_packet(ctx, parse::ipv6(ctx)),
        Err(reason) => return Ok(Verdict::Pass(reason)),
    };
    ip_packet(ctx, ip)
}

/// Everything after the IP header; inlined once per family (see `parse::family`).
#[inline(always)]
fn ip_packet(ctx: &XdpContext, ip: Result<Ip, Reason>) -> Result<Verdict, Reason> {
    let ip = match ip {
        Ok(ip) => ip,
        Err(reason) => return Ok(Verdict::Pass(reason)),
    };
    if !maybe_vip_addr(&ip.dst) {
        return Ok(Verdict::Pass(Reason::PASS_NOT_VIP));
    }
    if ip.opaque || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        let mut quoted = Quoted::default();
        return match not_served(ctx, &ip, &mut quoted) {
            Ok(Verdict::Tx) => to_backend(ctx, &quoted.flow, &quoted.meta, ip.options),
            other => other,
        };
    }
    serve(ctx, &ip)
}

/// The flow an ICMP error is about, and its VIP.
#[derive(Default)]
pub struct Quoted {
    pub flow: Flow,
    pub meta: VipMeta,
}

/// Neither TCP nor UDP, or no transport header to read: ICMP, or closed. `Ok(Tx)` means
/// "forward to the backend of `quoted`". Out of line, and leaving the forwarding to the
/// caller, so the common path keeps a small stack and the deepest call chain stays
/// within the verifier's 512 bytes.
#[inline(never)]
fn not_served(ctx: &XdpContext, ip: &Ip, quoted: &mut Quoted) -> Result<Verdict, Reason> {
    if !ip.opaque && ip.proto == icmp::proto_of(ip.family) {
        icmp::handle(ctx, ip, quoted)
    } else {
        closed(ip, Reason::DROP_CLOSED)
    }
}

/// A packet for a served (address, port, protocol).
#[inline(always)]
fn serve(ctx: &XdpContext, ip: &Ip) -> Result<Verdict, Reason> {
    let ports = match parse::transport(ctx, ip) {
        Ok(p) => p,
        Err(reason) => return pass_if_vip_addr(ip, reason),
    };
    let Some(meta) = lookup(ip, ports.dst_port_be, ip.proto) else {
        return closed(ip, Reason::DROP_CLOSED);
    };
    let flow = Flow {
        family: ip.family,
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        src_port_be: ports.src_port_be,
        dst_port_be: ports.dst_port_be,
        syn: ports.syn,
        closing: ports.closing,
        icmp: false,
    };
    to_backend(ctx, &flow, &meta, ip.options)
}

/// Checks the client and sends the frame to the backend for `flow`.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, flow: &Flow, meta: &VipMeta, options: bool) -> Result<Verdict, Reason> {
    if meta.flags & VIP_F_SOURCE_RANGES != 0 && !source_allowed(meta.id, &flow.src) {
        return Err(Reason::DROP_SOURCE_RANGE);
    }
    if meta.flags & VIP_F_NO_BACKENDS != 0 {
        return Err(Reason::DROP_NO_BACKEND);
    }
    let (id, backend) = select::backend(flow, meta)?;
    let len = parse::frame_len(ctx) as u64;
    traffic(&VIP_STATS, meta.id, len, flow.syn);
    traffic(&BACKEND_STATS, id, len, flow.syn);
    let verdict = forward::to_backend(ctx, backend, options)?;
    if flow.icmp {
        crate::stats::note(Reason::NOTE_ICMP_PTB);
    }
    Ok(verdict)
}

/// The VIP at (`ip.dst`, port, protocol).
#[inline(always)]
pub fn lookup(ip: &Ip, port_be: u16, proto: u8) -> Option<VipMeta> {
    let mut key = VipKey { addr: [0; 16], port_be, proto, family: ip.family };
    // SAFETY: `addr` is 16 bytes; an unaligned store of four words.
    unsafe { (key.addr.as_mut_ptr() as *mut [u32; 4]).write_unaligned(ip.dst) };
    // SAFETY: the value is copied out at once.
    unsafe { VIPS.get(&key).copied() }
}

/// False when `addr` is surely no VIP address: one array read, no hash lookup. True
/// may be a false positive (a filter bit shared with a VIP address).
#[inline(always)]
fn maybe_vip_addr(addr: &[u32; 4]) -> bool {
    let bit = hash::filter_bit(addr);
    match VIP_FILTER.get(bit >> 6) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// Whether `ip.dst` really is a VIP address (the exact set, for the rare paths).
#[inline(always)]
pub fn is_vip_addr(ip: &Ip) -> bool {
    let mut key = AddrKey { addr: [0; 16], family: ip.family, _pad: [0; 3] };
    // SAFETY: as in `lookup`.
    unsafe { (key.addr.as_mut_ptr() as *mut [u32; 4]).write_unaligned(ip.dst) };
    VIP_ADDRS.get_ptr(&key).is_some()
}

/// `reason` (a drop) on a VIP address; passed as no VIP's where the filter was wrong.
#[inline(never)]
pub fn closed(ip: &Ip, reason: Reason) -> Result<Verdict, Reason> {
    if is_vip_addr(ip) {
        Err(reason)
    } else {
        Ok(Verdict::Pass(Reason::PASS_NOT_VIP))
    }
}

/// Passed with `reason` on a VIP address; as no VIP's where the filter was wrong.
#[inline(never)]
pub fn pass_if_vip_addr(ip: &Ip, reason: Reason) -> Result<Verdict, Reason> {
    Ok(Verdict::Pass(if is_vip_addr(ip) { reason } else { Reason::PASS_NOT_VIP }))
}

/// Is `client` inside one of the VIP's source ranges? (Only for VIPs that have them.)
#[inline(always)]
fn source_allowed(vip_id: u32, client: &[u32; 4]) -> bool {
    let mut data = SrcRangeKey { vip_id_be: vip_id.to_be_bytes(), addr: [0; 16] };
    // SAFETY: as in `lookup`.
    unsafe { (data.addr.as_mut_ptr() as *mut [u32; 4]).write_unaligned(*client) };
    SRC_RANGES.get(&Key::new(SRC_RANGE_FULL_PREFIX, data)).is_some()
}
