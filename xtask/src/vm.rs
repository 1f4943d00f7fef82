//! What the IPVS tests need: a VM booting Debian's stock kernel (TESTBED.md). QEMU and
//! `ipvsadm` come from Debian (`setup::DEBIAN_PACKAGES`); here: virtme-ng from PyPI, and
//! the kernel image with its modules, unpacked from the Debian package rather than
//! installed (installing pulls in udev, ~14 s more per boot). Idempotent.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// The guest kernel: Debian bookworm's `linux-image-<KERNEL>-unsigned`.
pub const KERNEL: &str = "6.1.0-56-amd64";
const VIRTME_NG: &str = "virtme-ng==1.42";

fn cache() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/lb/vm")
}

/// Returns whether anything was installed.
pub fn install() -> Result<bool> {
    let mut did = false;
    if cmd::output(Command::new("vng").arg("--version")).is_err() {
        println!("setup: VM: installing {VIRTME_NG} (pip)");
        cmd::run(Command::new("pip").args(["install", "-q", VIRTME_NG]))?;
        did = true;
    }
    let root = cache().join("root");
    if !root.join(format!("boot/vmlinuz-{KERNEL}")).exists() {
        println!("setup: VM: downloading linux-image-{KERNEL}-unsigned");
        std::fs::create_dir_all(cache())?;
        let package = format!("linux-image-{KERNEL}-unsigned");
        cmd::run(Command::new("apt-get").args(["download", &package]).current_dir(cache()))?;
        let deb = std::fs::read_dir(cache())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package)))
            .context("the downloaded kernel package")?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        std::fs::remove_file(deb)?;
        did = true;
    }
    // The guest shares this root filesystem: its modules must be where modprobe looks.
    let modules = PathBuf::from(format!("/lib/modules/{KERNEL}"));
    if !modules.join("modules.dep").exists() {
        println!("setup: VM: modules of {KERNEL} into /lib/modules");
        cmd::run(Command::new("cp").arg("-a").arg(root.join(format!("lib/modules/{KERNEL}"))).arg("/lib/modules/"))?;
        cmd::run(Command::new("depmod").args(["-a", KERNEL]))?;
        did = true;
    }
    if !did {
        println!("setup: VM: virtme-ng and kernel {KERNEL} present, skipped");
    }
    Ok(did)
}
