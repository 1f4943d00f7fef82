//! `lb-agent`: runs the load balancer on one interface.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use lb_agent::agent::{self, AgentError, RunOptions};
use lb_agent::config::{self, ConfigError, FieldError, Problem, XdpModeChoice};
use lb_agent::loader::LoadOptions;
use lb_common::{maglev::is_prime, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE};

/// EX_USAGE: bad input (a flag, a config field, an interface that does not exist).
const EXIT_USAGE: u8 = 64;

/// XDP direct-server-return L4 load balancer.
///
/// Each --backend belongs to the --vip before it:
///   lb-agent --iface eth0 --vip 192.0.2.10:80/tcp --backend 10.0.0.2=3 --backend 10.0.0.3
#[derive(Parser, Debug)]
#[command(name = "lb-agent", version, verbatim_doc_comment)]
struct Cli {
    /// Interface to attach to and to put the VIP addresses on.
    #[arg(long, env = "LB_IFACE")]
    iface: Option<String>,
    /// A VIP, ADDRESS:PORT/PROTOCOL (tcp or udp); IPv6 as [ADDRESS]:PORT/PROTOCOL.
    /// Repeatable. (No env variable: use LB_CONFIG for environment-driven setups.)
    #[arg(long = "vip", value_name = "ADDR:PORT/PROTO")]
    vips: Vec<String>,
    /// A backend of the preceding --vip, ADDRESS[=WEIGHT] (weight 0-65535, default 1).
    #[arg(long = "backend", value_name = "ADDR[=WEIGHT]")]
    backends: Vec<String>,
    /// TOML config file (re-read on SIGHUP); flags win over it.
    #[arg(long, env = "LB_CONFIG")]
    config: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, env = "LB_XDP_MODE", value_enum)]
    xdp_mode: Option<XdpModeChoice>,
    /// Root of the pinned maps (bpffs); maps go to <PIN_ROOT>/<IFACE>/.
    #[arg(long, env = "LB_PIN_ROOT", default_value = "/sys/fs/bpf/lb")]
    pin_root: PathBuf,
    /// Maglev table size per VIP (a prime, at least 100 x the largest backend count).
    #[arg(long, env = "LB_TABLE_SIZE", default_value_t = DEFAULT_TABLE_SIZE)]
    table_size: u32,
    #[arg(long, env = "LB_MAX_VIPS", default_value_t = DEFAULT_MAX_VIPS)]
    max_vips: u32,
    #[arg(long, env = "LB_MAX_BACKENDS", default_value_t = DEFAULT_MAX_BACKENDS)]
    max_backends: u32,
    /// Flow-table capacity (LRU).
    #[arg(long, env = "LB_MAX_FLOWS", default_value_t = DEFAULT_MAX_FLOWS)]
    max_flows: u32,
    /// Flow-hash seed: must be the same on every LB host that shares VIPs.
    #[arg(long, env = "LB_HASH_SEED", default_value_t = 0)]
    hash_seed: u32,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "LB_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log)).with_target(false).init();
    let positions = |id: &str, values: &[String]| -> Vec<(usize, String)> {
        matches.indices_of(id).map(|ix| ix.zip(values.iter().cloned()).collect()).unwrap_or_default()
    };
    let opts = match options(&cli, positions("vips", &cli.vips), positions("backends", &cli.backends)) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Usage(e)) => usage(&e),
        Err(e) => {
            eprintln!("lb-agent: {}", anyhow::Error::from(e).chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": "));
            ExitCode::FAILURE
        }
    }
}

fn usage(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("lb-agent: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// Parses and validates everything the flags and the config file say.
fn options(cli: &Cli, vips: Vec<(usize, String)>, backends: Vec<(usize, String)>) -> Result<RunOptions, ConfigError> {
    let flag_vips = config::group_flags(&vips, &backends)?;
    let file = cli.config.as_deref().map(config::read_file).transpose()?;
    let config = config::build(cli.iface.clone(), cli.xdp_mode, flag_vips.clone(), file.as_ref())?;
    if !is_prime(cli.table_size) || cli.table_size < 3 {
        return Err(FieldError::new("--table-size", cli.table_size.to_string(), Problem::NotPrime).into());
    }
    for (flag, v) in [("--max-vips", cli.max_vips), ("--max-backends", cli.max_backends), ("--max-flows", cli.max_flows)] {
        if v == 0 {
            return Err(FieldError::new(flag, "0", Problem::Zero).into());
        }
    }
    if (cli.max_vips as u64) * 2 * (cli.table_size as u64) > u32::MAX as u64 {
        return Err(FieldError::new("--max-vips", cli.max_vips.to_string(), Problem::TooLarge).into());
    }
    let load = LoadOptions {
        table_size: cli.table_size,
        max_vips: cli.max_vips,
        max_backends: cli.max_backends,
        max_flows: cli.max_flows,
        hash_seed: cli.hash_seed,
        lb_mac: [0; 6],
    };
    Ok(RunOptions { config, config_path: cli.config.clone(), flag_vips, load, pin_root: cli.pin_root.clone() })
}
