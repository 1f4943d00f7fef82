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
