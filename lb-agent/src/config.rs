//! Typed configuration: flags and the config file are parsed into raw form, then
//! validated into a `Config` by pure functions. Every error names the flag or field.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{BackendSpec, Desired, Vip, VipSpec, VipSyntax, DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::ramp::RampPolicy;

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic with a log line saying why.
    #[default]
    Auto,
    Native,
    Generic,
}

/// What the agent runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub iface: String,
    pub xdp_mode: XdpModeChoice,
    pub desired: Desired,
}

/// One VIP as written (flag order or config file), before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawVip {
    /// Where it came from, for messages: `--vip` or `vip[2]`.
    pub origin: String,
    pub address: String,
    pub backends: Vec<RawBackend>,
    /// Optional per-VIP settings (config file only), as written.
    pub ramp_step: Option<String>,
    pub ramp_interval: Option<String>,
    pub session_affinity: Option<String>,
    pub affinity_timeout: Option<String>,
    /// Allowed client ranges (CIDRs), as written.
    pub source_ranges: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBackend {
    /// `--backend` or `vip[2].backend[0]`.
    pub origin: String,
    pub address: String,
    pub weight: Option<String>,
    pub start_progress: Option<String>,
    pub draining: bool,
}

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0}")]
    Vip(VipSyntax),
    #[error("not an IP address")]
    Address,
    #[error("weight must be a whole number from 0 to {MAX_WEIGHT}")]
    Weight,
    #[error("the same VIP is configured twice")]
    DuplicateVip,
    #[error("the same backend is listed twice for this VIP")]
    DuplicateBackend,
    #[error("an IPv{backend} backend cannot serve an IPv{vip} VIP (direct server return keeps the packet as it is)")]
    Family { vip: u8, backend: u8 },
    #[error("comes before any --vip (each --backend belongs to the --vip before it)")]
    Orphan,
    #[error("is required (or `iface` in the config file)")]
    Missing,
    #[error("must be a whole number of percent from {min} to 100")]
    Percent { min: u32 },
    #[error("must be a duration such as 500ms, 10s, 5m or 3h (a bare number is seconds)")]
    Duration,
    #[error("must be ClientIP or None")]
    Affinity,
    #[error("must be a CIDR such as 198.51.100.0/24 or 2001:db8::/32")]
    SourceRange,
    #[error("must be 256, 1024, 8192 or 65536 (the largest table a VIP gets; 65536 serves 655 backends a VIP at 1 % accuracy)")]
    TableSize,
    #[error("must be at least 1")]
    Zero,
    #[error("must be at most 1048576")]
    TooLarge,
    #[error("cannot be combined with --kubernetes / --kubeconfig (Kubernetes is then the only source)")]
    WithKubernetes,
    #[error("is a {0} address: a VIP must be a unicast address that clients reach")]
    UnusableVip(&'static str),
    #[error("is also the VIP's own address (a backend cannot be the VIP)")]
    BackendIsVip,
    #[error("no interface of that name")]
    NoSuchInterface,
    #[error("{0}")]
    InterfaceName(&'static str),
    #[error("is not on a subnet of interface {iface} (direct server return needs backends on the same L2 segment)")]
    OffLink { iface: String },
}

/// A configuration error: the flag or field, the value given, and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub value: String,
    pub problem: Problem,
}

impl FieldError {
    pub fn new(field: impl Into<String>, value: impl Into<String>, problem: Problem) -> Self {
        FieldError { field: field.into(), value: value.into(), problem }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Syntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Field(#[from] FieldError),
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iface: Option<String>,
    pub xdp_mode: Option<XdpModeChoice>,
    #[serde(default)]
    pub vip: Vec<FileVip>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVip {
    pub address: String,
    #[serde(default)]
    pub backend: Vec<FileBackend>,
    pub ramp_step: Option<toml::Value>,
    pub ramp_interval: Option<toml::Value>,
    pub session_affinity: Option<toml::Value>,
    pub affinity_timeout: Option<toml::Value>,
    #[serde(default)]
    pub source_ranges: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub address: String,
    pub weight: Option<toml::Value>,
    pub start_progress: Option<toml::Value>,
    #[serde(default)]
    pub draining: bool,
}

/// A TOML scalar as the text a user would have written.
fn text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads a config file into raw VIPs (validation happens in `validate_vips`).
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|source| ConfigError::Syntax { path: path.into(), source })
}

impl FileConfig {
    pub fn raw_vips(&self) -> Vec<RawVip> {
        self.vip
            .iter()
            .enumerate()
            .map(|(i, v)| RawVip {
                origin: format!("vip[{i}].address"),
                address: v.address.clone(),
                backends: v
                    .backend
                    .iter()
                    .enumerate()
                    .map(|(j, b)| RawBackend {
                        origin: format!("vip[{i}].backend[{j}]"),
                        address: b.address.clone(),
                        weight: b.weight.as_ref().map(text),
                        start_progress: b.start_progress.as_ref().map(text),
                        draining: b.draining,
                    })
                    .collect(),
                ramp_step: v.ramp_step.as_ref().map(text),
                ramp_interval: v.ramp_interval.as_ref().map(text),
                session_affinity: v.session_affinity.as_ref().map(text),
                affinity_timeout: v.affinity_timeout.as_ref().map(text),
                source_ranges: v.source_ranges.clone(),
            })
            .collect()
    }
}

/// Groups `--vip` and `--backend` values by their position on the command line: each
/// backend belongs to the VIP before it. `vips`/`backends` carry (index, value).
pub fn group_flags(vips: &[(usize, String)], backends: &[(usize, String)]) -> Result<Vec<RawVip>, FieldError> {
    let mut out: Vec<(usize, RawVip)> = vips
        .iter()
        .map(|(i, v)| (*i, RawVip { origin: "--vip".into(), address: v.clone(), ..RawVip::default() }))
        .collect();
    for (pos, b) in backends {
        let owner = out.iter_mut().rev().find(|(i, _)| i < pos);
        let Some((_, vip)) = owner else {
            return Err(FieldError::new("--backend", b, Problem::Orphan));
        };
        let (address, weight) = match b.split_once('=') {
            Some((a, w)) => (a.to_string(), Some(w.to_string())),
            None => (b.clone(), None),
        };
        vip.backends.push(RawBackend {
            origin: "--backend".into(),
            address,
            weight,
            start_progress: None,
            draining: false,
        });
    }
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// The per-VIP settings: ramp override and affinity.
fn vip_settings(raw: &RawVip) -> Result<(Option<RampPolicy>, u32), FieldError> {
    let field = |name: &str| raw.origin.replace(".address", &format!(".{name}"));
    let default = RampPolicy::default();
    let step = match &raw.ramp_step {
        None => None,
        Some(s) => match s.trim().parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Some(n),
            _ => return Err(FieldError::new(field("ramp_step"), s, Problem::Percent { min: 1 })),
        },
    };
    let interval = match &raw.ramp_interval {
        None => None,
        Some(s) => match parse_duration(s) {
            Some(d) if !d.is_zero() => Some(d),
            _ => return Err(FieldError::new(field("ramp_interval"), s, Problem::Duration)),
        },
    };
    let ramp = (step.is_some() || interval.is_some())
        .then(|| RampPolicy { step: step.unwrap_or(default.step), interval: interval.unwrap_or(default.interval) });
    let affinity = match raw.session_affinity.as_deref().map(str::trim) {
        None | Some("None") => false,
        Some("ClientIP") => true,
        Some(other) => return Err(FieldError::new(field("session_affinity"), other, Problem::Affinity)),
    };
    let timeout = match (&raw.affinity_timeout, affinity) {
        (_, false) => 0,
        (None, true) => DEFAULT_AFFINITY_TIMEOUT_S,
        (Some(s), true) => match parse_duration(s) {
            Some(d) if d.as_secs() >= 1 && d.as_secs() <= u32::MAX as u64 => d.as_secs() as u32,
            _ => return Err(FieldError::new(field("affinity_timeout"), s, Problem::Duration)),
        },
    };
    Ok((ramp, timeout))
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Validates one VIP and its backends.
pub fn validate_vip(raw: &RawVip) -> Result<(Vip, VipSpec), FieldError> {
    let vip: Vip =
        raw.address.trim().parse().map_err(|e| FieldError::new(&raw.origin, &raw.address, Problem::Vip(e)))?;
    if let Some(kind) = values::unusable_vip(vip.addr) {
        return Err(FieldError::new(&raw.origin, &raw.address, Problem::UnusableVip(kind)));
    }
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(raw.backends.len());
    for b in &raw.backends {
        let shown = match &b.weight {
            Some(w) => format!("{}={w}", b.address),
            None => b.address.clone(),
        };
        let addr: IpAddr =
            b.address.trim().parse().map_err(|_| FieldError::new(&b.origin, &shown, Problem::Address))?;
        let weight = match &b.weight {
            None => DEFAULT_WEIGHT,
            Some(w) => match w.trim().parse::<u32>() {
                Ok(w) if w <= MAX_WEIGHT => w,
                _ => return Err(FieldError::new(&b.origin, &shown, Problem::Weight)),
            },
        };
        if addr.is_ipv4() != vip.addr.is_ipv4() {
            let fam = |a: IpAddr| if a.is_ipv4() { 4 } else { 6 };
            return Err(FieldError::new(&b.origin, &shown, Problem::Family { vip: fam(vip.addr), backend: fam(addr) }));
        }
        if backends.iter().any(|x| x.addr == addr) {
            return Err(FieldError::new(&b.origin, &shown, Problem::DuplicateBackend));
        }
        if addr == vip.addr {
            return Err(FieldError::new(&b.origin, &shown, Problem::BackendIsVip));
        }
        let start_progress = match &b.start_progress {
            None => None,
            Some(p) => match p.trim().parse::<u32>() {
                Ok(n) if n <= 100 => Some(n),
                _ => {
                    return Err(FieldError::new(format!("{}.start_progress", b.origin), p, Problem::Percent { min: 0 }))
                }
            },
        };
        backends.push(BackendSpec { addr, weight, start_progress, draining: b.draining });
    }
    let (ramp, affinity_timeout_s) = vip_settings(raw)?;
    let field = raw.origin.replace(".address", ".source_ranges");
    let source_ranges = parse_source_ranges(&field, &raw.source_ranges)?;
    Ok((vip, VipSpec { backends, ramp, affinity_timeout_s, source_ranges }))
}

/// Validates every VIP. Returns the valid ones and an error for each invalid one, so
/// that one bad VIP never takes the others down (a reload applies the valid ones).
pub fn validate_vips(raw: &[RawVip]) -> (Desired, Vec<FieldError>) {
    let mut vips = BTreeMap::new();
    let mut errors = Vec::new();
    for r in raw {
        match validate_vip(r) {
            Ok((vip, spec)) => match vips.entry(vip) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    errors.push(FieldError::new(&r.origin, &r.address, Problem::DuplicateVip))
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(spec);
                }
            },
            Err(e) => errors.push(e),
        }
    }
    (Desired { vips }, errors)
}

/// Builds the startup config: flags win over the file; any error is fatal at startup.
pub fn build(
    iface_flag: Option<String>,
    mode_flag: Option<XdpModeChoice>,
    flag_vips: Vec<RawVip>,
    file: Option<&FileConfig>,
) -> Result<Config, FieldError> {
    let iface = iface_flag
        .or_else(|| file.and_then(|f| f.iface.clone()))
        .ok_or_else(|| FieldError::new("--iface", "", Problem::Missing))?;
    let xdp_mode = mode_flag.or_else(|| file.and_then(|f| f.xdp_mode)).unwrap_or_default();
    let mut raw = flag_vips;
    if let Some(f) = file {
        raw.extend(f.raw_vips());
    }
    let (desired, mut errors) = validate_vips(&raw);
    if !errors.is_empty() {
        return Err(errors.remove(0));
    }
    Ok(Config { iface, xdp_mode, desired })
}

mod values;
pub use values::{parse_duration, parse_source_ranges, unusable_vip};

#[cfg(test)]
mod tests;
