//! Values written as text in flags, the config file or Kubernetes objects: durations
//! and client ranges. Pure; the errors name the field.

use std::net::IpAddr;

use super::{FieldError, Problem};

/// Parses `500ms`, `10s`, `5m`, `3h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(n.checked_mul(unit_ms)?))
}

/// Parses allowed client ranges (`198.51.100.0/24`; a bare address is a single host).
/// Host bits are cleared. Ranges of both families may be listed (a dual-stack Service
/// lists both): a VIP admits the clients of its own family's ranges, and none of its
/// family if the list has only the other family's.
pub fn parse_source_ranges(field: &str, ranges: &[String]) -> Result<Vec<ipnet::IpNet>, FieldError> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let text = r.trim();
        let net = match text.parse::<ipnet::IpNet>() {
            Ok(n) => n,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(a) => ipnet::IpNet::from(a),
                Err(_) => return Err(FieldError::new(field, r, Problem::SourceRange)),
            },
        };
        let net = net.trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    out.sort();
    Ok(out)
}

/// Why `addr` cannot be a VIP, if it cannot: a VIP is a unicast address that clients on
/// other hosts reach, which the LB host answers for on its link.
pub fn unusable_vip(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V4(a) if a.octets()[0] >= 240 => Some("reserved (240.0.0.0/4)"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
        _ => None,
    }
}
