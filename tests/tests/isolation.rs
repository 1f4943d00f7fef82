//! One VIP that does not fit never stops the others: the real agent with room for two
//! VIPs is given three. Two carry real traffic, the third is reported by name and the
//! agent keeps running; once room is made, the retry serves it without a restart.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lb_agent::config::XdpModeChoice;
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, VIP4, VIP6};
use lb_tests::servers::{start_backend, tcp_backends, TCP_PORT};
use lb_tests::traffic::wait_for;

fn vip_block(addr: &str) -> String {
    let (b4, b6) = backend_addrs(0);
    let (shown, backend) = if addr.contains(':') { (format!("[{addr}]"), b6) } else { (addr.to_string(), b4) };
    format!("[[vip]]\naddress = \"{shown}:{TCP_PORT}/tcp\"\n[[vip.backend]]\naddress = \"{backend}\"\nstart_progress = 100\n")
}

fn sock(addr: &str) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().unwrap(), TCP_PORT)
}

/// Whether a TCP connection to `vip` reaches a backend (a few tries).
fn served(lab: &Lab, vip: &str) -> bool {
    tcp_backends(lab, sock(vip), 3).is_ok_and(|names| names.len() == 3)
}

#[test]
fn a_vip_that_does_not_fit_is_reported_and_the_others_served() -> Result<()> {
    if lb_tests::skip("isolation") {
        return Ok(());
    }
    let lab = Lab::new("iso", 1, XdpModeChoice::Generic)?;
    start_backend(&lab, 0)?;
    // Two VIPs fit; a third (a second IPv4 address, on the backend's loopback too for
    // direct server return) does not.
    let extra = "192.0.2.101";
    lb_tests::netns::ip(&lab.backend(0), &["addr", "add", &format!("{extra}/32"), "dev", "lo"])?;
    let config = [vip_block(VIP4), vip_block(VIP6), vip_block(extra)].concat();
    let mut agent = Agent::start(&lab, &config, &["--xdp-mode", "generic", "--max-vips", "2"])?;
    agent.wait_programmed(2, 2)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let served_now: Vec<&str> = [VIP4, VIP6, extra].into_iter().filter(|v| served(&lab, v)).collect();
    println!("served with room for 2 of 3 VIPs: {served_now:?}");
    ensure!(served_now.len() == 2, "two VIPs must be served, got {served_now:?}");
    let missing = [VIP4, VIP6, extra].into_iter().find(|v| !served_now.contains(v)).unwrap();
    let log = agent.log_text();
    ensure!(
        log.contains("no room for another VIP") && log.contains("VIP not applied"),
        "the VIP that does not fit is reported:\n{log}"
    );
    ensure!(!log.contains("sync failed"), "one VIP must not fail the whole sync:\n{log}");
    // Retried, not re-reported every tick.
    std::thread::sleep(Duration::from_secs(5));
    let reports = agent.log_text().matches("VIP not applied").count();
    ensure!(reports == 1, "reported once while the problem stays the same, got {reports}");
    // Make room: the remaining VIP is served by the retry, no restart.
    let keep: Vec<&str> = [VIP4, VIP6, extra].into_iter().filter(|v| *v != served_now[0]).collect();
    agent.reload(&keep.iter().map(|v| vip_block(v)).collect::<String>())?;
    wait_for("the VIP that did not fit to be served", Duration::from_secs(10), || Ok(served(&lab, missing)))?;
    ensure!(maps.vip_count()? == 2);
    ensure!(agent.log_text().contains("VIP applied after an earlier failure"));
    let status = agent.stop()?;
    ensure!(status.success(), "agent exit status {status}");
    Ok(())
}

/// An address the kernel refuses (IPv6 on a link with IPv6 turned off) fails only its
/// own VIP: reported with the kernel's own error, retried, and every other VIP is
/// served and keeps taking changes.
#[test]
fn an_address_the_kernel_refuses_fails_only_its_vip() -> Result<()> {
    if lb_tests::skip("isolation_refused_address") {
        return Ok(());
    }
    let lab = Lab::new("isr", 2, XdpModeChoice::Generic)?;
    start_backend(&lab, 0)?;
    start_backend(&lab, 1)?;
    let agent = Agent::start(&lab, &vip_block(VIP4), &["--xdp-mode", "generic"])?;
    wait_for("the IPv4 VIP to be served", Duration::from_secs(20), || Ok(served(&lab, VIP4)))
        .with_context(|| agent.log_text())?;
    // IPv6 goes off on the LB's link; then an IPv6 VIP is configured.
    lb_tests::netns::sysctl(&lab.lb(), "net.ipv6.conf.eth0.disable_ipv6", "1")?;
    agent.reload(&[vip_block(VIP4), vip_block(VIP6)].concat())?;
    wait_for("the refusal to be reported", Duration::from_secs(10), || {
        Ok(agent.log_text().contains("VIP not applied") && agent.log_text().contains("adding its address"))
    })?;
    let log = agent.log_text();
    let line = log.lines().find(|l| l.contains("VIP not applied")).unwrap_or_default().to_string();
    println!("reported: {line}");
    ensure!(line.contains("2001:db8:77::100") && line.contains("os error"), "names the VIP and the OS error: {line}");
    ensure!(!log.contains("sync failed"), "one address must not fail the whole sync:\n{log}");
    // A change to the IPv4 VIP still lands: a second backend is added.
    let (b1, _) = lb_tests::lab::backend_addrs(1);
    let two =
        vip_block(VIP4) + &format!("[[vip.backend]]\naddress = \"{b1}\"\nstart_progress = 100\n") + &vip_block(VIP6);
    agent.reload(&two)?;
    wait_for("both IPv4 backends serving", Duration::from_secs(10), || {
        Ok(lb_tests::servers::split(&tcp_backends(&lab, sock(VIP4), 60)?).len() == 2)
    })?;
    ensure!(agent.stop()?.success());
    Ok(())
}

/// VIP addresses that would take the host's own traffic are refused, each on its own,
/// naming why: the LB's own address on the interface, the gateway of a route out of it,
/// and the subnet's broadcast address. A good VIP beside them carries real traffic.
#[test]
fn the_hosts_own_addresses_are_refused_as_vips() -> Result<()> {
    if lb_tests::skip("isolation_host_addresses") {
        return Ok(());
    }
    let lab = Lab::new("ish", 1, XdpModeChoice::Generic)?;
    start_backend(&lab, 0)?;
    // A route through a gateway on the segment (the client's address).
    let gateway = lb_tests::lab::CLIENT4;
    lb_tests::netns::ip(&lab.lb(), &["route", "add", "198.18.0.0/24", "via", gateway, "dev", "eth0"])?;
    let (own, broadcast) = (lb_tests::lab::LB4, "192.0.2.255");
    let config = [vip_block(VIP4), vip_block(own), vip_block(gateway), vip_block(broadcast)].concat();
    let agent = Agent::start(&lab, &config, &["--xdp-mode", "generic"])?;
    wait_for("the good VIP to be served", Duration::from_secs(20), || Ok(served(&lab, VIP4)))
        .with_context(|| agent.log_text())?;
    wait_for(
        "three refusals",
        Duration::from_secs(10),
        || Ok(agent.log_text().matches("VIP not applied").count() >= 3),
    )
    .with_context(|| agent.log_text())?;
    let log = agent.log_text();
    let line = |addr: &str| {
        log.lines().find(|l| l.contains("VIP not applied") && l.contains(&format!("{addr}:"))).unwrap_or("").to_string()
    };
    for (addr, why) in [
        (own, "this host's own address on eth0"),
        (gateway, "the gateway of a route out of eth0"),
        (broadcast, "the broadcast address of 192.0.2.2/24"),
    ] {
        let l = line(addr);
        println!("{addr}: {l}");
        ensure!(l.contains(why), "{addr} refused as {why:?}: {l}\n{log}");
    }
    ensure!(!log.contains("sync failed"), "the refusals must not fail the whole sync:\n{log}");
    // The host keeps its address: nothing was added or taken over.
    let addrs = lb_tests::netns::ip(&lab.lb(), &["-4", "addr", "show", "dev", "eth0"])?;
    ensure!(!addrs.contains("192.0.2.255/32") && !addrs.contains(&format!("{gateway}/32")), "{addrs}");
    ensure!(served(&lab, VIP4), "the good VIP still serves");
    ensure!(agent.stop()?.success());
    Ok(())
}
