//! `lb-agent explain CLIENT:PORT VIP:PORT/PROTO`: which backend the kernel picks for a
//! flow and why, computed from the pinned maps with the kernel's own decision code.

use std::net::SocketAddr;

use lb_common::{BACKEND_F_PRESENT, NO_BACKEND};

use super::{print, CliError, PinArgs};
use crate::dataplane::xdp::explain::{explain, Explanation, Query};
use crate::dataplane::xdp::loader::Maps;
use crate::model::{addr_from_bytes, Vip};

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// The client's address and source port; IPv6 as [ADDRESS]:PORT.
    #[arg(value_name = "CLIENT:PORT")]
    pub client: String,
    /// The VIP, ADDRESS:PORT/PROTOCOL (tcp or udp); IPv6 as [ADDRESS]:PORT/PROTOCOL.
    #[arg(value_name = "VIP:PORT/PROTO")]
    pub vip: String,
    /// Explain the flow's first packet (a TCP SYN) instead of a packet of an
    /// established flow.
    #[arg(long)]
    pub syn: bool,
}

/// Parses the two positional arguments into a query (bad input is a usage error).
pub fn query(client: &str, vip: &str, syn: bool) -> Result<Query, CliError> {
    let bad = |arg, value: &str, problem: String| CliError::Argument { arg, value: value.into(), problem };
    let src: SocketAddr = client.parse().map_err(|_| {
        bad("CLIENT:PORT", client, "expected ADDRESS:PORT, e.g. 192.0.2.1:40000 or [2001:db8::1]:40000".into())
    })?;
    let vip_parsed: Vip = vip.parse().map_err(|e| bad("VIP:PORT/PROTO", vip, format!("{e}")))?;
    if src.is_ipv4() != vip_parsed.addr.is_ipv4() {
        return Err(bad("CLIENT:PORT", client, format!("not of the address family of VIP {vip_parsed}")));
    }
    Ok(Query { src: src.ip(), src_port: src.port(), vip: vip_parsed, syn })
}

pub fn run(args: &ExplainArgs) -> Result<(), CliError> {
    let q = query(&args.client, &args.vip, args.syn)?;
    let (maps, meta) = args.pins.open()?;
    let e = explain(&maps, meta.hash_seed, &q).map_err(|source| args.pins.read_error(source))?;
    print(&render(&maps, &q, &e, meta.hash_seed))
}

/// A backend id as `ADDRESS (id N)`, or `none`.
fn backend_name(maps: &Maps, id: u32) -> String {
    if id == NO_BACKEND {
        return "none".into();
    }
    match maps.backends.get(&id, 0) {
        Ok(b) if b.flags & BACKEND_F_PRESENT != 0 => format!("{} (id {id})", addr_from_bytes(b.family, &b.addr)),
        _ => format!("id {id} (removed)"),
    }
}

/// The explanation, then the flow and the slot it hashed to.
pub fn render(maps: &Maps, q: &Query, e: &Explanation, seed: u32) -> String {
    let packet = if q.syn { "first packet (SYN)" } else { "packet of an established flow" };
    let mut out = format!("{e}\n");
    out += &format!("  flow: {} -> {}, {packet}, hash seed {seed}\n", SocketAddr::new(q.src, q.src_port), q.vip);
    if let (Some(slot), Some(entry)) = (e.slot, e.entry) {
        let (cur, prev) = (backend_name(maps, entry.backend), backend_name(maps, entry.prev));
        let kind = if entry.backend == entry.prev { "stable" } else { "changed" };
        out += &format!("  slot {slot} ({kind}): current backend {cur}, previous backend {prev}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::query;

    #[test]
    fn parses_v4_and_v6() {
        let q = query("192.0.2.1:40000", "192.0.2.100:8080/tcp", false).unwrap();
        assert_eq!(
            (q.src.to_string(), q.src_port, q.vip.to_string()),
            ("192.0.2.1".into(), 40000, "192.0.2.100:8080/tcp".into())
        );
        let q = query("[2001:db8::1]:5", "[2001:db8::10]:53/udp", true).unwrap();
        assert!(q.syn && q.src.is_ipv6());
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for (c, v, want) in [
            ("192.0.2.1", "192.0.2.100:8080/tcp", "CLIENT:PORT \"192.0.2.1\": expected ADDRESS:PORT"),
            ("192.0.2.1:1", "192.0.2.100:8080", "VIP:PORT/PROTO \"192.0.2.100:8080\": expected ADDRESS:PORT/PROTOCOL"),
            ("192.0.2.1:1", "192.0.2.100:8080/sctp", "protocol must be tcp or udp"),
            ("[2001:db8::1]:1", "192.0.2.100:8080/tcp", "not of the address family of VIP 192.0.2.100:8080/tcp"),
        ] {
            let e = query(c, v, false).err().unwrap();
            assert!(e.is_usage() && e.to_string().contains(want), "{e}");
        }
    }
}
