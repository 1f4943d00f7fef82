//! Running code inside a network namespace, and commands in one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs `f` on a fresh thread that has joined network namespace `ns`. Sockets created
/// inside `f` belong to that namespace for their whole life, whichever thread uses them.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is valid for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    let joined = handle.join().map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?;
    joined.with_context(|| format!("entering network namespace {ns}"))
}

/// Runs a command and fails with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// `ip netns exec NS sysctl -qw KEY=VALUE`
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    sh("ip", &["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
}

/// A command to run inside `ns` (only the network namespace is switched, so bpffs
/// and /sys stay as they are, unlike `ip netns exec`).
pub fn command_in(ns: &str, program: &std::path::Path) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls (setns) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Like `run_in`, but returns at once: `f` runs on its own thread inside `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<std::io::Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is valid for the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    }))
}
