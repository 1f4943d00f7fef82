//! `cargo deny check licenses bans sources` (rules in `deny.toml`): which licenses the
//! dependency tree may carry, duplicate versions, and that every crate comes from
//! crates.io. Advisories are not checked: their database cannot be fetched from here.
//!
//! cargo-deny is installed by `cargo xtask setup` at a pinned version (one that builds with
//! the workspace's Rust), into cargo's bin directory, and only when that version is not
//! already there.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// The cargo-deny release used (its `rust-version` is 1.88; ours is 1.95).
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// The checks run: every one but `advisories` (needs the advisory database online).
pub const CHECKS: &[&str] = &["licenses", "bans", "sources"];

/// The version `cargo deny --version` prints, if cargo-deny runs.
fn installed_version() -> Option<String> {
    let out = cmd::cargo().args(["deny", "--version"]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success().then(|| line.split_whitespace().nth(1).unwrap_or("").to_string())
}

/// Installs cargo-deny unless the pinned version is present; returns whether it did.
pub fn install() -> Result<bool> {
    match installed_version() {
        Some(v) if v == CARGO_DENY_VERSION => {
            println!("setup: cargo-deny: present ({v}), skipped");
            return Ok(false);
        }
        Some(v) => println!("setup: cargo-deny: found {v}, need {CARGO_DENY_VERSION}: installing"),
        None => println!("setup: cargo-deny: missing, installing {CARGO_DENY_VERSION} (takes a few minutes)"),
    }
    cmd::run(
        cmd::cargo().args(["install", "--locked", "cargo-deny", "--version"]).arg(format!("={CARGO_DENY_VERSION}")),
    )?;
    Ok(true)
}

/// Runs the checks over the workspace (fails on a license, ban or source violation).
pub fn check(root: &Path) -> Result<()> {
    let mut c: Command = cmd::cargo();
    c.current_dir(root).args(["deny", "--locked", "check"]).args(CHECKS);
    cmd::run(&mut c)
}
