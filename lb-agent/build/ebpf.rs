//! How the XDP program is built. Shared by `lb-agent/build.rs` and `cargo xtask
//! build-ebpf` (included with `#[path]`) so there is one recipe.
//!
//! The BPF target needs `-Z build-std=core`, for which rustup has no library source
//! here; Debian's `rustc-web` (a matched compiler + `rust-web-src`) provides both.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's compiler (package `rustc-web`), which has the core library source.
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Builds `lb-ebpf` (release, with BTF) into `target_dir` and returns the object's path.
pub fn build(lb_ebpf_dir: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    if !Path::new(BPF_RUSTC).exists() {
        return Err(format!("{BPF_RUSTC} is missing: the eBPF toolchain is not installed (run `cargo xtask setup`)"));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(lb_ebpf_dir)
        .args(["build", "--release", "--target", BPF_TARGET])
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .env("CARGO_TARGET_DIR", target_dir);
    // Nothing of an outer cargo invocation (a build script's environment) may leak in.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    for key in ["RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOC", "RUSTFLAGS_BOOTSTRAP"] {
        cmd.env_remove(key);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo for lb-ebpf: {e}"))?;
    if !status.success() {
        return Err(format!("building lb-ebpf failed ({status})"));
    }
    Ok(target_dir.join(BPF_TARGET).join("release").join("lb-ebpf"))
}
