//! Project tasks: `cargo xtask setup | kube-assets | build-ebpf | test | bench | demo`.

mod bpf;
mod cmd;
mod deny;
#[path = "../../lb-agent/build/ebpf.rs"]
mod ebpf;
mod kube_assets;
mod setup;
mod test;
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "Tasks of the XDP load balancer workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (Debian packages, bpf-linker, bpffs mount) and check the
    /// eBPF toolchain. Idempotent; needs root when something has to be installed.
    Setup,
    /// Build (or find) kube-apiserver, etcd and kube-controller-manager for the Kubernetes
    /// tests: `KUBEBUILDER_ASSETS` if it holds them, else `~/.cache/lb/kube-assets/RELEASE`.
    KubeAssets,
    /// Check the toolchain, build the XDP object into target/bpf and verify it carries BTF.
    BuildEbpf,
    /// Setup, unit tests, then the privileged suite (fails if every privileged test skipped).
    Test,
    /// Setup, then `cargo run --release -p lb-tests --bin lb-bench -- ARGS`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, then `cargo run --release -p lb-tests --bin lb-demo -- ARGS`.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    add_cargo_bin_to_path();
    // The chain of causes, not a backtrace: failures here are failed commands.
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup => setup::run(),
        Task::KubeAssets => kube_assets::run(&root).map(drop),
        Task::BuildEbpf => bpf::build(&root),
        Task::Test => test::run(&root),
        Task::Bench { args } => run_bin(&root, "lb-bench", &args),
        Task::Demo { args } => run_bin(&root, "lb-demo", &args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`; the eBPF build finds it on PATH.
fn add_cargo_bin_to_path() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(bin) = home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let dirs = std::iter::once(bin).chain(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(dirs) {
        // Single-threaded here: nothing else reads the environment concurrently.
        std::env::set_var("PATH", joined);
    }
}

fn run_bin(root: &Path, bin: &str, args: &[String]) -> Result<()> {
    setup::run()?;
    // The demo and the benchmarks start the real agent binary.
    cmd::run(cmd::cargo().current_dir(root).args(["build", "--release", "-p", "lb-agent"]))?;
    cmd::run(cmd::cargo().current_dir(root).args(["run", "--release", "-p", "lb-tests", "--bin", bin, "--"]).args(args))
}
