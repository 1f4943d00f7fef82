//! The agent's capabilities as deploy/daemonset.yaml grants them, and running a process
//! with exactly those (capsh from libcap2-bin, which `cargo xtask setup` installs).
//!
//! The list is read from the manifest itself, so the DaemonSet and the capability test
//! can never disagree.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// capsh (Debian: libcap2-bin).
pub const CAPSH: &str = "/usr/sbin/capsh";

/// deploy/daemonset.yaml.
pub fn daemonset_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml")
}

/// The lb-agent container's `securityContext` in deploy/daemonset.yaml.
pub fn daemonset_security_context() -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(daemonset_path()).context("reading deploy/daemonset.yaml")?;
    let doc: serde_json::Value = serde_yaml::from_str(&text).context("parsing deploy/daemonset.yaml")?;
    let containers = doc["spec"]["template"]["spec"]["containers"].as_array().context("no containers")?;
    let agent = containers.iter().find(|c| c["name"] == "lb-agent").context("no lb-agent container")?;
    Ok(agent["securityContext"].clone())
}

/// The capabilities the DaemonSet adds, as capsh names (`BPF` -> `cap_bpf`); fails unless
/// it also drops `ALL` (else the runtime's defaults would come on top).
pub fn daemonset_capabilities() -> Result<Vec<String>> {
    let sc = daemonset_security_context()?;
    ensure!(sc["capabilities"]["drop"] == serde_json::json!(["ALL"]), "the DaemonSet must drop ALL: {sc}");
    let add = sc["capabilities"]["add"].as_array().context("no capabilities.add")?;
    add.iter()
        .map(|c| c.as_str().map(|s| format!("cap_{}", s.to_ascii_lowercase())).context("a capability name"))
        .collect()
}

/// Whether capsh is here (the caller skips, or fails under CI, without it).
pub fn capsh_missing() -> Option<String> {
    (!Path::new(CAPSH).is_file())
        .then(|| format!("{CAPSH} not found (Debian package libcap2-bin; `cargo xtask setup`)"))
}

/// The capabilities in this process's bounding set, by name.
fn bounding_set() -> Result<BTreeSet<String>> {
    let out = Command::new(CAPSH).arg("--print").output().context("running capsh --print")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("Bounding set =")).context("capsh --print: no bounding set")?;
    Ok(line.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
}

/// Arguments for capsh that run `program` (then the caller's further arguments) with
/// exactly `caps`: every other capability is dropped from the bounding set, so root's
/// exec gains only these; no_new_privs as `allowPrivilegeEscalation: false`.
pub fn capsh_args(caps: &[String], program: &Path) -> Result<Vec<String>> {
    let have = bounding_set()?;
    for c in caps {
        if !have.contains(c) {
            bail!("{c} is not in this process's bounding set ({}), so it cannot be granted", have.len());
        }
    }
    let drop: Vec<&str> = have.iter().map(String::as_str).filter(|c| !caps.iter().any(|k| k == c)).collect();
    Ok(vec![
        format!("--drop={}", drop.join(",")),
        "--no-new-privs".into(),
        format!("--shell={}", program.display()),
        "--".into(),
    ])
}

/// The effective capabilities of process `pid`, by name (`capsh --decode`).
pub fn effective(pid: u32) -> Result<BTreeSet<String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the process status")?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).context("no CapEff")?.trim().to_string();
    let out = Command::new(CAPSH).arg(format!("--decode={hex}")).output().context("running capsh --decode")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let names = text.trim().split_once('=').map(|(_, n)| n).unwrap_or("");
    Ok(names.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
}
