//! The agent's lifecycle with real traffic: slow start, drain, client-IP affinity,
//! SIGKILL/restart and program upgrade, and config reloads with an invalid VIP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use lb_agent::config::XdpModeChoice;
use lb_tests::agent::{Agent, PinnedMaps};
use lb_tests::lab::{backend_addrs, Lab, VIP4};
use lb_tests::netns::{ip, sh};
use lb_tests::servers::{split, start_backend, tcp_backends, tcp_backends_from, udp_backends, TCP_PORT, UDP_PORT};
use lb_tests::traffic::{wait_for, Background};

/// One backend line: (index, weight, start_progress).
type B = (usize, u32, Option<u32>);

fn backend_lines(list: &[B]) -> String {
    let mut out = String::new();
    for (i, w, start) in list {
        out += &format!("[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n", backend_addrs(*i).0);
        if let Some(p) = start {
            out += &format!("start_progress = {p}\n");
        }
    }
    out
}

/// A config with the IPv4 TCP VIP (plus `extra` VIP settings lines).
fn tcp_config(list: &[B], extra: &str) -> String {
    format!("[[vip]]\naddress = \"{VIP4}:{TCP_PORT}/tcp\"\n{extra}\n{}", backend_lines(list))
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.parse().unwrap(), TCP_PORT)
}

fn lab_with(tag: &str, backends: usize) -> Result<Lab> {
    let lab = Lab::new(tag, backends, XdpModeChoice::Native)?;
    for i in 0..backends {
        start_backend(&lab, i)?;
    }
    Ok(lab)
}

fn progress(maps: &PinnedMaps, i: usize) -> Result<Option<u32>> {
    Ok(maps.backend_by_addr(backend_addrs(i).0)?.map(|b| b.progress))
}

/// Slow start with established connections and a stream of new ones, then a drain.
fn ramp_and_drain() -> Result<()> {
    let lab = lab_with("r", 4)?;
    let base = [(0, 1, Some(100)), (1, 1, Some(100)), (2, 1, Some(100))];
    let ramp = "ramp_step = 25\nramp_interval = \"1s\"";
    let mut agent = Agent::start(&lab, &tcp_config(&base, ramp), &["--drain-min", "1s", "--flow-idle-timeout", "3s"])?;
    agent.wait_programmed(1, 3)?;
    let maps = PinnedMaps::open(&agent.pin_dir)?;
    let streams = Background::streams(&lab, vip(), 30, Duration::from_millis(100))?;
    let churn = Background::churn(&lab, vip())?;

    // b3 joins at 0 % and ramps 25 points a second; nothing established moves.
    let mut with_new = base.to_vec();
    with_new.push((3, 1, None));
    agent.reload(&tcp_config(&with_new, ramp))?;
    let mut seen = Vec::new();
    wait_for("b3's ramp to finish", Duration::from_secs(15), || {
        let p = progress(&maps, 3)?;
        if let Some(p) = p {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
        }
        Ok(p == Some(100))
    })?;
    println!("b3 ramp progress seen: {seen:?}");
    ensure!(seen.windows(2).all(|w| w[0] < w[1]), "progress only rises: {seen:?}");
    ensure!(seen.len() >= 4 && seen[0] <= 25, "the ramp went through steps from 0 %: {seen:?}");
    let churned = churn.finish()?;
    println!("during the ramp: {} new connections, {} failed", churned.ok, churned.failed);
    ensure!(
        churned.failed == 0,
        "new connections failed during the ramp: {:?}",
        &churned.errors[..churned.errors.len().min(3)]
    );
    let shares = split(&tcp_backends(&lab, vip(), 800)?);
    println!("split after the ramp: {shares:.3?}");
    ensure!((shares.get("b3").copied().unwrap_or(0.0) - 0.25).abs() < 0.07, "b3 takes its full share: {shares:?}");

    // Drain b1: weight 0 at once, its established streams continue, no new flows.
    let without_b1: Vec<B> = with_new.iter().copied().filter(|b| b.0 != 1).collect();
    agent.reload(&tcp_config(&without_b1, ramp))?;
    wait_for("b1 to drain", Duration::from_secs(5), || {
        Ok(maps.backend_by_addr(backend_addrs(1).0)?.is_some_and(|b| b.flags & lb_common::BACKEND_F_DRAINING != 0))
    })?;
    let during = tcp_backends(&lab, vip(), 400)?;
    ensure!(!during.iter().any(|b| b == "b1"), "a draining backend got new connections: {:?}", split(&during));
    std::thread::sleep(Duration::from_secs(2));
    let held = streams.finish()?;
    println!("long-lived connections: {} echoes, {} failed", held.ok, held.failed);
    ensure!(held.failed == 0, "an established connection broke: {:?}", held.errors);
    // The streams closed (FIN): b1 has no live flow left and goes.
    wait_for("b1 to be removed after its flows ended", Duration::from_secs(10), || {
        Ok(maps.backend_by_addr(backend_addrs(1).0)?.is_none())
    })?;
    ensure!(agent.log_text().contains("drain finished"), "the drain's end is logged");
    Ok(())
}

#[test]
fn slow_start_and_drain_keep_every_connection() {
    if lb_tests::skip("slow_start_and_drain_keep_every_connection") {
        return;
    }
    ramp_and_drain().unwrap();
}

/// Client-IP affinity: every connection of a client address goes to one backend, and
/// still does after the table changed.
fn affinity() -> Result<()> {
    let lab = lab_with("a", 4)?;
    let extra = "session_affinity = \"ClientIP\"\naffinity_timeout = \"60s\"";
    let base = [(0, 1, Some(100)), (1, 1, Some(100)), (2, 1, Some(100))];
    let mut agent = Agent::start(&lab, &tcp_config(&base, extra), &[])?;
    agent.wait_programmed(1, 3)?;
    let sources: Vec<IpAddr> = (50..70).map(|i| format!("192.0.2.{i}").parse().unwrap()).collect();
    for s in &sources {
        ip(&lab.client(), &["addr", "add", &format!("{s}/24"), "dev", "eth0"])?;
    }
    let first = tcp_backends_from(&lab, sources.clone(), vip(), 4)?;
    let mut owner = BTreeMap::new();
    for (s, names) in sources.iter().zip(&first) {
        let set: BTreeSet<_> = names.iter().collect();
        ensure!(set.len() == 1, "client {s} was spread over {set:?}");
        owner.insert(*s, names[0].clone());
    }
    let distinct: BTreeSet<_> = owner.values().collect();
    ensure!(distinct.len() >= 2, "clients are spread over backends: {owner:?}");
    // A new backend changes the table; clients keep their backend.
    let mut more = base.to_vec();
    more.push((3, 1, Some(100)));
    agent.reload(&tcp_config(&more, extra))?;
    agent.wait_programmed(1, 4)?;
    std::thread::sleep(Duration::from_millis(300));
    let again = tcp_backends_from(&lab, sources.clone(), vip(), 4)?;
    for (s, names) in sources.iter().zip(&again) {
        ensure!(names.iter().all(|n| *n == owner[s]), "client {s} moved from {} to {names:?}", owner[s]);
    }
    println!("affinity: {} clients kept their backend across a table change ({distinct:?})", sources.len());
    Ok(())
}

#[test]
fn client_ip_affinity_survives_a_table_change() {
    if lb_tests::skip("client_ip_affinity_survives_a_table_change") {
        return;
    }
    affinity().unwrap();
}

/// The prog id the pinned link runs.
fn link_prog_id(agent: &Agent) -> Result<u64> {
    let out = sh("bpftool", &["-j", "link", "show", "pinned", &agent.pin_dir.join("link").to_string_lossy()])?;
    let at = out.find("\"prog_id\":").context("prog_id in bpftool output")? + 10;
    Ok(out[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse()?)
}

/// SIGKILL and restart, then a SIGTERM and a new agent (an upgrade): traffic never stops.
fn restart_and_upgrade() -> Result<()> {
    let lab = lab_with("k", 3)?;
    let list = [(0, 1, Some(100)), (1, 1, Some(100)), (2, 1, Some(0))];
    let config = tcp_config(&list, "ramp_step = 20\nramp_interval = \"2s\"");
    let mut agent = Agent::start(&lab, &config, &[])?;
    agent.wait_programmed(1, 3)?;
    let churn = Background::churn(&lab, vip())?;
    let streams = Background::streams(&lab, vip(), 10, Duration::from_millis(50))?;
    std::thread::sleep(Duration::from_millis(4500));
    let before = PinnedMaps::open(&agent.pin_dir)?;
    let p1 = progress(&before, 2)?.context("b2 present")?;
    let prog1 = link_prog_id(&agent)?;
    agent.kill()?;
    std::thread::sleep(Duration::from_secs(1)); // no agent: the kernel keeps forwarding

    let mut agent = Agent::start(&lab, &config, &[])?;
    agent.wait_programmed(1, 3)?;
    let prog2 = link_prog_id(&agent)?;
    let p2 = progress(&PinnedMaps::open(&agent.pin_dir)?, 2)?.context("b2 present")?;
    println!("b2 ramp progress {p1} % before SIGKILL, {p2} % after the restart; prog id {prog1} -> {prog2}");
    ensure!(p1 >= 20 && p2 >= p1, "the ramp continues where it was ({p1} -> {p2})");
    ensure!(prog2 != prog1, "the restarted agent's program runs in the pinned link:\n{}", agent.log_text());
    ensure!(agent.log_text().contains("Adopted"), "the maps were adopted:\n{}", agent.log_text());

    std::thread::sleep(Duration::from_secs(1));
    agent.stop()?;
    let mut agent = Agent::start(&lab, &config, &[])?;
    agent.wait_programmed(1, 3)?;
    let prog3 = link_prog_id(&agent)?;
    ensure!(prog3 != prog2, "the upgrade swapped a new program in");
    std::thread::sleep(Duration::from_secs(1));
    let (c, s) = (churn.finish()?, streams.finish()?);
    println!(
        "across SIGKILL, restart and upgrade: {} new connections ({} failed), {} echoes ({} failed)",
        c.ok, c.failed, s.ok, s.failed
    );
    ensure!(c.failed == 0 && s.failed == 0, "failures: {:?} {:?}", &c.errors[..c.errors.len().min(3)], s.errors);
    ensure!(c.ok > 100, "connections kept coming ({})", c.ok);
    Ok(())
}

#[test]
fn restart_and_upgrade_lose_no_connection() {
    if lb_tests::skip("restart_and_upgrade_lose_no_connection") {
        return;
    }
    restart_and_upgrade().unwrap();
}

/// A reload with an invalid VIP: the others apply, the invalid one keeps working as it
/// was, and the error names the field.
fn reload_with_invalid_vip() -> Result<()> {
    let lab = lab_with("v", 3)?;
    let udp = |weight: &str| {
        format!(
            "[[vip]]\naddress = \"{VIP4}:{UDP_PORT}/udp\"\n[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\nstart_progress = 100\n",
            backend_addrs(0).0
        )
    };
    let good = [(0, 1, Some(100)), (1, 1, Some(100))];
    let mut agent = Agent::start(&lab, &format!("{}{}", tcp_config(&good, ""), udp("1")), &[])?;
    agent.wait_programmed(2, 3)?;
    // The TCP VIP gains b2; the UDP VIP's weight is broken.
    let changed = [(0, 1, Some(100)), (1, 1, Some(100)), (2, 1, Some(100))];
    agent.reload(&format!("{}{}", tcp_config(&changed, ""), udp("\"heavy\"")))?;
    agent.wait_programmed(2, 4)?;
    let log = agent.log_text();
    ensure!(log.contains("vip[1].backend[0]") && log.contains("weight must be"), "the error names the field:\n{log}");
    let udp_vip = SocketAddr::new(VIP4.parse().unwrap(), UDP_PORT);
    ensure!(udp_backends(&lab, udp_vip, 20)?.iter().all(|b| b == "b0"), "the invalid VIP keeps its last good state");
    ensure!(split(&tcp_backends(&lab, vip(), 300)?).contains_key("b2"), "the valid VIP's change applied");
    Ok(())
}

#[test]
fn reload_applies_valid_vips_and_keeps_an_invalid_one() {
    if lb_tests::skip("reload_applies_valid_vips_and_keeps_an_invalid_one") {
        return;
    }
    reload_with_invalid_vip().unwrap();
}

/// A restart with other load-time settings cannot adopt the maps: they are replaced
/// (logged), the new program is swapped into the pinned link, traffic keeps flowing.
fn replaced_maps() -> Result<()> {
    let lab = lab_with("m", 2)?;
    let config = tcp_config(&[(0, 1, Some(100)), (1, 1, Some(100))], "");
    let mut agent = Agent::start(&lab, &config, &["--table-size", "8192"])?;
    agent.wait_programmed(1, 2)?;
    // Restarts with other settings while connections keep coming: first one that leaves
    // the Maglev table as it was (more backend room), then one that changes it.
    for (flags, table_changes) in [
        (["--table-size", "8192", "--max-backends", "8192"], false),
        (["--table-size", "65536", "--max-backends", "8192"], true),
    ] {
        let churn = Background::churn(&lab, vip())?;
        std::thread::sleep(Duration::from_millis(500));
        agent.stop()?;
        agent = Agent::start(&lab, &config, &flags)?;
        agent.wait_programmed(1, 2)?;
        let log = agent.log_text();
        ensure!(log.contains("replaced"), "the replacement is logged:\n{log}");
        ensure!(log.contains("flow pins carried over"), "pins are carried over:\n{log}");
        std::thread::sleep(Duration::from_millis(500));
        let c = churn.finish()?;
        println!("maps replaced ({flags:?}): {} new connections, {} failed", c.ok, c.failed);
        ensure!(c.ok > 20, "connections kept coming ({})", c.ok);
        // The new maps are filled before the new program takes the link: no connection
        // meets a program with empty maps. Only a new table size can move a connection
        // that is in flight at the very swap and not pinned (its slot is another one).
        let allowed = if table_changes { 3 } else { 0 };
        ensure!(c.failed <= allowed, "{} connections failed across the replacement ({flags:?})", c.failed);
    }
    ensure!(split(&tcp_backends(&lab, vip(), 200)?).len() == 2, "both backends serve after the replacements");
    Ok(())
}

#[test]
fn restart_with_other_settings_replaces_the_maps() {
    if lb_tests::skip("restart_with_other_settings_replaces_the_maps") {
        return;
    }
    replaced_maps().unwrap();
}

/// The LB's interface deleted and created again under the same name, then renamed away
/// and replaced, each while no agent runs: the pinned link no longer runs on `eth0`
/// (severed, or on the renamed one). The next agent replaces it (logged) and forwards.
fn replaced_interface() -> Result<()> {
    let mut lab = lab_with("s", 2)?;
    let config = tcp_config(&[(0, 1, Some(100)), (1, 1, Some(100))], "");
    let mut agent = Agent::start(&lab, &config, &[])?;
    agent.wait_programmed(1, 2)?;
    ensure!(split(&tcp_backends(&lab, vip(), 100)?).len() == 2, "both backends serve before");
    for rename in [None, Some("eth0old")] {
        agent.stop()?;
        lab.replace_lb_iface(rename, XdpModeChoice::Native)?;
        agent = Agent::start(&lab, &config, &[])?;
        agent.wait_programmed(1, 2)?;
        let log = agent.log_text();
        let what = if rename.is_some() { "renamed and replaced" } else { "deleted and recreated" };
        ensure!(
            log.contains("pinned XDP link unusable: unpinned, replaced by a new link"),
            "{what}: replacement logged:\n{log}"
        );
        let line = log.lines().find(|l| l.contains("pinned XDP link unusable")).unwrap_or_default();
        println!("eth0 {what}: {}", line.trim());
        let shares = split(&tcp_backends(&lab, vip(), 200).with_context(|| {
            let lb = ip(&lab.lb(), &["-br", "addr"]).unwrap_or_default();
            let cl = ip(&lab.client(), &["neigh"]).unwrap_or_default();
            format!("LB addresses:\n{lb}\nclient neighbours:\n{cl}\n{}", agent.log_text())
        })?);
        ensure!(shares.len() == 2, "{what}: real TCP traffic to the VIP reaches both backends: {shares:?}");
        if let Some(old) = rename {
            let shown = ip(&lab.lb(), &["link", "show", old])?;
            ensure!(!shown.contains("xdp"), "the renamed interface no longer runs our program: {shown}");
        }
    }
    Ok(())
}

#[test]
fn a_deleted_or_renamed_interface_gets_a_new_link() {
    if lb_tests::skip("a_deleted_or_renamed_interface_gets_a_new_link") {
        return;
    }
    replaced_interface().unwrap();
}
