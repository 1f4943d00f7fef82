//! `lb-agent`: runs the load balancer on one interface, and inspects or removes it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use lb_agent::agent::{self, AgentError, RunOptions};
use lb_agent::config::{self, parse_duration, ConfigError, FieldError, Problem, XdpModeChoice};
use lb_agent::dataplane::xdp::loader::LoadOptions;
use lb_agent::ramp::{DrainPolicy, RampPolicy};
use lb_common::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE};

/// EX_USAGE: bad input (a flag, a config field, an interface that does not exist).
const EXIT_USAGE: u8 = 64;

/// XDP direct-server-return L4 load balancer.
///
/// Each --backend belongs to the --vip before it:
///   lb-agent --iface eth0 --vip 192.0.2.10:80/tcp --backend 10.0.0.2=3 --backend 10.0.0.3
#[derive(Parser, Debug)]
#[command(name = "lb-agent", version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Detach the program and remove the pinned maps, the VIP addresses and the
    /// neighbour entries an agent left in place (an agent's stop leaves them on purpose).
    Cleanup {
        #[arg(long, env = "LB_IFACE")]
        iface: String,
        #[arg(long, env = "LB_PIN_ROOT", default_value = "/sys/fs/bpf/lb")]
        pin_root: PathBuf,
    },
    /// VIPs and backends with weights, ramp and drain state, counters and the flow
    /// table, read from the pinned maps (works while no agent runs).
    Status(lb_agent::cli::status::StatusArgs),
    /// Which backend the kernel picks for a flow, and why.
    Explain(lb_agent::cli::explain::ExplainArgs),
    /// Live view: packet and byte rates per VIP and backend, ramps, drains, verdicts.
    Top(lb_agent::cli::top::TopArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| "must be a duration such as 500ms, 10s, 5m or 3h".into())
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct MetricsAddr(Option<SocketAddr>);

fn metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse().map(|a| MetricsAddr(Some(a))).map_err(|_| "must be ADDRESS:PORT or off".into())
}

#[derive(clap::Args, Debug)]
struct RunArgs {
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
    /// TOML config file (re-read on SIGHUP and when it changes); flags win over it.
    #[arg(long, env = "LB_CONFIG")]
    config: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, env = "LB_XDP_MODE", value_enum)]
    xdp_mode: Option<XdpModeChoice>,
    /// Root of the pins (bpffs): <PIN_ROOT>/<IFACE>/link and maps-v<ABI>/.
    #[arg(long, env = "LB_PIN_ROOT", default_value = "/sys/fs/bpf/lb")]
    pin_root: PathBuf,
    /// Slow start: percentage points a new backend's weight rises per interval.
    #[arg(long, env = "LB_RAMP_STEP", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    ramp_step: u32,
    /// Slow start: how often a new backend's weight rises.
    #[arg(long, env = "LB_RAMP_INTERVAL", default_value = "10s", value_parser = duration)]
    ramp_interval: Duration,
    /// A draining backend is removed once its live flows reach 0, but not before this
    /// (default: the flow idle timeout, since a connection that sent nothing since the
    /// drain began is invisible in the flow table until then).
    #[arg(long, env = "LB_DRAIN_MIN", value_parser = duration)]
    drain_min: Option<Duration>,
    /// A draining backend is removed at the latest after this.
    #[arg(long, env = "LB_DRAIN_TIMEOUT", default_value = "300s", value_parser = duration)]
    drain_timeout: Duration,
    /// How long a flow may be silent and still count as live (drains, settling).
    #[arg(long, env = "LB_FLOW_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    flow_idle_timeout: Duration,
    /// Prometheus /metrics, /healthz, /readyz (ADDRESS:PORT, or off).
    #[arg(long, env = "LB_METRICS_ADDR", default_value = "127.0.0.1:9477", value_parser = metrics_addr)]
    metrics_addr: MetricsAddr,
    /// The largest Maglev table a VIP gets: 256, 1024, 8192 or 65536. Each VIP's table
    /// is the smallest of these with 100 slots a backend, up to this.
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
    /// Take the wanted state from Kubernetes (Services of type LoadBalancer with our
    /// class, EndpointSlices, pods): in-cluster config, or --kubeconfig.
    #[arg(long, env = "LB_KUBERNETES")]
    kubernetes: bool,
    /// Kubeconfig for an agent outside the cluster (implies --kubernetes).
    #[arg(long, env = "LB_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Only watch this namespace (default: all).
    #[arg(long, env = "LB_KUBE_NAMESPACE")]
    kube_namespace: Option<String>,
    /// Only Services matching this label selector (e.g. app=web).
    #[arg(long, env = "LB_KUBE_SERVICE_SELECTOR")]
    kube_service_selector: Option<String>,
    /// The spec.loadBalancerClass this agent serves.
    #[arg(long, env = "LB_LOAD_BALANCER_CLASS", default_value = lb_agent::k8s::desired::DEFAULT_CLASS)]
    load_balancer_class: String,
    /// Also serve Services of type LoadBalancer that set no loadBalancerClass.
    #[arg(long, env = "LB_KUBE_DEFAULT_CLASS")]
    kube_default_class: bool,
    /// This LB host's name in Service conditions and Events (default: the hostname).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

/// The Kubernetes source, when asked for.
fn kube_options(cli: &RunArgs) -> Option<agent::KubeOptions> {
    if !cli.kubernetes && cli.kubeconfig.is_none() {
        return None;
    }
    let host = cli
        .node_name
        .clone()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()));
    Some(agent::KubeOptions {
        kubeconfig: cli.kubeconfig.clone(),
        watch: lb_agent::k8s::watch::WatchOptions {
            namespace: cli.kube_namespace.clone(),
            service_selector: cli.kube_service_selector.clone(),
            selection: lb_agent::k8s::objects::Selection {
                class: cli.load_balancer_class.clone(),
                default_class: cli.kube_default_class,
            },
        },
        host: host.unwrap_or_else(|| "lb".into()),
    })
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.run.log))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Cleanup { iface, pin_root }) => rt.block_on(agent::cleanup(&iface, &pin_root)),
        Some(Command::Status(args)) => return lb_agent::cli::finish(lb_agent::cli::status::run(&args)),
        Some(Command::Explain(args)) => return lb_agent::cli::finish(lb_agent::cli::explain::run(&args)),
        Some(Command::Top(args)) => return lb_agent::cli::finish(lb_agent::cli::top::run(&args)),
        None => {
            let positions = |id: &str, values: &[String]| -> Vec<(usize, String)> {
                matches.indices_of(id).map(|ix| ix.zip(values.iter().cloned()).collect()).unwrap_or_default()
            };
            let opts =
                match options(&cli.run, positions("vips", &cli.run.vips), positions("backends", &cli.run.backends)) {
                    Ok(o) => o,
                    Err(e) => return usage(&e),
                };
            rt.block_on(agent::run(opts))
        }
    };
    finish(result)
}

fn finish(result: Result<(), AgentError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Usage(e)) => usage(&e),
        Err(e) => {
            eprintln!(
                "lb-agent: {}",
                anyhow::Error::from(e).chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
            );
            ExitCode::FAILURE
        }
    }
}

/// Help and version print as usual; a bad flag is one line and exit code 64.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap's message up to its first blank line, as one line (it names the argument).
    let text = e.to_string();
    let line: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    usage(&line.join(" ").trim_start_matches("error: "))
}

fn usage(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("lb-agent: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// Parses and validates everything the flags and the config file say.
fn options(
    cli: &RunArgs,
    vips: Vec<(usize, String)>,
    backends: Vec<(usize, String)>,
) -> Result<RunOptions, ConfigError> {
    let kube = kube_options(cli);
    if kube.is_some() && (!vips.is_empty() || cli.config.is_some()) {
        let flag = if vips.is_empty() { "--config" } else { "--vip" };
        return Err(FieldError::new(flag, "", Problem::WithKubernetes).into());
    }
    let flag_vips = config::group_flags(&vips, &backends)?;
    let file = cli.config.as_deref().map(config::read_file).transpose()?;
    let config = config::build(cli.iface.clone(), cli.xdp_mode, flag_vips.clone(), file.as_ref())?;
    if lb_common::table_class(cli.table_size).is_none() {
        return Err(FieldError::new("--table-size", cli.table_size.to_string(), Problem::TableSize).into());
    }
    for (flag, v) in
        [("--max-vips", cli.max_vips), ("--max-backends", cli.max_backends), ("--max-flows", cli.max_flows)]
    {
        if v == 0 {
            return Err(FieldError::new(flag, "0", Problem::Zero).into());
        }
    }
    if cli.max_vips > 1 << 20 {
        return Err(FieldError::new("--max-vips", cli.max_vips.to_string(), Problem::TooLarge).into());
    }
    for (flag, d) in [("--ramp-interval", cli.ramp_interval), ("--flow-idle-timeout", cli.flow_idle_timeout)] {
        if d.is_zero() {
            return Err(FieldError::new(flag, "0", Problem::Duration).into());
        }
    }
    let load = LoadOptions {
        table_size: cli.table_size,
        max_vips: cli.max_vips,
        max_backends: cli.max_backends,
        max_flows: cli.max_flows,
        hash_seed: cli.hash_seed,
        lb_mac: [0; 6],
        flow_idle_ns: cli.flow_idle_timeout.as_nanos().min(u64::MAX as u128) as u64,
    };
    Ok(RunOptions {
        config,
        config_path: cli.config.clone(),
        flag_vips,
        load,
        pin_root: cli.pin_root.clone(),
        ramp: RampPolicy { step: cli.ramp_step, interval: cli.ramp_interval },
        drain: DrainPolicy { min_drain: cli.drain_min.unwrap_or(cli.flow_idle_timeout), timeout: cli.drain_timeout },
        flow_idle: cli.flow_idle_timeout,
        metrics_addr: cli.metrics_addr.0,
        kube,
    })
}
