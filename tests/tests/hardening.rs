//! The XDP program's hardening end to end, with the real `lb-agent` in the namespace
//! lab: a VIP address is closed except for its ports; ICMP packet-too-big messages reach
//! the backend of the flow they are about; source ranges; UDP flows, affinity drains and
//! affinity toggles that never move an established flow.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use lb_agent::config::XdpModeChoice;
use lb_common::stats::Reason;
use lb_common::{BACKEND_F_DRAINING, PROTO_UDP, VIP_F_AFFINITY};
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, CLIENT4, CLIENT6, LB4, LB6, VIP4, VIP6};
use lb_tests::netns::sh;
use lb_tests::probe::{
    config, greeter, learned_mtu, programmed, ptb, send_icmp, side_by_side, tcp_flow, tcp_try, udp_flow, udp_try,
    IcmpWatch, Outcome, Probe, Seen, Since, UdpStreams, VipConf,
};
use lb_tests::servers::{connect_many, split, start_backend, tcp_backends, udp_backends, TCP_PORT, UDP_PORT};
use lb_tests::traffic::{wait_for, Background};

/// How long a probe waits before calling a packet dropped.
const DROPPED: Duration = Duration::from_secs(3);
/// How long an answer may take on a loaded machine.
const SLOW: Duration = Duration::from_secs(8);
/// A second TCP port with greeters on every backend (`probe::greeter`).
const OTHER_PORT: u16 = 8081;

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().unwrap(), port)
}

fn lab_with(tag: &str, backends: usize) -> Result<Lab> {
    let lab = Lab::new(tag, backends, XdpModeChoice::Native)?;
    for i in 0..backends {
        start_backend(&lab, i)?;
    }
    Ok(lab)
}

/// Backends 0..n at weight 1.
fn even(n: usize) -> Vec<(usize, u32, bool)> {
    (0..n).map(|i| (i, 1, false)).collect()
}

/// The index of backend `b{i}`.
fn index(name: &str) -> Result<usize> {
    name.strip_prefix('b').and_then(|i| i.parse().ok()).with_context(|| format!("{name:?} is no backend name"))
}

fn served_by_backend(o: &Outcome) -> bool {
    matches!(o, Outcome::Served(name) if index(name).is_ok())
}

/// Host services on the LB answer on its own address but not on the VIP's; only the
/// VIP's configured port is served; echo to the VIP is answered by the LB host.
fn closed_vip() -> Result<()> {
    let lab = lab_with("h1", 2)?;
    let vips = [sock(VIP4, TCP_PORT), sock(VIP6, TCP_PORT)].map(|v| VipConf::new(v, "tcp", &even(2)));
    let mut agent = Agent::start(&lab, &config(&vips), &[])?;
    agent.wait_programmed(2, 4)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    greeter(&lab.lb(), "lb-host", &[sock("0.0.0.0", 22), sock("::", 22)])?;
    wait_for("the VIP on the LB's interface (to listen on it)", SLOW, || {
        Ok(greeter(&lab.lb(), "lb-host", &[sock(VIP4, 2222)]).is_ok())
    })?;
    let before = Since::now(&maps)?;
    let cl = lab.client();

    for to in [sock(LB4, 22), sock(LB6, 22)] {
        let got = tcp_try(&cl, to, SLOW)?;
        ensure!(got == Outcome::Served("lb-host".into()), "the LB's own {to} serves its listener: {got:?}");
    }
    let got = udp_try(&cl, sock(LB4, 9), SLOW)?;
    ensure!(got == Outcome::Refused, "the LB host itself answers UDP {LB4}:9 with port unreachable: {got:?}");
    for to in [sock(VIP4, TCP_PORT), sock(VIP6, TCP_PORT)] {
        let got = tcp_try(&cl, to, SLOW)?;
        ensure!(served_by_backend(&got), "the VIP's port {to} is served by a backend: {got:?}");
    }
    // Host listeners (VIP:22 via 0.0.0.0, VIP:2222 itself) and UDP: nothing comes back,
    // not even a reset or a port unreachable.
    let tcp = [sock(VIP4, 22), sock(VIP6, 22), sock(VIP4, 2222)].map(|to| (tcp_try as Probe, to));
    let udp = [sock(VIP4, 9), sock(VIP6, 9)].map(|to| (udp_try as Probe, to));
    for (to, got) in side_by_side(&cl, &[&tcp[..], &udp[..]].concat(), DROPPED)? {
        ensure!(got == Outcome::Dropped, "{to} on the VIP address must be closed: {got:?}");
    }
    for (family, vip) in [("-4", VIP4), ("-6", VIP6)] {
        sh("ip", &["netns", "exec", &cl, "ping", family, "-c", "3", "-i", "0.2", "-W", "5", vip])
            .with_context(|| format!("ping {vip}: the LB host answers echo to its VIP"))?;
    }
    let (closed, icmp) = (before.moved(Reason::DROP_CLOSED)?, before.moved(Reason::PASS_LOCAL_ICMP)?);
    println!("drop_closed +{closed}, pass_local_icmp +{icmp}");
    ensure!(closed >= 5, "3 TCP connects and 2 UDP requests to closed ports were dropped as closed ({closed})");
    ensure!(icmp >= 6, "6 echo requests were passed to the LB host ({icmp})");
    Ok(())
}

#[test]
fn vip_address_is_closed_except_its_ports() {
    if lb_tests::skip("vip_address_is_closed_except_its_ports") {
        return;
    }
    closed_vip().unwrap();
}

/// A router's "fragmentation needed" / "packet too big" about a flow's replies goes to
/// that flow's backend (and only to it), which learns the path MTU.
fn ptb_to_backend() -> Result<()> {
    let lab = lab_with("h2", 3)?;
    let vips = [(VIP4, TCP_PORT, "tcp"), (VIP4, UDP_PORT, "udp"), (VIP6, TCP_PORT, "tcp"), (VIP6, UDP_PORT, "udp")]
        .map(|(a, p, proto)| VipConf::new(sock(a, p), proto, &even(3)));
    let mut agent = Agent::start(&lab, &config(&vips), &[])?;
    agent.wait_programmed(4, 12)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let cl = lab.client();
    let flows = vec![
        udp_flow(&cl, sock(VIP4, UDP_PORT))?,
        tcp_flow(&cl, sock(VIP4, TCP_PORT))?,
        udp_flow(&cl, sock(VIP6, UDP_PORT))?,
        tcp_flow(&cl, sock(VIP6, TCP_PORT))?,
    ];
    let mut watch = IcmpWatch::open(&lab)?;
    let before = Since::now(&maps)?;
    for f in &flows {
        send_icmp(&cl, f.vip.ip(), ptb(f.vip, f.client, f.proto, 1280))?;
    }
    // The same about a port that is no VIP's: dropped.
    let strays = [(VIP4, CLIENT4), (VIP6, CLIENT6)].map(|(v, c)| (sock(v, 9999), sock(c, 40999)));
    for (vip, client) in strays {
        send_icmp(&cl, vip.ip(), ptb(vip, client, PROTO_UDP, 1280))?;
    }
    let owners = flows.iter().map(|f| index(&f.backend)).collect::<Result<Vec<_>>>()?;
    wait_for("every message at its flow's backend", SLOW, || {
        watch.collect()?;
        Ok(flows.iter().zip(&owners).all(|(f, &b)| watch.seen[b].contains(&Seen::of(f))))
    })?;
    std::thread::sleep(Duration::from_secs(1)); // any copy elsewhere would have arrived too
    watch.collect()?;
    println!("PTBs seen per backend: {:?}", watch.seen);
    for (f, &owner) in flows.iter().zip(&owners) {
        for (b, seen) in watch.seen.iter().enumerate() {
            let n = seen.iter().filter(|s| **s == Seen::of(f)).count();
            let want = usize::from(b == owner);
            ensure!(n == want, "PTB for {} -> {} (served by b{owner}) reached b{b} {n} times", f.client, f.vip);
        }
    }
    ensure!(
        watch.seen.iter().flatten().all(|s| s.client_port != 40999),
        "a PTB about a port that is no VIP reached a backend: {:?}",
        watch.seen
    );
    // The UDP sockets were told: the backend now sends at most 1280 bytes to the client.
    for (f, &owner) in flows.iter().zip(&owners).filter(|(f, _)| f.proto == PROTO_UDP) {
        ensure!(learned_mtu(&lab, owner, f.client.ip(), 1280)?, "b{owner} learned MTU 1280 towards {}", f.client);
    }
    for b in (0..3).filter(|b| !owners.contains(b)) {
        for client in [CLIENT4, CLIENT6] {
            ensure!(!learned_mtu(&lab, b, client.parse()?, 1280)?, "b{b} (no flow) learned an MTU for {client}");
        }
    }
    let (noted, closed) = (before.moved(Reason::NOTE_ICMP_PTB)?, before.moved(Reason::DROP_CLOSED)?);
    println!("note_icmp_ptb +{noted}, drop_closed +{closed}; flows served by {owners:?}");
    ensure!(noted == 4, "4 PTBs forwarded to their flows' backends (note_icmp_ptb +{noted})");
    ensure!(closed >= 2, "2 PTBs about no VIP were dropped as closed (drop_closed +{closed})");
    Ok(())
}

#[test]
fn packet_too_big_reaches_the_flows_backend() {
    if lb_tests::skip("packet_too_big_reaches_the_flows_backend") {
        return;
    }
    ptb_to_backend().unwrap();
}

/// VIPs on two ports: one admits the client's address, one another range; a reload
/// that adds the client's range opens the second.
fn source_ranges() -> Result<()> {
    let lab = lab_with("h3", 2)?;
    for i in 0..2 {
        greeter(&lab.backend(i), &format!("b{i}"), &[sock("0.0.0.0", OTHER_PORT), sock("::", OTHER_PORT)])?;
    }
    let conf = |open: bool| {
        let ranges = |listed: &str, other: &str, wide: &str| {
            let second = if open { format!("\"{other}\", \"{wide}\"") } else { format!("\"{other}\"") };
            (format!("source_ranges = [\"{listed}\"]"), format!("source_ranges = [{second}]"))
        };
        let (l4, o4) = ranges("192.0.2.1/32", "198.51.100.0/24", "192.0.2.0/24");
        let (l6, o6) = ranges("2001:db8:77::1/128", "2001:db8:99::/48", "2001:db8:77::/64");
        config(&[
            VipConf::new(sock(VIP4, TCP_PORT), "tcp", &even(2)).line(&l4),
            VipConf::new(sock(VIP4, OTHER_PORT), "tcp", &even(2)).line(&o4),
            VipConf::new(sock(VIP6, TCP_PORT), "tcp", &even(2)).line(&l6),
            VipConf::new(sock(VIP6, OTHER_PORT), "tcp", &even(2)).line(&o6),
        ])
    };
    let mut agent = Agent::start(&lab, &conf(false), &[])?;
    agent.wait_programmed(4, 8)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let cl = lab.client();
    let before = Since::now(&maps)?;
    for vip in [VIP4, VIP6] {
        let got = tcp_try(&cl, sock(vip, TCP_PORT), SLOW)?;
        ensure!(served_by_backend(&got), "the client's range admits it to {vip}:{TCP_PORT}: {got:?}");
    }
    let others: [(Probe, _); 2] = [(tcp_try, sock(VIP4, OTHER_PORT)), (tcp_try, sock(VIP6, OTHER_PORT))];
    for (to, got) in side_by_side(&cl, &others, DROPPED)? {
        ensure!(got == Outcome::Dropped, "{to} admits another range only: {got:?}");
    }
    let refused = before.moved(Reason::DROP_SOURCE_RANGE)?;
    ensure!(refused >= 2, "the SYNs from outside the ranges were counted (drop_source_range +{refused})");

    agent.reload(&conf(true))?;
    for vip in [VIP4, VIP6] {
        wait_for(&format!("{vip}:{OTHER_PORT} to admit the client after the reload"), Duration::from_secs(20), || {
            Ok(served_by_backend(&tcp_try(&cl, sock(vip, OTHER_PORT), Duration::from_secs(2))?))
        })?;
        let got = tcp_try(&cl, sock(vip, TCP_PORT), SLOW)?;
        ensure!(served_by_backend(&got), "{vip}:{TCP_PORT} still serves the client: {got:?}");
    }
    println!("drop_source_range +{refused} before the reload; both ports serve the client after it");
    Ok(())
}

#[test]
fn source_ranges_admit_only_listed_clients() {
    if lb_tests::skip("source_ranges_admit_only_listed_clients") {
        return;
    }
    source_ranges().unwrap();
}

/// Long-lived UDP flows across weight changes, a new backend and a drain.
fn udp_pins() -> Result<()> {
    let lab = lab_with("h4", 4)?;
    let (v4, v6) = (sock(VIP4, UDP_PORT), sock(VIP6, UDP_PORT));
    let conf = |list: &[(usize, u32, bool)]| config(&[VipConf::new(v4, "udp", list), VipConf::new(v6, "udp", list)]);
    let mut agent = Agent::start(&lab, &conf(&even(3)), &[])?;
    agent.wait_programmed(2, 6)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let streams = UdpStreams::start(&lab.client(), &[v4, v6], 16, Duration::from_millis(100))?;
    println!("flows start on: {:?}", split(&streams.first));
    // Drain the backend of the first flow, so that at least one flow is on it.
    let drained = index(&streams.first[0])?;
    let weights = [(0, 3, false), (1, 1, false), (2, 2, false), (3, 3, false)];
    let last: Vec<_> = weights.iter().map(|&(i, w, _)| (i, w, i == drained)).collect();
    for list in [&weights[..3], &weights[..], &last[..]] {
        std::thread::sleep(Duration::from_secs(1));
        agent.reload(&conf(list))?;
        wait_for(&format!("{list:?} to be programmed"), Duration::from_secs(15), || programmed(&maps, list))?;
        streams.next_phase();
    }
    std::thread::sleep(Duration::from_secs(1));
    let fresh = udp_backends(&lab, v4, 600)?;
    let got = split(&fresh);
    let total: u32 = last.iter().filter(|b| !b.2).map(|b| b.1).sum();
    println!("new flows after the last change (b{drained} draining): {got:.3?}");
    for &(i, w, draining) in &last {
        let share = got.get(&format!("b{i}")).copied().unwrap_or(0.0);
        if draining {
            ensure!(share == 0.0, "draining b{i} got new flows: {got:?}");
        } else {
            let want = w as f64 / total as f64;
            ensure!((share - want).abs() <= 0.07, "b{i} got {share:.3} of new flows, weight share {want:.3}");
        }
    }
    let reports = streams.finish()?;
    for r in &reports {
        let what = format!("flow to {:?} on {}", r.vip, r.first);
        ensure!(r.error.is_none() && r.lost == 0, "{what}: lost {} replies, error {:?}", r.lost, r.error);
        ensure!(r.moved.is_empty(), "{what} moved: (phase, backend) {:?}", r.moved);
        ensure!(r.replies.get(3).is_some_and(|n| *n >= 3), "{what} kept answering after the drain: {:?}", r.replies);
    }
    let on_drained = reports.iter().filter(|r| r.first == format!("b{drained}")).count();
    let replies: usize = reports.iter().flat_map(|r| &r.replies).sum();
    println!("{} flows, {replies} replies, none moved; {on_drained} flows on draining b{drained}", reports.len());
    Ok(())
}

#[test]
fn udp_flow_keeps_its_backend_across_changes() {
    if lb_tests::skip("udp_flow_keeps_its_backend_across_changes") {
        return;
    }
    udp_pins().unwrap();
}

/// With ClientIP affinity, draining the client's backend sends its new connections
/// elsewhere while the established ones (busy or idle) stay.
fn affinity_drain() -> Result<()> {
    let lab = lab_with("h5", 3)?;
    let vip = sock(VIP4, TCP_PORT);
    let conf = |drain: Option<usize>| {
        let list: Vec<_> = (0..3).map(|i| (i, 1, Some(i) == drain)).collect();
        config(&[VipConf::new(vip, "tcp", &list).line("session_affinity = \"ClientIP\"")])
    };
    let mut agent = Agent::start(&lab, &conf(None), &[])?;
    agent.wait_programmed(1, 3)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    // One connection that talks throughout, one that stays idle across the change.
    let mut held = connect_many(&lab, vip, 2)?;
    let x = held[0].backend.clone();
    ensure!(held[1].backend == x, "affinity: both connections on one backend ({x}, {})", held[1].backend);
    for c in &mut held {
        c.echo("before")?;
    }
    agent.reload(&conf(Some(index(&x)?)))?;
    wait_for(&format!("{x} draining"), Duration::from_secs(10), || {
        Ok(maps.backend_by_addr(backend_addrs(index(&x)?).0)?.is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0))
    })?;
    held[0].echo("during").context("the busy connection after the drain started")?;
    let fresh = tcp_backends(&lab, vip, 5)?;
    ensure!(fresh.iter().all(|b| *b != x && *b == fresh[0]), "new connections avoid draining {x}: {fresh:?}");
    let mut later = connect_many(&lab, vip, 1)?;
    for k in 0..8 {
        held[0].echo(&format!("busy {k}")).with_context(|| format!("the busy connection to {x}, echo {k}"))?;
        later[0].echo(&format!("new {k}")).context("the connection opened after the drain")?;
        std::thread::sleep(Duration::from_millis(400));
    }
    held[1].echo("after").with_context(|| format!("the connection to {x} that was idle across the change"))?;
    println!("client moved from {x} to {} for new connections; both old connections still on {x}", fresh[0]);
    Ok(())
}

#[test]
fn affinity_drain_keeps_established_connections() {
    if lb_tests::skip("affinity_drain_keeps_established_connections") {
        return;
    }
    affinity_drain().unwrap();
}

/// Turning ClientIP affinity on for a live VIP: the agent either applies it without
/// moving a connection or refuses it with a log line naming the VIP and the field.
fn affinity_toggle() -> Result<()> {
    let lab = lab_with("h6", 4)?;
    let vip = sock(VIP4, TCP_PORT);
    let mut agent = Agent::start(&lab, &config(&[VipConf::new(vip, "tcp", &even(3))]), &[])?;
    agent.wait_programmed(1, 3)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let streams = Background::streams(&lab, vip, 20, Duration::from_millis(100))?;
    std::thread::sleep(Duration::from_millis(500));
    // The same reload adds b3, so that its being programmed shows the reload was read.
    agent.reload(&config(&[VipConf::new(vip, "tcp", &even(4)).line("session_affinity = \"ClientIP\"")]))?;
    agent.wait_programmed(1, 4)?;
    let named = format!("{VIP4}:{TCP_PORT}/tcp");
    let refusal = || agent.log_text().lines().any(|l| l.contains("session_affinity") && l.contains(&named));
    let affinity_on = || -> Result<bool> {
        let metas = maps.vips.iter().collect::<Result<Vec<_>, _>>()?;
        Ok(metas.iter().any(|(k, m)| k.port_be == TCP_PORT.to_be() && m.flags & VIP_F_AFFINITY != 0))
    };
    wait_for("the affinity change to be applied or refused", Duration::from_secs(10), || {
        Ok(refusal() || affinity_on()?)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let held = streams.finish()?;
    println!("established connections: {} echoes, {} failed", held.ok, held.failed);
    ensure!(held.failed == 0, "an established connection broke: {:?}", held.errors);
    let fresh = split(&tcp_backends(&lab, vip, 60)?);
    match (refusal(), affinity_on()?) {
        (true, false) => {
            println!("refused: {}", agent.log_text().lines().find(|l| l.contains("session_affinity")).unwrap_or(""));
            ensure!(fresh.len() >= 2, "the VIP keeps serving without affinity: {fresh:?}");
        }
        (false, true) => {
            println!("applied: new connections all on {fresh:?}");
            ensure!(fresh.len() == 1, "with affinity one client's connections share a backend: {fresh:?}");
        }
        other => bail!("(refused, applied) = {other:?}: neither or both:\n{}", agent.log_text()),
    }
    Ok(())
}

#[test]
fn affinity_toggle_keeps_established_connections() {
    if lb_tests::skip("affinity_toggle_keeps_established_connections") {
        return;
    }
    affinity_toggle().unwrap();
}
