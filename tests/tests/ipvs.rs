//! The IPVS generic netlink client against the real kernel IPVS of a stock Debian kernel
//! (in a VM, `lb_tests::vm`): what it creates is what `ipvsadm -Ln` shows, and what
//! `ipvsadm` creates is what it reads back (the oracle is ipvsadm, not our own code).

use std::process::Command;

use anyhow::{ensure, Context, Result};
use lb_agent::dataplane::ipvs::client::Ipvs;
use lb_agent::dataplane::ipvs::genl::{self, Dest, Service};

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn client_matches_ipvsadm() -> Result<()> {
    sh("modprobe", &["ip_vs"])?;
    let mut ipvs = Ipvs::open()?;
    let svc = Service {
        family: libc::AF_INET as u16,
        protocol: libc::IPPROTO_TCP as u16,
        addr: Some("192.0.2.10".parse()?),
        port: 80,
        scheduler: "wrr".into(),
        flags: genl::SVC_F_PERSISTENT,
        timeout: 300,
        ..Service::default()
    };
    ipvs.run(genl::CMD_NEW_SERVICE, &svc, None)?;
    for (addr, weight) in [("10.0.0.2", 3), ("10.0.0.3", 1)] {
        let d =
            Dest { addr: Some(addr.parse()?), port: 80, forward: genl::FWD_DIRECT_ROUTE, weight, ..Dest::default() };
        ipvs.run(genl::CMD_NEW_DEST, &svc, Some(&d))?;
    }
    let shown = sh("ipvsadm", &["-Ln"])?;
    println!("{shown}");
    ensure!(shown.contains("TCP  192.0.2.10:80 wrr persistent 300"), "service as ipvsadm shows it:\n{shown}");
    ensure!(shown.contains("-> 10.0.0.2:80") && shown.contains("Route   3"), "a DR destination of weight 3:\n{shown}");

    // What ipvsadm creates, the client reads.
    sh("ipvsadm", &["-A", "-u", "[2001:db8::10]:53", "-s", "rr"])?;
    sh("ipvsadm", &["-a", "-u", "[2001:db8::10]:53", "-r", "[2001:db8::2]:53", "-g", "-w", "7"])?;
    let services = ipvs.services()?;
    let v6 = services.iter().find(|s| s.port == 53).context("the IPv6 UDP service")?;
    ensure!(
        v6.addr == Some("2001:db8::10".parse()?) && v6.protocol == libc::IPPROTO_UDP as u16 && v6.scheduler == "rr"
    );
    let dests = ipvs.dests(v6)?;
    ensure!(dests.len() == 1 && dests[0].addr == Some("2001:db8::2".parse()?) && dests[0].weight == 7, "{dests:?}");
    ensure!(dests[0].forward == genl::FWD_DIRECT_ROUTE, "{dests:?}");
    let v4 = services.iter().find(|s| s.port == 80).context("the IPv4 TCP service")?;
    ensure!(v4.flags & genl::SVC_F_PERSISTENT != 0 && v4.timeout == 300, "{v4:?}");

    // Weight change, removal.
    let d = Dest {
        addr: Some("10.0.0.2".parse()?),
        port: 80,
        forward: genl::FWD_DIRECT_ROUTE,
        weight: 0,
        ..Dest::default()
    };
    ipvs.run(genl::CMD_SET_DEST, &svc, Some(&d))?;
    ensure!(ipvs.dests(&svc)?.iter().any(|x| x.addr == d.addr && x.weight == 0), "weight 0 (drain)");
    ipvs.run(genl::CMD_DEL_DEST, &svc, Some(&d))?;
    ensure!(ipvs.dests(&svc)?.len() == 1, "one destination left");
    ipvs.run(genl::CMD_DEL_SERVICE, &svc, None)?;
    let err = ipvs.run(genl::CMD_DEL_SERVICE, &svc, None).unwrap_err();
    println!("deleting it again: {err}");
    let shown = sh("ipvsadm", &["-Ln"])?;
    ensure!(!shown.contains("192.0.2.10:80") && shown.contains("[2001:db8::10]:53"), "only ours removed:\n{shown}");
    Ok(())
}

#[test]
fn ipvs_client_matches_ipvsadm() {
    if let Some(outcome) = lb_tests::vm::in_vm("ipvs_client_matches_ipvsadm") {
        outcome.unwrap();
        return;
    }
    client_matches_ipvsadm().unwrap();
}

fn backend(addr: &str, target: u32, progress: u32) -> lb_agent::dataplane::SnapBackend {
    lb_agent::dataplane::SnapBackend {
        addr: addr.parse().unwrap(),
        weight: target,
        mac: None,
        draining: false,
        target,
        progress,
        since_ms: 0,
    }
}

fn dataplane_programs_the_wanted_state() -> Result<()> {
    use lb_agent::dataplane::ipvs::IpvsDataplane;
    use lb_agent::dataplane::{Census, Dataplane, SnapVip, Snapshot};
    sh("modprobe", &["ip_vs"])?;
    // Someone else's service (kube-proxy in IPVS mode shares the table): never touched.
    sh("ipvsadm", &["-A", "-t", "198.51.100.1:443", "-s", "rr"])?;
    let state = std::env::temp_dir().join("lb-ipvs-test/owned");
    let tcp: lb_agent::model::Vip = "192.0.2.10:80/tcp".parse()?;
    let udp: lb_agent::model::Vip = "[2001:db8::10]:53/udp".parse()?;
    let mut snap = Snapshot::default();
    snap.vips.insert(
        tcp,
        SnapVip { backends: vec![backend("10.0.0.2", 3, 100), backend("10.0.0.3", 1, 100)], ..Default::default() },
    );
    snap.vips.insert(
        udp,
        SnapVip { backends: vec![backend("2001:db8::2", 1, 100)], affinity_timeout_s: 300, ..Default::default() },
    );
    let mut dp = IpvsDataplane::open("wrr", state.clone())?;
    let r = dp.apply(&snap)?;
    ensure!(r.vips_added == 2 && r.failed.is_empty(), "{r:?}");
    let shown = sh("ipvsadm", &["-Ln"])?;
    println!("{shown}");
    ensure!(shown.contains("TCP  192.0.2.10:80 wrr"), "{shown}");
    ensure!(shown.contains("UDP  [2001:db8::10]:53 wrr persistent 300"), "affinity is persistence:\n{shown}");
    let line = |addr: &str| {
        shown.lines().find(|l| l.contains(addr)).unwrap_or("").split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    ensure!(line("10.0.0.2:80")[2] == "Route" && line("10.0.0.2:80")[3] == "300", "{:?}", line("10.0.0.2:80"));
    ensure!(line("10.0.0.3:80")[3] == "100", "weights 3:1 (x100 for the ramp's resolution)");
    ensure!(dp.apply(&snap)?.is_noop(), "the same state again writes nothing");

    // A ramp step and a drain move weights only.
    let list = &mut snap.vips.get_mut(&tcp).unwrap().backends;
    list[1].progress = 50;
    list[0].draining = true;
    let r = dp.apply(&snap)?;
    ensure!(r.writes == 2 && r.vips_changed == 1, "{r:?}");
    let shown = sh("ipvsadm", &["-Ln"])?;
    let line = |addr: &str| {
        shown.lines().find(|l| l.contains(addr)).unwrap_or("").split_whitespace().map(String::from).collect::<Vec<_>>()
    };
    ensure!(line("10.0.0.2:80")[3] == "0" && line("10.0.0.3:80")[3] == "50", "drained to 0, ramped to 50:\n{shown}");
    let p = dp.programmed(&tcp).context("programmed")?;
    ensure!(p.draining == 1 && p.serving == 1, "{p:?}");
    let m = dp.maintain(dp.census(std::time::Duration::from_secs(120)).run())?;
    ensure!(m.live_flows.get(&(tcp, "10.0.0.2".parse()?)) == Some(&0), "the draining server's connections: {m:?}");

    // A restarted agent adopts its services: the same state writes nothing, a VIP no
    // longer wanted is removed, the foreign service stays.
    drop(dp);
    let mut dp = IpvsDataplane::open("wrr", state)?;
    ensure!(dp.apply(&snap)?.is_noop(), "adopted: nothing to write");
    snap.vips.remove(&udp);
    let r = dp.apply(&snap)?;
    ensure!(r.vips_removed == 1, "{r:?}");
    let shown = sh("ipvsadm", &["-Ln"])?;
    println!("{shown}");
    ensure!(!shown.contains("2001:db8::10") && shown.contains("198.51.100.1:443"), "{shown}");
    Ok(())
}

#[test]
fn ipvs_dataplane_programs_the_wanted_state() {
    if let Some(outcome) = lb_tests::vm::in_vm("ipvs_dataplane_programs_the_wanted_state") {
        outcome.unwrap();
        return;
    }
    dataplane_programs_the_wanted_state().unwrap();
}
