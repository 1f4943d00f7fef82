//! Least privilege, proven: the real agent runs with exactly the capabilities that
//! deploy/daemonset.yaml grants (read from the manifest) and no_new_privs, and forwards
//! real traffic, survives a restart (adopting its pins) and cleans up; with any one of
//! them left out it exits with an error that says what the kernel refused. Readers
//! (`status`, `Maps::from_pinned`) hold read-only descriptors: the kernel refuses writes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use aya::maps::MapError;
use lb_agent::config::XdpModeChoice;
use lb_agent::dataplane::xdp::loader::Maps;
use lb_common::{TableEntry, VipMeta};
use lb_tests::agent::{agent_binary, Agent};
use lb_tests::caps;
use lb_tests::lab::{backend_addrs, Lab, VIP4};
use lb_tests::netns::command_in;
use lb_tests::servers::{split, start_backend, tcp_backends, TCP_PORT};

fn config() -> String {
    let mut out = format!("[[vip]]\naddress = \"{VIP4}:{TCP_PORT}/tcp\"\n");
    for i in 0..2 {
        out += &format!("[[vip.backend]]\naddress = \"{}\"\nstart_progress = 100\n", backend_addrs(i).0);
    }
    out
}

/// Whether the test must skip: not root, or no capsh (never under CI=true).
fn unavailable(test: &str) -> bool {
    if lb_tests::skip(test) {
        return true;
    }
    match caps::capsh_missing() {
        None => false,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {why}"),
        Some(why) => {
            lb_tests::record_skip(test, &why);
            true
        }
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(VIP4.parse().unwrap(), TCP_PORT)
}

/// Traffic reaches both backends through the XDP program.
fn forwards(lab: &Lab, what: &str) -> Result<()> {
    let names = tcp_backends(lab, vip(), 100)?;
    let shares = split(&names);
    println!("{what}: 100 connections, split {shares:.2?}");
    ensure!(shares.len() == 2, "{what}: both backends answer: {shares:?}");
    Ok(())
}

/// `lb-agent <args> --iface eth0 --pin-root <root>` in the LB namespace with `caps`.
fn run_with_caps(lab: &Lab, caps_list: &[String], args: &[&str], pin_root: &std::path::Path) -> Result<String> {
    let mut cmd = command_in(&lab.lb(), std::path::Path::new(caps::CAPSH))?;
    cmd.args(caps::capsh_args(caps_list, &agent_binary()?)?);
    let out = cmd.args(args).args(["--iface", "eth0", "--pin-root"]).arg(pin_root).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "lb-agent {args:?} with {caps_list:?} failed ({}): {text}", out.status);
    Ok(text)
}

fn with_exactly_the_daemonset_capabilities() -> Result<()> {
    let wanted = caps::daemonset_capabilities()?;
    let sc = caps::daemonset_security_context()?;
    ensure!(sc["allowPrivilegeEscalation"] == false && sc["privileged"] == false, "not privileged: {sc}");
    ensure!(sc["readOnlyRootFilesystem"] == true, "read-only root filesystem: {sc}");
    ensure!(sc["seccompProfile"]["type"] == "RuntimeDefault", "seccomp RuntimeDefault: {sc}");
    println!("deploy/daemonset.yaml grants {wanted:?}");

    let lab = Lab::new("cap", 2, XdpModeChoice::Native)?;
    for i in 0..2 {
        start_backend(&lab, i)?;
    }
    let mut agent = Agent::start_with_caps(&lab, &config(), &["--metrics-addr", "off"], &wanted)?;
    agent.wait_programmed(1, 2)?;
    let have = caps::effective(agent.pid)?;
    let want: BTreeSet<String> = wanted.iter().cloned().collect();
    ensure!(have == want, "the agent runs with exactly {want:?}, not {have:?}");
    forwards(&lab, "fresh start with the DaemonSet's capabilities")?;

    // Readers hold read-only descriptors: the kernel refuses writes through them.
    let (mut maps, meta) = Maps::from_pinned(&agent.pin_dir)?;
    let key = maps.vips.keys().next().context("a VIP")??;
    let eperm = |r: Result<(), MapError>| match r {
        Err(MapError::SyscallError(e)) => e.io_error.raw_os_error() == Some(libc::EPERM),
        _ => false,
    };
    ensure!(eperm(maps.vips.insert(key, VipMeta::default(), 0)), "VIPS update refused (EPERM)");
    ensure!(eperm(maps.vips.remove(&key)), "VIPS delete refused (EPERM)");
    ensure!(eperm(maps.meta.set(0, meta, 0)), "META update refused (EPERM)");
    println!("through Maps::from_pinned: VIPS update/delete and META update refused with EPERM");
    let vm = maps.vips.get(&key, 0)?;
    let blank = vec![TableEntry::default(); vm.table_size() as usize];
    ensure!(maps.tables.write_diff(&vm, 0, &blank).is_err(), "TABLES mapped read-only");
    ensure!(maps.tables.read(&vm, vm.half)?.len() == vm.table_size() as usize, "the live table reads back");
    drop(maps);
    let status = run_with_caps(&lab, &[], &["status"], &agent.pin_root)?;
    ensure!(status.contains(&format!("{VIP4}:{TCP_PORT}/tcp")), "status with no capability at all: {status}");
    forwards(&lab, "after the read-only opens")?;

    // A restart adopts the pins and swaps the program into the pinned link.
    let pin_root = agent.pin_root.clone();
    ensure!(agent.stop()?.success(), "clean stop");
    let mut agent = Agent::start_with_caps(&lab, &config(), &["--metrics-addr", "off"], &wanted)?;
    agent.wait_programmed(1, 2)?;
    let log = agent.log_text();
    ensure!(log.contains("origin=Adopted") && log.contains("swapped into the pinned link"), "restart adopts:\n{log}");
    forwards(&lab, "restart with the DaemonSet's capabilities")?;
    ensure!(agent.stop()?.success(), "clean stop");
    run_with_caps(&lab, &wanted, &["cleanup"], &pin_root)?;
    ensure!(!pin_root.join("eth0").exists(), "cleanup with the DaemonSet's capabilities removes the pins");
    Ok(())
}

#[test]
fn agent_forwards_with_exactly_the_daemonset_capabilities() {
    if unavailable("agent_forwards_with_exactly_the_daemonset_capabilities") {
        return;
    }
    with_exactly_the_daemonset_capabilities().unwrap();
}

fn one_fewer() -> Result<()> {
    let wanted = caps::daemonset_capabilities()?;
    let lab = Lab::new("cap1", 1, XdpModeChoice::Native)?;
    for missing in &wanted {
        let fewer: Vec<String> = wanted.iter().filter(|c| *c != missing).cloned().collect();
        let mut agent = Agent::start_with_caps(&lab, &config(), &["--metrics-addr", "off"], &fewer)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = agent.exited()? {
                break s;
            }
            ensure!(Instant::now() < deadline, "without {missing} the agent still runs:\n{}", agent.log_text());
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = agent.log_text();
        let line = log.lines().find(|l| l.starts_with("lb-agent: ")).unwrap_or("").to_string();
        println!("without {missing}: {status}: {}", line.chars().take(240).collect::<String>());
        ensure!(!status.success(), "without {missing} the agent must fail: {status}\n{log}");
        ensure!(!log.contains("ready: first sync done"), "without {missing} nothing is served:\n{log}");
        ensure!(
            line.contains("Operation not permitted") || line.contains("Permission denied"),
            "without {missing} the error says what the kernel refused:\n{log}"
        );
        let _ = std::fs::remove_dir_all(lab.pin_root());
    }
    Ok(())
}

#[test]
fn agent_fails_clearly_with_any_one_capability_fewer() {
    if unavailable("agent_fails_clearly_with_any_one_capability_fewer") {
        return;
    }
    one_fewer().unwrap();
}
