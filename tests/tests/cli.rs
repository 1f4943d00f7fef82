//! Bad input to the real binary: one clear line naming the flag or field, exit code
//! 64, and nothing attached or pinned.

use std::process::Output;

use lb_agent::config::XdpModeChoice;
use lb_tests::agent::agent_binary;
use lb_tests::lab::Lab;
use lb_tests::netns::{command_in, ip};

fn run_in_lb(lab: &Lab, args: &[&str], pin_root: &str) -> Output {
    let mut cmd = command_in(&lab.lb(), &agent_binary().unwrap()).unwrap();
    cmd.args(args).args(["--pin-root", pin_root]).env("LB_LOG", "error");
    cmd.output().unwrap()
}

#[test]
fn bad_input_is_one_line_exit_64_nothing_attached() {
    if lb_tests::skip("bad_input_is_one_line_exit_64_nothing_attached") {
        return;
    }
    let lab = Lab::new("cli", 0, XdpModeChoice::Generic).unwrap();
    let pin_root = format!("/sys/fs/bpf/{}", lab.prefix);
    let v = ["--vip", "192.0.2.100:80/tcp"];
    // (arguments, text the one line must contain)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--iface", "eth0", "--vip", "192.0.2.100:80"],
            "--vip \"192.0.2.100:80\": expected ADDRESS:PORT/PROTOCOL",
        ),
        (
            vec!["--iface", "eth0", "--vip", "192.0.2.100:80/tcp", "--backend", "192.0.2.x"],
            "--backend \"192.0.2.x\": not an IP address",
        ),
        (
            vec!["--iface", "eth0", v[0], v[1], "--backend", "192.0.2.11=70000"],
            "--backend \"192.0.2.11=70000\": weight must be",
        ),
        (vec!["--iface", "eth0", "--backend", "192.0.2.11", v[0], v[1]], "comes before any --vip"),
        (
            vec!["--iface", "eth0", v[0], v[1], v[0], v[1]],
            "--vip \"192.0.2.100:80/tcp\": the same VIP is configured twice",
        ),
        (
            vec!["--iface", "nosuch0", v[0], v[1], "--backend", "192.0.2.11"],
            "--iface \"nosuch0\": no interface of that name",
        ),
        (vec!["--iface", "eth0", v[0], v[1], "--backend", "10.9.9.9"], "is not on a subnet of interface eth0"),
        (
            vec!["--iface", "eth0", "--table-size", "1000", v[0], v[1]],
            "--table-size \"1000\": must be 256, 1024, 8192 or 65536",
        ),
        (vec![v[0], v[1]], "--iface \"\": is required"),
    ];
    for (args, want) in cases {
        let out = run_in_lb(&lab, &args, &pin_root);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("lb-agent: ") && lines[0].contains(want),
            "{args:?}: {:?} lacks {want:?}",
            lines[0]
        );
        let link = ip(&lab.lb(), &["-d", "link", "show", "eth0"]).unwrap();
        assert!(!link.contains("xdp"), "{args:?}: nothing attached: {link}");
        assert!(!std::path::Path::new(&pin_root).exists(), "{args:?}: nothing pinned");
        let addrs = ip(&lab.lb(), &["-br", "addr"]).unwrap();
        assert!(!addrs.contains("192.0.2.100"), "{args:?}: no VIP address added: {addrs}");
    }
}
