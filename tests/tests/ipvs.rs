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
