//! What an address is to a link: on one of its subnets (backends must be), or one a
//! VIP must not take (the host's own, a gateway, a subnet broadcast).

use std::net::IpAddr;

use super::Link;

/// Why `addr` cannot be a VIP on this link, if it cannot: it is one of the host's own
/// addresses there (not one of `vips`, the VIP addresses an agent added), the gateway of
/// a route out of it, or the broadcast address of one of its IPv4 subnets. Taking it
/// would steal the host's traffic (or its router's).
pub fn host_conflict(link: &Link, vips: &std::collections::BTreeSet<IpAddr>, addr: IpAddr) -> Option<String> {
    if !vips.contains(&addr) {
        if let Some((_, len)) = link.addrs.iter().find(|(a, _)| *a == addr) {
            return Some(format!("{addr} is this host's own address on {} ({addr}/{len})", link.name));
        }
    }
    if link.gateways.contains(&addr) {
        return Some(format!("{addr} is the gateway of a route out of {}", link.name));
    }
    for &(net, len) in &link.addrs {
        if let (IpAddr::V4(n), IpAddr::V4(a)) = (net, addr) {
            let host_bits = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if len < 31 && u32::from(a) == u32::from(n) | host_bits {
                return Some(format!("{addr} is the broadcast address of {net}/{len} on {}", link.name));
            }
        }
    }
    None
}

/// Does `addr` fall inside one of the link's subnets (for validating backends are on-link)?
///
/// Only addresses of the same family count; a /32 or /128 (such as a VIP) contains just
/// itself, and a /0 contains everything of its family.
pub fn on_link(link: &Link, addr: IpAddr) -> bool {
    link.addrs.iter().any(|&(net, prefix_len)| in_prefix(net, prefix_len, addr))
}

/// Whether `addr` lies in `net`/`prefix_len`.
fn in_prefix(net: IpAddr, prefix_len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(net), IpAddr::V4(addr)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len.min(32))).unwrap_or(0);
            u32::from(net) & mask == u32::from(addr) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(addr)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix_len.min(128))).unwrap_or(0);
            u128::from(net) & mask == u128::from(addr) & mask
        }
        _ => false,
    }
}
