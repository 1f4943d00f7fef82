//! Tests that need the kernel's IPVS run inside a VM booting Debian's stock kernel
//! (TESTBED.md: this machine's kernel has no IPVS, and `/dev/kvm` cannot run a stock
//! kernel, so QEMU emulates): virtme-ng shares the host's root filesystem read-only, so
//! the test binary built on the host runs in the guest as it is.
//!
//! A VM test calls [`in_vm`] first: on the host it boots the VM, runs the same test
//! binary there (only that test, with `LB_IN_VM=1`) and reports whether it passed; in
//! the guest it returns `None` and the test body runs. `cargo xtask setup` installs
//! what this needs (`qemu-system-x86`, `virtme-ng`, the kernel image and modules).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The guest kernel image, where `cargo xtask setup` unpacks it (which kernel is
/// `xtask/src/vm.rs`'s choice), with its release.
pub fn kernel() -> Option<(PathBuf, String)> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    let boot = home.join(".cache/lb/vm/root/boot");
    std::fs::read_dir(boot).ok()?.filter_map(|e| e.ok()).find_map(|e| {
        let release = e.file_name().to_string_lossy().strip_prefix("vmlinuz-")?.to_string();
        Some((e.path(), release))
    })
}

/// Why VM tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::unavailable() {
        return Some(why);
    }
    let Some((_, release)) = kernel() else {
        return Some("no guest kernel in ~/.cache/lb/vm (run `cargo xtask setup`)".into());
    };
    if !std::path::Path::new(&format!("/lib/modules/{release}/modules.dep")).exists() {
        return Some(format!("no modules for {release} in /lib/modules (run `cargo xtask setup`)"));
    }
    for tool in ["vng", "qemu-system-x86_64"] {
        if which(tool).is_none() {
            return Some(format!("{tool} not found (run `cargo xtask setup`)"));
        }
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(tool)).find(|p| p.exists())
}

/// Whether this process is the guest's run of a VM test.
pub fn inside() -> bool {
    std::env::var_os("LB_IN_VM").is_some()
}

/// On the host: runs test `name` of this test binary in the VM and returns its outcome
/// (`Some(Ok)` passed); a skip when the VM cannot run here is `Some(Ok)` after
/// recording it. In the guest: `None` (run the body).
pub fn in_vm(name: &str) -> Option<Result<()>> {
    if inside() {
        return None;
    }
    if let Some(why) = unavailable() {
        crate::record_skip(name, &why);
        return Some(Ok(()));
    }
    Some(run_in_vm(name))
}

fn run_in_vm(name: &str) -> Result<()> {
    let exe = std::env::current_exe().context("finding the test binary")?;
    // The guest writes its exit status here (the console interleaves kernel messages).
    let out_dir = std::env::temp_dir().join(format!("lb-vm-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let status_file = out_dir.join("exit");
    let script = format!(
        "cd {dir} && LB_IN_VM=1 RUST_BACKTRACE=1 {exe} --exact {name} --test-threads=1 --nocapture; echo $? > {status}",
        dir = std::env::current_dir()?.display(),
        exe = exe.display(),
        status = status_file.display(),
    );
    let started = std::time::Instant::now();
    let out = Command::new("vng")
        .args(["--disable-kvm", "--force-9p", "-v", "--memory", "1G"])
        .arg(format!("--rwdir={}", out_dir.display()))
        .arg("-r")
        .arg(kernel().context("no guest kernel")?.0)
        .args(["--", &script])
        .output()
        .context("running vng")?;
    let console = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("VM for {name}: {:.1} s", started.elapsed().as_secs_f64());
    let exit = std::fs::read_to_string(&status_file).ok().map(|s| s.trim().to_string());
    let _ = std::fs::remove_dir_all(&out_dir);
    match exit.as_deref() {
        Some("0") => {
            println!("{}", guest_lines(&console));
            Ok(())
        }
        _ => bail!("test {name} failed in the VM (exit {exit:?}):\n{}", guest_lines(&console)),
    }
}

/// The guest's output without the kernel's boot messages.
fn guest_lines(console: &str) -> String {
    console.lines().filter(|l| !l.starts_with('[')).collect::<Vec<_>>().join("\n")
}
