//! End to end in network namespaces: the real `lb-agent` binary attached to the LB's
//! veth, real TCP and UDP sockets on a client and on backends. Run in native and in
//! generic XDP mode.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lb_agent::config::XdpModeChoice;
use lb_common::stats::Reason;
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, VIP4, VIP6};
use lb_tests::servers::{connect_many, split, start_backend, tcp_backends, udp_backends, TCP_PORT, UDP_PORT};

/// The agent's config: the same backends (index, weight) for all four VIPs. Backends
/// start at full weight (`start_progress = 100`): this test is about splits and flow
/// stickiness; slow start has its own test.
fn config(backends: &[(usize, u32)]) -> String {
    let mut out = String::new();
    for (addr, proto, port) in
        [(VIP4, "tcp", TCP_PORT), (VIP4, "udp", UDP_PORT), (VIP6, "tcp", TCP_PORT), (VIP6, "udp", UDP_PORT)]
    {
        let v6 = addr.contains(':');
        let shown = if v6 { format!("[{addr}]") } else { addr.to_string() };
        out += &format!("[[vip]]\naddress = \"{shown}:{port}/{proto}\"\n");
        for (i, w) in backends {
            let (b4, b6) = backend_addrs(*i);
            out += &format!(
                "[[vip.backend]]\naddress = \"{}\"\nweight = {w}\nstart_progress = 100\n",
                if v6 { b6 } else { b4 }
            );
        }
    }
    out
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port)
}

/// Asserts each backend's share is its weight's share within `tol` (absolute).
fn assert_split(what: &str, names: &[String], weights: &[(usize, u32)], tol: f64) {
    let got = split(names);
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    println!("{what}: {} requests, split {got:.3?}", names.len());
    for (i, w) in weights {
        let want = *w as f64 / total as f64;
        let share = got.get(&format!("b{i}")).copied().unwrap_or(0.0);
        assert!((share - want).abs() <= tol, "{what}: b{i} got {share:.3}, weight share {want:.3} (tolerance {tol})");
    }
}

fn scenario(mode: XdpModeChoice, tag: &str) -> Result<()> {
    let lab = Lab::new(tag, 4, mode)?;
    for i in 0..4 {
        start_backend(&lab, i)?;
    }
    let weights = [(0, 1), (1, 2), (2, 3)];
    let mode_flag = match mode {
        XdpModeChoice::Generic => "generic",
        _ => "native",
    };
    let mut agent = Agent::start(&lab, &config(&weights), &["--xdp-mode", mode_flag])?;
    agent.wait_programmed(4, 12)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let (tx0, not_vip0) = (maps.reason(Reason::TX.0)?, maps.reason(Reason::PASS_NOT_VIP.0)?);

    // The split follows the weights, over IPv4 and IPv6, TCP and UDP. With n requests
    // and share p the standard deviation is sqrt(p(1-p)/n); tolerances are ~3 sigma.
    let (v4t, v6t, v4u, v6u) = (sock(VIP4, TCP_PORT), sock(VIP6, TCP_PORT), sock(VIP4, UDP_PORT), sock(VIP6, UDP_PORT));
    assert_split("IPv4 TCP", &tcp_backends(&lab, v4t, 1200)?, &weights, 0.05);
    assert_split("IPv6 TCP", &tcp_backends(&lab, v6t, 600)?, &weights, 0.07);
    assert_split("IPv4 UDP", &udp_backends(&lab, v4u, 600)?, &weights, 0.07);
    assert_split("IPv6 UDP", &udp_backends(&lab, v6u, 600)?, &weights, 0.07);

    // Replies go backend -> client directly: the LB's XDP program saw thousands of
    // client->VIP frames but (almost) no frame for anything else.
    let (tx, not_vip) = (maps.reason(Reason::TX.0)? - tx0, maps.reason(Reason::PASS_NOT_VIP.0)? - not_vip0);
    println!("LB counters during the split: tx {tx}, pass_not_vip {not_vip}");
    ensure!(tx >= 3 * 1800 + 1200, "every client->VIP frame was forwarded (tx {tx})");
    ensure!(not_vip < 50, "replies must not pass through the LB (pass_not_vip {not_vip})");

    // Established connections survive a weight change and a new backend.
    let mut conns = connect_many(&lab, v4t, 60)?;
    conns.extend(connect_many(&lab, v6t, 30)?);
    for c in &mut conns {
        c.echo("before")?;
    }
    let weights2 = [(0, 4), (1, 2), (2, 3), (3, 3)];
    agent.reload(&config(&weights2))?;
    agent.wait_programmed(4, 16)?;
    std::thread::sleep(Duration::from_millis(200));
    for (i, c) in conns.iter_mut().enumerate() {
        c.echo("after").with_context(|| format!("established connection {i} (backend {})", c.backend))?;
    }
    let flow_notes = (maps.reason(Reason::NOTE_PREV_BACKEND.0)?, maps.reason(Reason::NOTE_FLOW_PINNED.0)?);
    println!("after the change: {} connections intact; prev-backend/pinned notes {flow_notes:?}", conns.len());
    assert_split("IPv4 TCP after the change", &tcp_backends(&lab, v4t, 1200)?, &weights2, 0.05);
    drop(conns);

    // A removed backend drains: it gets no new connections.
    let weights3 = [(0, 4), (2, 3), (3, 3)];
    agent.reload(&config(&weights3))?;
    let (b1v4, b1v6) = backend_addrs(1);
    lb_tests::traffic::wait_for("b1 draining", Duration::from_secs(10), || {
        let draining = |b: Option<lb_common::Backend>| b.is_some_and(|b| b.flags & lb_common::BACKEND_F_DRAINING != 0);
        Ok(draining(maps.backend_by_addr(b1v4)?) && draining(maps.backend_by_addr(b1v6)?))
    })?;
    std::thread::sleep(Duration::from_millis(200));
    // New UDP flows: source ports never used before (a port used within the flow idle
    // time is the same flow, which keeps its backend, draining or not).
    let new_udp = lb_tests::servers::udp_backends_from(&lab, v6u, 300, 20_000)?;
    for (what, names) in [("IPv4 TCP", tcp_backends(&lab, v4t, 400)?), ("IPv6 UDP", new_udp)] {
        let per: BTreeMap<_, _> = split(&names);
        ensure!(!per.contains_key("b1"), "{what}: removed backend b1 got new connections: {per:?}");
    }

    // SIGTERM leaves the data path in place; `lb-agent cleanup` removes it.
    let pin_root = agent.pin_root.clone();
    let status = agent.stop()?;
    ensure!(status.success(), "lb-agent exited with {status}");
    let vip_present = || -> Result<bool> {
        let addrs = lb_tests::netns::ip(&lab.lb(), &["-br", "addr", "show", "eth0"])?;
        Ok(addrs.contains(VIP4) && addrs.contains("2001:db8:77::100"))
    };
    let xdp_attached =
        || -> Result<bool> { Ok(lb_tests::netns::ip(&lab.lb(), &["-d", "link", "show", "eth0"])?.contains("xdp")) };
    ensure!(vip_present()?, "after SIGTERM the VIPs stay: {}", lb_tests::netns::ip(&lab.lb(), &["-br", "addr"])?);
    ensure!(
        xdp_attached()?,
        "after SIGTERM the program stays: {}",
        lb_tests::netns::ip(&lab.lb(), &["-d", "link", "show", "eth0"])?
    );
    ensure!(tcp_backends(&lab, v4t, 50)?.len() == 50, "traffic still flows with no agent running");
    lb_tests::agent::cleanup(&lab, &pin_root)?;
    ensure!(!vip_present()? && !xdp_attached()?, "cleanup removes the VIPs and detaches the program");
    ensure!(!pin_root.join("eth0").exists(), "cleanup removes the pins");
    Ok(())
}

#[test]
fn e2e_native_xdp() {
    if lb_tests::skip("e2e_native_xdp") {
        return;
    }
    scenario(XdpModeChoice::Native, "n").unwrap();
}

#[test]
fn e2e_generic_xdp() {
    if lb_tests::skip("e2e_generic_xdp") {
        return;
    }
    scenario(XdpModeChoice::Generic, "g").unwrap();
}
