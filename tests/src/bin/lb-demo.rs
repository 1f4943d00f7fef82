//! `cargo xtask demo`: the product on an embedded default, no cluster needed.
//!
//! Builds a namespace lab (a client, an LB host, three backends on one bridge), runs
//! the real `lb-agent` on the LB with one VIP (TCP and UDP, IPv4 and IPv6) and three
//! backends weighted 1:2:3, sends real traffic from the client, prints where it went
//! and the data plane's counters, then removes everything.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Result};
use lb_agent::config::XdpModeChoice;
use lb_agent::model::addr_from_bytes;
use lb_common::stats::REASON_NAMES;
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, VIP4, VIP6};
use lb_tests::servers::{split, start_backend, tcp_backends, udp_backends, TCP_PORT, UDP_PORT};

const WEIGHTS: [u32; 3] = [1, 2, 3];

fn config() -> String {
    let mut out = String::new();
    for (addr, shown) in [(VIP4, VIP4.to_string()), (VIP6, format!("[{VIP6}]"))] {
        for (proto, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT)] {
            out += &format!("[[vip]]\naddress = \"{shown}:{port}/{proto}\"\n");
            for (i, w) in WEIGHTS.iter().enumerate() {
                let (b4, b6) = backend_addrs(i);
                let b = if addr.contains(':') { b6 } else { b4 };
                out += &format!("[[vip.backend]]\naddress = \"{b}\"\nweight = {w}\n");
            }
        }
    }
    out
}

fn print_split(what: &str, names: &[String]) {
    let total: u32 = WEIGHTS.iter().sum();
    println!("  {what:<10} {:>5} requests", names.len());
    let got = split(names);
    for (i, w) in WEIGHTS.iter().enumerate() {
        let share = got.get(&format!("b{i}")).copied().unwrap_or(0.0);
        println!(
            "    b{i} (weight {w}): {:5.1} %   (weight share {:5.1} %)",
            share * 100.0,
            *w as f64 * 100.0 / total as f64
        );
    }
}

fn main() -> Result<()> {
    if let Some(why) = lb_tests::unavailable() {
        bail!("the demo {why}");
    }
    let native = !std::env::args().any(|a| a == "--generic");
    let mode = if native { XdpModeChoice::Native } else { XdpModeChoice::Generic };
    println!("building the lab: client, LB and 3 backends in network namespaces ...");
    let lab = Lab::new("demo", 3, mode)?;
    for i in 0..3 {
        start_backend(&lab, i)?;
    }
    let mode_flag = if native { "native" } else { "generic" };
    println!("starting lb-agent --iface eth0 --xdp-mode {mode_flag} in {} with VIPs {VIP4} and {VIP6}", lab.lb());
    let mut agent = Agent::start(&lab, &config(), &["--xdp-mode", mode_flag])?;
    agent.wait_programmed(4, 12)?;

    println!("\nwhere the client's traffic went:");
    let sock = |a: &str, p| SocketAddr::new(a.parse::<IpAddr>().unwrap(), p);
    print_split("IPv4 TCP", &tcp_backends(&lab, sock(VIP4, TCP_PORT), 600)?);
    print_split("IPv6 TCP", &tcp_backends(&lab, sock(VIP6, TCP_PORT), 300)?);
    print_split("IPv4 UDP", &udp_backends(&lab, sock(VIP4, UDP_PORT), 300)?);
    print_split("IPv6 UDP", &udp_backends(&lab, sock(VIP6, UDP_PORT), 300)?);

    let maps = PinnedMaps::open(&agent.pin_dir)?;
    println!("\ndata plane counters (pinned maps in {}):", agent.pin_dir.display());
    let mut per_addr: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for (id, b) in maps.backend_list()? {
        let c = maps.backend_counter(id)?;
        let e = per_addr.entry(addr_from_bytes(b.family, &b.addr)).or_default();
        e.0 += c.packets;
        e.1 += c.bytes;
    }
    for (addr, (packets, bytes)) in &per_addr {
        println!("  backend {addr:<18} {packets:>7} packets {bytes:>9} bytes");
    }
    for (i, name) in REASON_NAMES.iter().enumerate() {
        let n = maps.reason(i as u32)?;
        if n > 0 {
            println!("  {name:<20} {n:>7}");
        }
    }
    println!("  (replies went from the backends straight to the client: pass_not_vip stays ~0)");
    println!("\n$ lb-agent status --iface eth0");
    let mut status = lb_tests::netns::command_in(&lab.lb(), &lb_tests::agent::agent_binary()?)?;
    let out = status.args(["status", "--iface", "eth0", "--pin-root"]).arg(&agent.pin_root).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let vips = lb_agent::dataplane::xdp::loader::maps_dir(&agent.pin_dir).join(lb_common::MAP_VIPS);
    println!("\n$ bpftool map dump pinned {}   (first entry)", vips.display());
    match lb_tests::netns::sh("bpftool", &["map", "dump", "pinned", &vips.to_string_lossy()]) {
        Ok(out) => out.lines().take(20).for_each(|l| println!("{l}")),
        Err(e) => println!("  (bpftool: {e})"),
    }
    drop(maps);
    let pin_root = agent.pin_root.clone();
    let status = agent.stop()?;
    println!("\nlb-agent stopped ({status}); the data path stays in place until `lb-agent cleanup`:");
    lb_tests::agent::cleanup(&lab, &pin_root)?;
    println!("cleanup done (program detached, pins and VIP addresses removed); removing the lab.");
    Ok(())
}
