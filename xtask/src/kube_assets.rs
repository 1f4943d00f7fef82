//! `cargo xtask kube-assets`: the binaries of a real Kubernetes control plane for the
//! tests (`kube-apiserver`, `etcd`, `kube-controller-manager`).
//!
//! No package registry ships kube-apiserver, so it is built from Go modules through the Go
//! module proxy: `xtask/kube-assets/` is a tiny Go module that requires `k8s.io/kubernetes`
//! at [`K8S_RELEASE`] (with every staging module replaced by its published `v0.35.x`) and
//! the etcd server that release uses. The binaries go to
//! `$HOME/.cache/lb/kube-assets/K8S_RELEASE`; the Go module and build caches stay in Go's
//! default places, so a rebuild after a cache wipe is quick.
//!
//! `KUBEBUILDER_ASSETS` (the usual convention, e.g. from `setup-envtest`) is honoured: when
//! it names a directory holding working `kube-apiserver` and `etcd`, nothing is built.
//! `tests/src/kube.rs` looks in the same two places, in the same order.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The Kubernetes release built; `xtask/kube-assets/go.mod` pins the same one.
pub const K8S_RELEASE: &str = "v1.35.4";
/// The etcd that [`K8S_RELEASE`] itself requires (`go.etcd.io/etcd/server/v3`).
pub const ETCD_RELEASE: &str = "3.6.5";

/// One binary: its file name and the Go package it is built from.
struct Binary {
    name: &'static str,
    package: &'static str,
    /// Needed by the tests (an outside `KUBEBUILDER_ASSETS` must hold it).
    required: bool,
}

const BINARIES: &[Binary] = &[
    Binary { name: "kube-apiserver", package: "k8s.io/kubernetes/cmd/kube-apiserver", required: true },
    Binary { name: "etcd", package: "go.etcd.io/etcd/server/v3", required: true },
    Binary {
        name: "kube-controller-manager",
        package: "k8s.io/kubernetes/cmd/kube-controller-manager",
        required: false,
    },
];

impl Binary {
    /// A text the first line of its `--version` output must contain.
    fn version(&self) -> String {
        match self.name {
            "etcd" => format!("etcd Version: {ETCD_RELEASE}"),
            _ => format!("Kubernetes {K8S_RELEASE}"),
        }
    }
}

/// Where the binaries are built: `$HOME/.cache/lb/kube-assets/K8S_RELEASE`.
pub fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: cannot place the kube-assets cache")?;
    Ok(PathBuf::from(home).join(".cache/lb/kube-assets").join(K8S_RELEASE))
}

/// The first line of `DIR/NAME --version`, if it runs and succeeds.
fn version_of(dir: &Path, name: &str) -> Option<String> {
    let out = Command::new(dir.join(name)).arg("--version").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// Makes sure the binaries exist; returns whether anything was built.
pub fn run(root: &Path) -> Result<bool> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        let missing: Vec<&str> =
            BINARIES.iter().filter(|b| b.required && version_of(&dir, b.name).is_none()).map(|b| b.name).collect();
        if missing.is_empty() {
            for b in BINARIES.iter().filter(|b| b.required) {
                let v = version_of(&dir, b.name).unwrap_or_default();
                println!("kube-assets: {}: {v}", dir.join(b.name).display());
            }
            println!("kube-assets: using KUBEBUILDER_ASSETS={}, built nothing", dir.display());
            return Ok(false);
        }
        println!(
            "kube-assets: KUBEBUILDER_ASSETS={} lacks a working {}: ignoring it, using the cache",
            dir.display(),
            missing.join(", ")
        );
    }
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // `setup` runs this from every task: concurrent runs wait for one another here.
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        println!("kube-assets: another run holds {}: waiting for it", lock_path.display());
        lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    }
    let mut built = false;
    for b in BINARIES {
        match version_of(&dir, b.name) {
            Some(v) if v.contains(&b.version()) => {
                println!("kube-assets: {}: present ({v}), skipped", b.name);
                continue;
            }
            Some(v) => println!("kube-assets: {}: found {v:?}, want {:?}: rebuilding", b.name, b.version()),
            None => println!("kube-assets: {}: missing, building (a cold build takes minutes)", b.name),
        }
        build(root, &dir, b)?;
        built = true;
    }
    println!("kube-assets: binaries in {}", dir.display());
    println!("kube-assets: (tests find them there; or set KUBEBUILDER_ASSETS to a directory of your own)");
    Ok(built)
}

/// The `go` to use: from PATH, else the usual tarball install under /usr/local/go.
fn go() -> Result<Command> {
    if Command::new("go").arg("version").output().is_ok_and(|o| o.status.success()) {
        return Ok(Command::new("go"));
    }
    let fallback = Path::new("/usr/local/go/bin/go");
    if fallback.is_file() {
        return Ok(Command::new(fallback));
    }
    bail!("no `go` on PATH nor at {}: building the Kubernetes test binaries needs Go 1.25 or newer", fallback.display())
}

fn build(root: &Path, dir: &Path, b: &Binary) -> Result<()> {
    let module = root.join("xtask/kube-assets");
    let partial = dir.join(format!(".{}.partial-{}", b.name, std::process::id()));
    let target = dir.join(b.name);
    // What the Kubernetes release scripts stamp, so `--version` (and /version) tell the release.
    let base = "k8s.io/component-base/version";
    let minor = K8S_RELEASE.trim_start_matches('v').split('.').nth(1).unwrap_or("");
    let ldflags = format!(
        "-s -w -X {base}.gitVersion={K8S_RELEASE} -X {base}.gitMajor=1 -X {base}.gitMinor={minor} \
         -X {base}.gitTreeState=clean"
    );
    let start = Instant::now();
    let result = cmd::run(
        go()?
            .current_dir(&module)
            .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
            .arg(&partial)
            .arg(b.package)
            // Without it a dirty `vcs` stamp is attempted from the workspace's git tree.
            .env("GOFLAGS", "-buildvcs=false"),
    );
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("renaming {} to {}", partial.display(), target.display()))?;
    let Some(v) = version_of(dir, b.name) else {
        bail!("built {} but `{} --version` does not run", target.display(), target.display());
    };
    if !v.contains(&b.version()) {
        bail!("built {} but its --version says {v:?}, not {:?}", target.display(), b.version());
    }
    println!("kube-assets: {}: built in {:.0?} ({v})", b.name, start.elapsed());
    Ok(())
}
