//! `cargo xtask setup`: installs what is missing (idempotent) and checks the toolchain.
//!
//! What is installed and why: Debian's `rustc-web` and `rust-web-src` (a compiler with
//! its library source, for `-Z build-std=core`), LLVM 22 for bpf-linker, bpf-linker 0.13
//! itself, cargo-deny, and the tools the privileged tests call; last, the Kubernetes test binaries
//! (`cargo xtask kube-assets`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd;
use crate::ebpf;
use crate::kube_assets;

/// Debian packages the project needs. Extend here (one place) when a feature needs more.
pub const DEBIAN_PACKAGES: &[&str] = &[
    // Compiler + matching core library source for the BPF target.
    "rustc-web",
    "rust-web-src",
    // LLVM 22 for building bpf-linker.
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // Inspecting BPF objects, maps and programs.
    "bpftool",
    "clang",
    // What the privileged tests and the demo drive.
    "iproute2",
    "ethtool",
    "tcpdump",
    "procps",
    "iputils-ping",
    // capsh: the capability test runs the agent with exactly the DaemonSet's capabilities.
    "libcap2-bin",
    // The IPVS tests' VM (`vm.rs`): QEMU, its initramfs tools, depmod, and ipvsadm (the
    // tests' oracle).
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "ipvsadm",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_SERIES: &str = "0.13";
const RUST_SRC_CORE: &str = "/usr/lib/rustlib/src/rust/library/core";
const BPFFS: &str = "/sys/fs/bpf";

/// Installs what is missing, then runs [`check`].
pub fn run() -> Result<()> {
    let mut did = Vec::new();
    if debian_packages()? {
        did.push("Debian packages");
    }
    if bpf_linker()? {
        did.push("bpf-linker");
    }
    if bpffs()? {
        did.push("bpffs mount");
    }
    if crate::deny::install()? {
        did.push("cargo-deny");
    }
    if crate::vm::install()? {
        did.push("the IPVS test VM");
    }
    check()?;
    // Last: a cold build takes minutes, and it needs nothing installed above.
    if kube_assets::run(&crate::workspace_root())? {
        did.push("Kubernetes test binaries");
    }
    if did.is_empty() {
        println!("setup: done, nothing to install");
    } else {
        println!("setup: done, installed: {}", did.join(", "));
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
        .unwrap_or(false)
}

/// Returns whether anything was installed.
fn debian_packages() -> Result<bool> {
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages: all {} present, skipped", DEBIAN_PACKAGES.len());
        return Ok(false);
    }
    println!("setup: Debian packages: installing {}", missing.join(" "));
    if !is_root() {
        bail!("installing Debian packages ({}) needs root", missing.join(" "));
    }
    cmd::run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still: Vec<&str> = missing.iter().copied().filter(|p| !is_installed(p)).collect();
    if !still.is_empty() {
        bail!("apt-get install finished but these packages are still not installed: {}", still.join(" "));
    }
    Ok(true)
}

/// The first line of `bpf-linker --version`, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success().then_some(v)
}

fn bpf_linker() -> Result<bool> {
    match bpf_linker_version() {
        Some(v) if is_wanted_linker(&v) => {
            println!("setup: bpf-linker: present ({v}), skipped");
            return Ok(false);
        }
        Some(v) => println!("setup: bpf-linker: found {v}, need {BPF_LINKER_SERIES}.x: installing"),
        None => println!("setup: bpf-linker: missing, installing (takes a few minutes)"),
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![Path::new(LLVM_PREFIX).join("bin")];
    dirs.extend(std::env::split_paths(&path));
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--version"])
            .arg(format!("^{BPF_LINKER_SERIES}"))
            .args(["--no-default-features", "--features", "llvm-22", "--locked"])
            .env("PATH", std::env::join_paths(dirs)?)
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    Ok(true)
}

fn is_wanted_linker(version_line: &str) -> bool {
    version_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|v| v == BPF_LINKER_SERIES || v.starts_with(&format!("{BPF_LINKER_SERIES}.")))
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[1] == BPFFS && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

fn bpffs() -> Result<bool> {
    if bpffs_mounted() {
        println!("setup: bpffs: mounted at {BPFFS}, skipped");
        return Ok(false);
    }
    println!("setup: bpffs: not mounted, mounting at {BPFFS}");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    Ok(true)
}

fn is_root() -> bool {
    // `Uid:` in /proc/self/status lists real, effective, saved, fs; the effective one counts.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Checks that the eBPF toolchain is complete; names everything that is missing.
pub fn check() -> Result<()> {
    let mut missing = Vec::new();
    let mut probe = |what: &str, c: &mut Command, fix: &str| match cmd::output(c) {
        Ok(out) => {
            let first = out.lines().next().unwrap_or("").trim().to_string();
            println!("setup: check {what}: {first}");
        }
        Err(e) => missing.push(format!("{what} ({e:#}; {fix})")),
    };
    probe("rustc", Command::new(ebpf::BPF_RUSTC).arg("--version"), "Debian package rustc-web");
    probe("bpf-linker", Command::new("bpf-linker").arg("--version"), "cargo install bpf-linker");
    probe("bpftool", Command::new("bpftool").arg("version"), "Debian package bpftool");
    if Path::new(RUST_SRC_CORE).is_dir() {
        println!("setup: check rust library source: {RUST_SRC_CORE}");
    } else {
        missing.push(format!("{RUST_SRC_CORE} (Debian package rust-web-src)"));
    }
    if !missing.is_empty() {
        bail!(
            "the eBPF toolchain is incomplete (run `cargo xtask setup` as root); missing:\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linker_series() {
        assert!(is_wanted_linker("bpf-linker 0.13.0"));
        assert!(is_wanted_linker("bpf-linker 0.13.2"));
        assert!(!is_wanted_linker("bpf-linker 0.9.13"));
        assert!(!is_wanted_linker("bpf-linker 0.130.0"));
        assert!(!is_wanted_linker(""));
    }
}
