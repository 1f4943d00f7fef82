//! Read-only commands over the pinned maps: `status`, `explain` and `top`. They work
//! whether or not an agent runs (the maps outlive it), and never change anything.

pub mod explain;
pub mod status;
mod table;
pub mod top;

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aya::maps::MapError;
use lb_common::{Meta, MAP_META};

use crate::config::parse_duration;
use crate::dataplane::xdp::loader::{maps_dir, LoadError, Maps};
use crate::dataplane::xdp::read::{inspect, Inspection};

/// The JSON document `status -o json` prints, for programs that read it back
/// (`text.parse::<StatusJson>()`, then index it: `doc["vips"][0]["vip"]`).
pub use serde_json::Value as StatusJson;

/// EX_USAGE: bad arguments, or nothing pinned where the arguments point.
const EXIT_USAGE: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: one line, exit code 64.
    #[error("{arg} {value:?}: {problem}")]
    Argument { arg: &'static str, value: String, problem: String },
    #[error("no pinned maps at {path} (no agent has run on this interface; check --iface and --pin-root)")]
    NotPinned { path: PathBuf },
    #[error("opening the pinned maps at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    #[error("reading the maps at {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("writing JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// Bad input (exit code 64) rather than a failure.
    pub fn is_usage(&self) -> bool {
        matches!(self, CliError::Argument { .. } | CliError::NotPinned { .. })
    }
}

/// Prints an error as one line `lb-agent: ...` and picks the exit code. A closed pipe
/// (`lb-agent top | head`) is a normal end.
pub fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-agent: {e}");
            if e.is_usage() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Where to find the pins: `<pin_root>/<iface>/`.
#[derive(clap::Args, Debug, Clone)]
pub struct PinArgs {
    /// Interface the balancer runs (or ran) on.
    #[arg(long, env = "LB_IFACE")]
    pub iface: Option<String>,
    /// Root of the pins (bpffs): the maps are under <PIN_ROOT>/<IFACE>/maps-v<ABI>/.
    #[arg(long, env = "LB_PIN_ROOT", default_value = "/sys/fs/bpf/lb")]
    pub pin_root: PathBuf,
}

impl PinArgs {
    /// The interface (required; checked here so that its absence is one clear line). It
    /// becomes a path component under `--pin-root`, so it must be a name the kernel could
    /// give an interface: `..` or `a/b` would point elsewhere.
    pub fn iface(&self) -> Result<&str, CliError> {
        let name = self.iface.as_deref().filter(|i| !i.is_empty()).ok_or_else(|| CliError::Argument {
            arg: "--iface",
            value: String::new(),
            problem: "is required (or set LB_IFACE)".into(),
        })?;
        check_iface_name(name).map_err(|problem| CliError::Argument {
            arg: "--iface",
            value: name.into(),
            problem: problem.into(),
        })?;
        Ok(name)
    }

    pub fn pin_dir(&self) -> Result<PathBuf, CliError> {
        Ok(self.pin_root.join(self.iface()?))
    }

    /// Opens the pinned maps; a missing pin directory names the path it looked at.
    pub fn open(&self) -> Result<(Maps, Meta), CliError> {
        let pin_dir = self.pin_dir()?;
        for path in [pin_dir.clone(), maps_dir(&pin_dir).join(MAP_META)] {
            match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(CliError::NotPinned { path }),
                _ => {}
            }
        }
        Maps::from_pinned(&pin_dir).map_err(|e| CliError::Open { path: pin_dir, source: Box::new(e) })
    }

    /// Opens the maps and reads them.
    pub fn inspect(&self, flow_idle: Duration) -> Result<Inspection, CliError> {
        let (maps, meta) = self.open()?;
        inspect(&maps, &meta, flow_idle).map_err(|source| self.read_error(source))
    }

    pub fn read_error(&self, source: MapError) -> CliError {
        CliError::Read { path: self.pin_dir().unwrap_or_else(|_| self.pin_root.clone()), source }
    }
}

/// Whether `name` is one the kernel accepts for an interface (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL. The interface name is joined to
/// the pin root to make a path that `cleanup` removes, so anything else is refused before
/// any path is built.
pub fn check_iface_name(name: &str) -> Result<(), &'static str> {
    const RULE: &str = "is not an interface name (1 to 15 bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL)";
    // The kernel's isspace(): ASCII whitespace, vertical tab, and Latin-1's 0xa0.
    let bad_byte = |b: &u8| matches!(b, b'/' | b':' | b'\0' | 0x0b | 0xa0) || b.is_ascii_whitespace();
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." || name.bytes().any(|b| bad_byte(&b)) {
        return Err(RULE);
    }
    Ok(())
}

/// Value parser: a duration above zero (`500ms`, `10s`, `5m`, `3h`).
pub fn duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err("must be a duration above 0 such as 500ms, 10s, 5m or 3h".into()),
    }
}

/// Writes `text` to stdout (errors typed, so a closed pipe ends quietly).
fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Output)
}

/// `1.5 MiB`-style byte counts (exact below 1 KiB).
fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024.0 {
        return format!("{n:.0} B");
    }
    let mut v = n / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// Seconds as the shortest of `90s`, `5m`, `3h`.
fn human_secs(s: u64) -> String {
    match s {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_positive() {
        assert_eq!(duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
    }

    #[test]
    fn byte_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(human_secs(300), "5m");
        assert_eq!(human_secs(90), "90s");
    }

    #[test]
    fn missing_pins_name_the_path() {
        let args = PinArgs { iface: Some("nosuch0".into()), pin_root: "/nonexistent/lb".into() };
        let e = args.open().err().expect("no pins there");
        assert!(e.is_usage());
        assert!(e.to_string().contains("/nonexistent/lb/nosuch0"), "{e}");
        let e = PinArgs { iface: None, ..args }.open().err().expect("no interface");
        assert_eq!(e.to_string(), "--iface \"\": is required (or set LB_IFACE)");
    }

    #[test]
    fn interface_names_are_what_the_kernel_accepts() {
        for good in ["eth0", "lo", "a", "veth-lb.100", "exactly15bytes_", "é"] {
            assert_eq!(check_iface_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "/", "eth0:1", "a b", "tab\t", "nl\n", "nul\0", "sixteen_bytes_xx"] {
            assert!(check_iface_name(bad).is_err(), "{bad:?} accepted");
        }
        let args = PinArgs { iface: Some("..".into()), pin_root: "/nonexistent/lb".into() };
        let e = args.open().err().expect("`..` refused");
        assert!(e.is_usage());
        assert!(e.to_string().starts_with("--iface \"..\": is not an interface name"), "{e}");
    }
}
