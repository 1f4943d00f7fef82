//! Loading the XDP object, attaching it, and taking its maps.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    Backend, Counter, FlowKey, FlowValue, VipKey, VipMeta, ALL_MAPS, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE, MAP_BACKENDS, MAP_BACKEND_STATS, MAP_FLOWS,
    MAP_REASONS, MAP_TABLES, MAP_VIPS, MAP_VIP_STATS, TABLE_HALVES,
};

use crate::config::XdpModeChoice;
use crate::tables::TableMem;

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// The balancer program and the pass-through program in the object.
pub const PROG_LB: &str = "lb_xdp";
pub const PROG_PASS: &str = "xdp_pass";

/// Load-time settings: map sizes and the program's globals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub table_size: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub hash_seed: u32,
    /// Source MAC of forwarded frames (the interface's own).
    pub lb_mac: [u8; 6],
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            table_size: DEFAULT_TABLE_SIZE,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_flows: DEFAULT_MAX_FLOWS,
            hash_seed: 0,
            lb_mac: [0; 6],
        }
    }
}

impl LoadOptions {
    pub fn table_entries(&self) -> u32 {
        self.max_vips * TABLE_HALVES * self.table_size
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning map {name} at {path}: {source}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("preparing pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("memory-mapping TABLES: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("attaching XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The maps, typed.
pub struct Maps {
    pub vips: HashMap<MapData, VipKey, VipMeta>,
    pub backends: Array<MapData, Backend>,
    pub tables: TableMem,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub reasons: PerCpuArray<MapData, Counter>,
    pub vip_stats: PerCpuArray<MapData, Counter>,
    pub backend_stats: PerCpuArray<MapData, Counter>,
}

/// A loaded (not necessarily attached) balancer.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub opts: LoadOptions,
}

/// Loads and verifies both programs, sizes the maps, and pins them under `pin_dir`
/// (replacing earlier pins) when given.
pub fn load(opts: &LoadOptions, pin_dir: Option<&Path>) -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .override_global("HASH_SEED", &opts.hash_seed, true)
        .override_global("TABLE_SIZE", &opts.table_size, true)
        .override_global("LB_MAC", &opts.lb_mac, true)
        .map_max_entries(MAP_VIPS, opts.max_vips)
        .map_max_entries(MAP_VIP_STATS, opts.max_vips)
        .map_max_entries(MAP_BACKENDS, opts.max_backends)
        .map_max_entries(MAP_BACKEND_STATS, opts.max_backends)
        .map_max_entries(MAP_FLOWS, opts.max_flows)
        .map_max_entries(MAP_TABLES, opts.table_entries())
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;
    for name in [PROG_LB, PROG_PASS] {
        xdp_mut(&mut ebpf, name)?.load().map_err(|source| LoadError::Program { name, source })?;
    }
    if let Some(dir) = pin_dir {
        prepare_pin_dir(dir)?;
    }
    let maps = take_maps(&mut ebpf, pin_dir, opts)?;
    Ok(Loaded { ebpf, maps, opts: opts.clone() })
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoadError> {
    let prog = ebpf.program_mut(name).ok_or(LoadError::MissingProgram { name })?;
    prog.try_into().map_err(|source| LoadError::Program { name, source })
}

fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let err = |source| LoadError::PinDir { path: dir.into(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    for name in ALL_MAPS {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
    }
    Ok(())
}

fn take(ebpf: &mut Ebpf, name: &'static str, pin_dir: Option<&Path>) -> Result<Map, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap { name })?;
    if let Some(dir) = pin_dir {
        let path = dir.join(name);
        map.pin(&path).map_err(|source| LoadError::Pin { name, path, source })?;
    }
    Ok(map)
}

fn take_maps(ebpf: &mut Ebpf, pin: Option<&Path>, opts: &LoadOptions) -> Result<Maps, LoadError> {
    macro_rules! typed {
        ($name:expr) => {
            take(ebpf, $name, pin)?.try_into().map_err(|source| LoadError::Map { name: $name, source })?
        };
    }
    let Map::Array(tables) = take(ebpf, MAP_TABLES, pin)? else {
        return Err(LoadError::MissingMap { name: MAP_TABLES });
    };
    Ok(Maps {
        vips: typed!(MAP_VIPS),
        backends: typed!(MAP_BACKENDS),
        tables: TableMem::map(tables, opts.table_entries(), opts.table_size).map_err(LoadError::Mmap)?,
        flows: typed!(MAP_FLOWS),
        reasons: typed!(MAP_REASONS),
        vip_stats: typed!(MAP_VIP_STATS),
        backend_stats: typed!(MAP_BACKEND_STATS),
    })
}

/// One of the object's programs (for BPF_PROG_TEST_RUN).
pub fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, LoadError> {
    let prog = ebpf.program(name).ok_or(LoadError::MissingProgram { name })?;
    prog.try_into().map_err(|source| LoadError::Program { name, source })
}

impl Loaded {
    /// Attaches the balancer to `iface`. `Auto` tries native XDP and falls back to
    /// generic (skb) mode, logging why. Returns the mode in use.
    pub fn attach(&mut self, iface: &str, mode: XdpModeChoice) -> Result<XdpMode, LoadError> {
        attach_program(&mut self.ebpf, PROG_LB, iface, mode)
    }
}

/// Attaches one of the object's programs to `iface`.
pub fn attach_program(ebpf: &mut Ebpf, name: &'static str, iface: &str, mode: XdpModeChoice) -> Result<XdpMode, LoadError> {
    let prog = xdp_mut(ebpf, name)?;
    let try_mode = |prog: &mut Xdp, mode: XdpMode, label: &'static str| {
        prog.attach(iface, mode).map(|_| mode).map_err(|source| LoadError::Attach { iface: iface.into(), mode: label, source })
    };
    match mode {
        XdpModeChoice::Native => try_mode(prog, XdpMode::Driver, "native"),
        XdpModeChoice::Generic => try_mode(prog, XdpMode::Skb, "generic"),
        XdpModeChoice::Auto => match try_mode(prog, XdpMode::Driver, "native") {
            Ok(m) => Ok(m),
            Err(e) => {
                tracing::warn!(iface, error = %e, "native XDP refused; falling back to generic (skb) mode");
                try_mode(prog, XdpMode::Skb, "generic")
            }
        },
    }
}
