//! Loading the XDP object, attaching it, and taking its maps.

use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use lb_common::{
    AddrKey, Backend, Counter, FlowKey, FlowValue, Meta, SrcRangeKey, Traffic, VipKey, VipMeta, ABI_VERSION, ALL_MAPS,
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_FLOWS, MAP_FLOWS_NEW, MAP_META, MAP_REASONS, MAP_SRC_RANGES, MAP_TABLES,
    MAP_VIPS, MAP_VIP_ADDRS, MAP_VIP_FILTER, MAP_VIP_STATS,
};

use crate::config::XdpModeChoice;
use crate::dataplane::xdp::tables::{self, TableMem};

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// The balancer program and the pass-through program in the object.
pub const PROG_LB: &str = "lb_xdp";
pub const PROG_PASS: &str = "xdp_pass";

pub mod link;
pub use link::attach_pinned;
mod options;
pub use options::LoadOptions;

/// Where an agent pins its maps: `<pin_dir>/maps-v<ABI>/`.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("maps-v{ABI_VERSION}"))
}

/// Where an agent pins its XDP link: `<pin_dir>/link`.
pub fn link_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join("link")
}

/// What became of the maps pinned by an earlier agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapsOrigin {
    /// Nothing was pinned: new maps.
    Fresh,
    /// Pinned maps of the same ABI and settings: reused with their contents.
    Adopted,
    /// Pinned maps that cannot be reused (other settings, or unreadable): replaced.
    Replaced { found: Option<Meta> },
}

/// Reads `META` of pinned maps, if there are any.
pub fn read_pinned_meta(dir: &Path) -> Result<Option<Meta>, LoadError> {
    let path = dir.join(MAP_META);
    if !path.exists() {
        return Ok(None);
    }
    let map = crate::dataplane::xdp::pins::open_read_only(&path)
        .map_err(|source| LoadError::Map { name: MAP_META, source })?;
    let meta: Array<MapData, Meta> =
        Map::Array(map).try_into().map_err(|source| LoadError::Map { name: MAP_META, source })?;
    meta.get(&0, 0).map(Some).map_err(|source| LoadError::Map { name: MAP_META, source })
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
    #[error("pinning the XDP link at {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("XDP link: {0}")]
    Link(#[source] aya::programs::links::LinkError),
    #[error("preparing pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    pub flows_new: crate::dataplane::xdp::pins::NewPins,
    pub vip_addrs: HashMap<MapData, AddrKey, u32>,
    pub vip_filter: Array<MapData, u64>,
    pub src_ranges: LpmTrie<MapData, SrcRangeKey, u32>,
    pub reasons: PerCpuArray<MapData, Counter>,
    pub vip_stats: PerCpuArray<MapData, Traffic>,
    pub backend_stats: PerCpuArray<MapData, Traffic>,
    pub meta: Array<MapData, Meta>,
}

impl Maps {
    /// Opens the maps an agent pinned under `pin_dir` (works while no agent runs) for
    /// readers (`status`, `explain`, `top`, `/metrics`, `cleanup`), which only look: read-only
    /// descriptors, on which the kernel refuses every write. `TABLES` and `FLOWS_NEW` are
    /// the exception: they are read through memory mappings, and the kernel maps a BPF map
    /// only through a writable descriptor (a read-only file loses `VM_SHARED`, which
    /// `bpf_map_mmap` requires); they are mapped `PROT_READ`.
    pub fn from_pinned(pin_dir: &Path) -> Result<(Maps, Meta), LoadError> {
        Self::open_pinned(pin_dir, false)
    }

    /// The same, writable: for an agent taking over maps it is about to replace (it
    /// reads them as a data plane, which keeps its address book in them).
    pub fn from_pinned_writable(pin_dir: &Path) -> Result<(Maps, Meta), LoadError> {
        Self::open_pinned(pin_dir, true)
    }

    fn open_pinned(pin_dir: &Path, writable: bool) -> Result<(Maps, Meta), LoadError> {
        let dir = maps_dir(pin_dir);
        let meta = read_pinned_meta(&dir)?.ok_or(LoadError::MissingMap { name: MAP_META })?;
        let open = |name: &'static str| {
            let path = dir.join(name);
            let map =
                if writable { MapData::from_pin(&path) } else { crate::dataplane::xdp::pins::open_read_only(&path) };
            map.map_err(|source| LoadError::Map { name, source })
        };
        let open_for_mmap =
            |name: &'static str| MapData::from_pin(dir.join(name)).map_err(|source| LoadError::Map { name, source });
        macro_rules! typed {
            ($variant:ident, $name:expr) => {
                Map::$variant(open($name)?).try_into().map_err(|source| LoadError::Map { name: $name, source })?
            };
        }
        let opts = LoadOptions {
            table_size: meta.table_size,
            max_vips: meta.max_vips,
            max_backends: meta.max_backends,
            max_flows: meta.max_flows,
            hash_seed: meta.hash_seed,
            lb_mac: [0; 6],
            flow_idle_ns: 0,
        };
        let maps = Maps {
            vips: typed!(HashMap, MAP_VIPS),
            backends: typed!(Array, MAP_BACKENDS),
            tables: TableMem::new(
                MAP_TABLES.iter().map(|name| open(name)).collect::<Result<_, _>>()?,
                Some(tables::pin_dir(&dir)),
                writable,
            ),
            flows: typed!(LruHashMap, MAP_FLOWS),
            flows_new: crate::dataplane::xdp::pins::NewPins::new(open_for_mmap(MAP_FLOWS_NEW)?, opts.new_flows()),
            vip_addrs: typed!(HashMap, MAP_VIP_ADDRS),
            vip_filter: typed!(Array, MAP_VIP_FILTER),
            src_ranges: typed!(LpmTrie, MAP_SRC_RANGES),
            reasons: typed!(PerCpuArray, MAP_REASONS),
            vip_stats: typed!(PerCpuArray, MAP_VIP_STATS),
            backend_stats: typed!(PerCpuArray, MAP_BACKEND_STATS),
            meta: typed!(Array, MAP_META),
        };
        Ok((maps, meta))
    }
}

/// A loaded (not necessarily attached) balancer.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub opts: LoadOptions,
    /// The program's rare log records (`crate::kernel_log::spawn` reads them).
    pub logger: Option<aya_log::EbpfLogger<crate::kernel_log::KernelLog>>,
}

/// Loads the programs over maps pinned under `maps_dir(pin_dir)`: pinned maps written
/// with the same ABI and settings are adopted with their contents; otherwise they are
/// replaced by new ones (and pinned there).
pub fn load_pinned(opts: &LoadOptions, pin_dir: &Path) -> Result<(Loaded, MapsOrigin), LoadError> {
    let dir = maps_dir(pin_dir);
    let origin = match read_pinned_meta(&dir) {
        Ok(Some(m)) if m == opts.meta() => MapsOrigin::Adopted,
        Ok(None) => MapsOrigin::Fresh,
        Ok(found) => MapsOrigin::Replaced { found },
        Err(e) => {
            tracing::warn!(error = %e, "pinned maps unreadable; replacing them");
            MapsOrigin::Replaced { found: None }
        }
    };
    if origin != MapsOrigin::Adopted {
        prepare_pin_dir(&dir)?;
    }
    let mut loaded = load_with(opts, Some(&dir))?;
    if origin != MapsOrigin::Adopted {
        loaded.maps.meta.set(0, opts.meta(), 0).map_err(|source| LoadError::Map { name: MAP_META, source })?;
    }
    Ok((loaded, origin))
}

/// Loads and verifies both programs with new, unpinned maps (tests, benchmarks).
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    load_with(opts, None)
}

fn load_with(opts: &LoadOptions, pin_dir: Option<&Path>) -> Result<Loaded, LoadError> {
    let mut loader = EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in ALL_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader
        .override_global("HASH_SEED", &opts.hash_seed, true)
        .override_global("LB_MAC", &opts.lb_mac, true)
        .override_global("FLOW_IDLE_NS", &opts.flow_idle_ns, true)
        .override_global("NEW_MASK", &(opts.new_flows() - 1), true)
        .map_max_entries(MAP_VIPS, opts.max_vips)
        .map_max_entries(MAP_VIP_STATS, opts.max_vips)
        .map_max_entries(MAP_BACKENDS, opts.max_backends)
        .map_max_entries(MAP_BACKEND_STATS, opts.max_backends)
        .map_max_entries(MAP_FLOWS, opts.max_flows)
        .map_max_entries(MAP_FLOWS_NEW, opts.new_flows())
        .map_max_entries(MAP_VIP_ADDRS, opts.max_vips)
        .map_max_entries(MAP_TABLES[0], opts.table_maps())
        .map_max_entries(MAP_TABLES[1], opts.table_maps())
        .map_max_entries(MAP_TABLES[2], opts.table_maps())
        .map_max_entries(MAP_TABLES[3], opts.table_maps())
        .load(EBPF_OBJECT)
        .map_err(LoadError::Load)?;
    // Before the programs load: they reference the log map.
    let logger = match aya_log::EbpfLogger::init_with_logger(&mut ebpf, crate::kernel_log::KernelLog) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "kernel log unavailable; kernel-side events are not logged");
            None
        }
    };
    for name in [PROG_LB, PROG_PASS] {
        xdp_mut(&mut ebpf, name)?.load().map_err(|source| LoadError::Program { name, source })?;
    }
    let maps = take_maps(&mut ebpf, opts, pin_dir)?;
    Ok(Loaded { ebpf, maps, opts: opts.clone(), logger })
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
    // The table maps of the maps being replaced (they live on while the old program
    // holds them, until the new one takes the link).
    match std::fs::remove_dir_all(tables::pin_dir(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    Ok(())
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap { name })
}

fn take_maps(ebpf: &mut Ebpf, opts: &LoadOptions, pin_dir: Option<&Path>) -> Result<Maps, LoadError> {
    macro_rules! typed {
        ($name:expr) => {
            take(ebpf, $name)?.try_into().map_err(|source| LoadError::Map { name: $name, source })?
        };
    }
    let mut tables = Vec::new();
    for name in MAP_TABLES {
        let Map::ArrayOfMaps(t) = take(ebpf, name)? else { return Err(LoadError::MissingMap { name }) };
        tables.push(t);
    }
    let Map::Array(flows_new) = take(ebpf, MAP_FLOWS_NEW)? else {
        return Err(LoadError::MissingMap { name: MAP_FLOWS_NEW });
    };
    Ok(Maps {
        vips: typed!(MAP_VIPS),
        backends: typed!(MAP_BACKENDS),
        tables: TableMem::new(tables, pin_dir.map(tables::pin_dir), true),
        flows: typed!(MAP_FLOWS),
        flows_new: crate::dataplane::xdp::pins::NewPins::new(flows_new, opts.new_flows()),
        vip_addrs: typed!(MAP_VIP_ADDRS),
        vip_filter: typed!(MAP_VIP_FILTER),
        src_ranges: typed!(MAP_SRC_RANGES),
        reasons: typed!(MAP_REASONS),
        vip_stats: typed!(MAP_VIP_STATS),
        backend_stats: typed!(MAP_BACKEND_STATS),
        meta: typed!(MAP_META),
    })
}

/// One of the object's programs (for BPF_PROG_TEST_RUN).
pub fn program<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, LoadError> {
    let prog = ebpf.program(name).ok_or(LoadError::MissingProgram { name })?;
    prog.try_into().map_err(|source| LoadError::Program { name, source })
}

/// How the program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new attachment in this mode, pinned.
    New(XdpMode),
    /// The pinned link of an earlier agent now runs this program (atomic replace).
    Replaced,
}

impl Loaded {
    /// Attaches the balancer to `iface` through a pinned link: if an earlier agent left
    /// one on this interface, the new program replaces the old one in it atomically
    /// (traffic never stops); otherwise a new link is created and pinned, so it outlives
    /// this process. A pinned link that is not on `iface` any more (the interface was
    /// deleted, or renamed and another took its name) is unpinned and replaced, logged.
    pub fn attach_pinned(&mut self, iface: &str, mode: XdpModeChoice, pin_dir: &Path) -> Result<Attachment, LoadError> {
        attach_pinned(&mut self.ebpf, iface, mode, pin_dir)
    }

    /// Attaches the balancer to `iface` for the life of this process (no pin). `Auto`
    /// tries native XDP and falls back to generic (skb) mode, logging why.
    pub fn attach(&mut self, iface: &str, mode: XdpModeChoice) -> Result<XdpMode, LoadError> {
        attach_program(&mut self.ebpf, PROG_LB, iface, mode).map(|(m, _)| m)
    }
}

/// Attaches one of the object's programs to `iface`.
pub fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpModeChoice,
) -> Result<(XdpMode, XdpLinkId), LoadError> {
    let prog = xdp_mut(ebpf, name)?;
    let try_mode = |prog: &mut Xdp, mode: XdpMode, label: &'static str| {
        prog.attach(iface, mode).map(|id| (mode, id)).map_err(|source| LoadError::Attach {
            iface: iface.into(),
            mode: label,
            source,
        })
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
