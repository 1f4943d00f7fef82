//! Shared pieces of the privileged test suite: the skip convention, the namespace lab.
//!
//! A privileged test starts with `if lb_tests::skip("name") { return; }`. A skip prints
//! its reason and, when `LB_SKIP_LOG` is set (by `cargo xtask test`), appends a line to
//! that file, so the runner can fail a run in which every privileged test skipped.

pub mod agent;
pub mod caps;
pub mod frames;
pub mod fuzz;
pub mod kube;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod servers;
pub mod traffic;
pub mod vm;

use std::io::Write;

/// Why this machine cannot run privileged tests, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (XDP, network namespaces, BPF maps)".into());
    }
    if !std::path::Path::new("/sys/fs/bpf").exists() {
        return Some("no /sys/fs/bpf (bpffs) on this kernel".into());
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Some("kernel without network namespaces".into());
    }
    None
}

/// Records and prints a skip for `test` when privileged tests cannot run here.
pub fn skip(test: &str) -> bool {
    match unavailable() {
        None => false,
        Some(reason) => {
            record_skip(test, &reason);
            true
        }
    }
}

/// Prints the reason a test skips and records it for the runner.
pub fn record_skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("LB_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}\t{reason}");
        }
    }
}
