//! The VIPs' Maglev tables: one `BPF_F_MMAPABLE` array map per VIP (its two halves),
//! sized from the VIP's backends (`lb_common::table_size_for`, one of `TABLE_CLASSES`)
//! and held at `VipMeta::table` in the array of maps of its size (`TABLES_256` …
//! `TABLES_64K`). A VIP that does not exist costs no table memory, and a VIP with two
//! backends 4 KiB rather than the largest table.
//!
//! A table map is put into its array by [`TableMem::commit`], in one batch for all the
//! VIPs of an apply: the kernel waits for an RCU grace period (milliseconds) after each
//! update of an array of maps, once per call.
//!
//! The agent reads and writes slots through a shared memory mapping of the VIP's map
//! (plain loads and stores instead of a syscall a slot), mapped only while in use, so
//! the agent's resident memory does not hold every table.
//!
//! With a pin directory every table map is pinned there too (`TABLE_MAPS/<index>`): a
//! restarted agent and the readers (`status`, `explain`, `top`) open a VIP's table by
//! its pin, because reaching an inner map through the outer one (by map id) needs
//! `CAP_SYS_ADMIN`, which the agent does not have.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, MapError};
use lb_common::{table_class, table_index, TableEntry, VipMeta, TABLE_CLASSES, TABLE_HALVES};

const ENTRY: usize = std::mem::size_of::<TableEntry>();
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("creating a table map of {size} slots: {source}")]
    Create { size: u32, source: MapError },
    #[error("table map {index}: {source}")]
    Map { index: u32, source: MapError },
    #[error("table map {index} holds {found} entries, not the {want} of its VIP's table size")]
    Size { index: u32, found: u32, want: u32 },
    #[error("pinning table map {index} at {path}: {source}")]
    Pin { index: u32, path: PathBuf, source: std::io::Error },
    #[error("memory-mapping table map {index}: {source}")]
    Mmap { index: u32, source: std::io::Error },
    #[error("{size} slots is none of the table sizes")]
    Class { size: u32 },
    #[error("the tables are open read-only")]
    ReadOnly,
}

/// A place for a table map: (class, index in that class's array).
type Place = (usize, u32);

/// One VIP's table map, with its size (slots per half).
pub struct TableMap {
    map: MapData,
    size: u32,
}

pub struct TableMem {
    /// `TABLES_*`, the arrays of table maps, one per size (`TABLE_CLASSES`).
    outers: Vec<MapData>,
    vip_capacity: u32,
    /// Table maps replaced by a grown one or left by a removed VIP, with when: released
    /// a while later (`sweep`), once no packet can still be reading them by the VIP's
    /// old entry.
    retired: Vec<(Place, std::time::Instant)>,
    /// Table maps created and written but not in their array yet (`commit`).
    pending: Vec<Place>,
    /// What a released place holds: one empty table map of the array's size. (Deleting
    /// from an array of maps has no batch form, and each delete waits for an RCU grace
    /// period; replacing is batched. A packet reaches it only through a `VIPS` entry
    /// that is gone.)
    placeholders: [Option<MapData>; 4],
    /// Where the table maps are pinned (none for unpinned test loads).
    pins: Option<PathBuf>,
    /// Table maps this process created or opened (writers keep them; readers do not).
    open: Mutex<HashMap<u32, Arc<TableMap>>>,
    writable: bool,
}

/// Both halves of one table map, mapped for as long as this lives.
struct Window {
    ptr: *mut u64,
    entries: usize,
    len: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `TableMap::window` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl Window {
    fn slot(&self, index: u32) -> *mut u64 {
        assert!((index as usize) < self.entries, "table index {index} beyond the map ({} entries)", self.entries);
        // SAFETY: inside the mapping (checked); 8-byte entries from a page-aligned base.
        unsafe { self.ptr.add(index as usize) }
    }
    fn get(&self, index: u32) -> TableEntry {
        // SAFETY: see `slot`.
        let raw = unsafe { self.slot(index).read_volatile() };
        TableEntry { backend: raw as u32, prev: (raw >> 32) as u32 }
    }
    /// One 8-byte store: a packet reading the slot sees the old or the new entry.
    fn set(&self, index: u32, e: TableEntry) {
        // SAFETY: see `slot`.
        unsafe { self.slot(index).write_volatile(e.backend as u64 | ((e.prev as u64) << 32)) };
    }
}

impl TableMap {
    fn window(&self, index: u32, writable: bool) -> Result<Window, TableError> {
        let entries = (TABLE_HALVES * self.size) as usize;
        let len = (entries * ENTRY).div_ceil(4096) * 4096;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let fd = self.map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array from its start, as the kernel documents.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(TableError::Mmap { index, source: std::io::Error::last_os_error() });
        }
        Ok(Window { ptr: ptr.cast(), entries, len })
    }
}

impl TableMem {
    /// Over the `TABLES_*` arrays of a loaded object (in `TABLE_CLASSES` order); `pins`
    /// is where table maps are pinned.
    pub fn new(outers: Vec<MapData>, pins: Option<PathBuf>, writable: bool) -> Self {
        if writable {
            raise_fd_limit();
        }
        let vip_capacity = outers.first().and_then(|o| o.info().ok()).map_or(0, |i| i.max_entries() / 2);
        TableMem {
            outers,
            vip_capacity,
            retired: Vec::new(),
            pending: Vec::new(),
            placeholders: [None, None, None, None],
            pins,
            open: Mutex::new(HashMap::new()),
            writable,
        }
    }

    /// How many VIPs the arrays have room for (two places each).
    pub fn vip_capacity(&self) -> u32 {
        self.vip_capacity
    }

    /// How many table maps this process holds open (a writer: every VIP's, and the
    /// replaced ones not swept yet).
    pub fn held(&self) -> usize {
        self.open.lock().expect("table cache").len()
    }

    /// How many places in `TABLES` wait for `sweep` to release their table map.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// The table map at place `index` was replaced, or its VIP removed: it is unpinned
    /// and released by `sweep` after its grace. `size` is the map's, if it is not one
    /// this process holds (a VIP adopted from an earlier agent); with neither, there is
    /// nothing to release.
    pub fn retire(&mut self, index: u32, size: Option<u32>) {
        let held = self.open.lock().expect("table cache").remove(&index).map(|t| t.size);
        let Some(class) = held.or(size).and_then(table_class) else { return };
        self.pending.retain(|p| p.1 != index);
        if let Some(path) = self.pin_path(index) {
            let _ = std::fs::remove_file(path);
        }
        self.retired.retain(|(p, _)| *p != (class, index));
        self.retired.push(((class, index), std::time::Instant::now()));
    }

    /// Releases the table maps retired at least `grace` ago (their places get the
    /// class's placeholder, one batch per class). Returns how many.
    pub fn sweep(&mut self, grace: std::time::Duration) -> Result<usize, TableError> {
        let due: Vec<Place> = self.retired.iter().filter(|(_, t)| t.elapsed() >= grace).map(|(p, _)| *p).collect();
        for (class, &size) in TABLE_CLASSES.iter().enumerate() {
            let places: Vec<u32> = due.iter().filter(|p| p.0 == class).map(|p| p.1).collect();
            if places.is_empty() {
                continue;
            }
            if self.placeholders[class].is_none() {
                self.placeholders[class] = Some(new_table_map(size, "TABLE_EMPTY")?);
            }
            let fd = self.placeholders[class].as_ref().expect("made").fd().as_fd().as_raw_fd() as u32;
            let fds = vec![fd; places.len()];
            super::pins::update_batch_u32(&self.outers[class], &places, &fds).map_err(|(done, e)| TableError::Map {
                index: places[done.min(places.len() - 1)],
                source: MapError::IoError(e),
            })?;
            self.retired.retain(|(p, _)| p.0 != class || !places.contains(&p.1));
        }
        Ok(due.len())
    }

    /// Puts the table maps created since the last commit into their arrays, one batch
    /// per class. Returns the places the kernel refused, with why; the others are in.
    pub fn commit(&mut self) -> HashMap<u32, TableError> {
        let mut refused = HashMap::new();
        let pending = std::mem::take(&mut self.pending);
        for class in 0..TABLE_CLASSES.len() {
            let mut rest: Vec<u32> = pending.iter().filter(|p| p.0 == class).map(|p| p.1).collect();
            while !rest.is_empty() {
                let fds: Vec<u32> = {
                    let open = self.open.lock().expect("table cache");
                    rest.iter().map(|i| open[i].map.fd().as_fd().as_raw_fd() as u32).collect()
                };
                match super::pins::update_batch_u32(&self.outers[class], &rest, &fds) {
                    Ok(()) => break,
                    Err((done, e)) => {
                        let at = done.min(rest.len() - 1);
                        refused.insert(rest[at], TableError::Map { index: rest[at], source: MapError::IoError(e) });
                        rest.drain(..=at);
                    }
                }
            }
        }
        refused
    }

    fn pin_path(&self, index: u32) -> Option<PathBuf> {
        self.pins.as_ref().map(|d| d.join(index.to_string()))
    }

    /// The table map at `meta.table`, checked against `meta`'s size.
    fn table(&self, meta: &VipMeta) -> Result<Arc<TableMap>, TableError> {
        let index = meta.table;
        if let Some(t) = self.open.lock().expect("table cache").get(&index) {
            if t.size == meta.table_size() {
                return Ok(t.clone());
            }
        }
        let map = match self.pin_path(index) {
            Some(path) => MapData::from_pin(path).map_err(|source| TableError::Map { index, source })?,
            None => return Err(TableError::Map { index, source: MapError::KeyNotFound }),
        };
        let found = map.info().map_err(|source| TableError::Map { index, source })?.max_entries();
        let want = TABLE_HALVES * meta.table_size();
        if found != want {
            return Err(TableError::Size { index, found, want });
        }
        let t = Arc::new(TableMap { map, size: meta.table_size() });
        if self.writable {
            self.open.lock().expect("table cache").insert(index, t.clone());
        }
        Ok(t)
    }

    /// Creates an empty table map of `size` slots a half for place `index`, pinned beside
    /// the outer map; it is written like any other, and goes into `TABLES` at the next
    /// [`commit`](Self::commit).
    pub fn create(&mut self, index: u32, size: u32) -> Result<(), TableError> {
        if !self.writable {
            return Err(TableError::ReadOnly);
        }
        let class = table_class(size).ok_or(TableError::Class { size })?;
        let map = new_table_map(size, &format!("TABLE_{index}"))?;
        if let Some(path) = self.pin_path(index) {
            let err = |source| TableError::Pin { index, path: path.clone(), source };
            std::fs::create_dir_all(path.parent().expect("in a directory")).map_err(err)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            }
            map.pin(&path).map_err(|e| err(std::io::Error::other(e)))?;
        }
        self.retired.retain(|(p, _)| *p != (class, index));
        self.pending.retain(|p| p.1 != index);
        self.pending.push((class, index));
        self.open.lock().expect("table cache").insert(index, Arc::new(TableMap { map, size }));
        Ok(())
    }

    /// One slot of the half `half` of the table `meta` names.
    pub fn get(&self, meta: &VipMeta, half: u32, slot: u32) -> Result<TableEntry, TableError> {
        let t = self.table(meta)?;
        Ok(t.window(meta.table, false)?.get(table_index(half, meta.mask, slot)))
    }

    /// A whole half.
    pub fn read(&self, meta: &VipMeta, half: u32) -> Result<Vec<TableEntry>, TableError> {
        let t = self.table(meta)?;
        let w = t.window(meta.table, false)?;
        Ok((0..meta.table_size()).map(|s| w.get(table_index(half, meta.mask, s))).collect())
    }

    /// Writes the slots of a half that differ from `want`; returns how many.
    pub fn write_diff(&self, meta: &VipMeta, half: u32, want: &[TableEntry]) -> Result<usize, TableError> {
        if !self.writable {
            return Err(TableError::ReadOnly);
        }
        assert_eq!(want.len() as u32, meta.table_size(), "a table of another size than the VIP's");
        let t = self.table(meta)?;
        let w = t.window(meta.table, true)?;
        let mut n = 0;
        for (slot, e) in want.iter().enumerate() {
            let i = table_index(half, meta.mask, slot as u32);
            if w.get(i) != *e {
                w.set(i, *e);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A new, empty table map of `size` slots a half.
fn new_table_map(size: u32, name: &str) -> Result<MapData, TableError> {
    let flags = BPF_F_MMAPABLE;
    let obj = aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, ENTRY as u32, TABLE_HALVES * size, flags);
    MapData::create(obj, name, None).map_err(|source| TableError::Create { size, source })
}

/// A writer keeps a descriptor on each VIP's table map (4,096 VIPs: 4,096 descriptors,
/// over the usual soft limit of 1,024): the soft limit is raised to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "raising the open-file limit");
        }
    }
}

/// Where table maps are pinned, beside the other maps in `maps_dir`.
pub fn pin_dir(maps_dir: &Path) -> PathBuf {
    // (bpffs refuses names with a dot.)
    maps_dir.join("TABLE_MAPS")
}

impl From<TableError> for MapError {
    /// For the readers, whose errors are map errors.
    fn from(e: TableError) -> Self {
        MapError::IoError(std::io::Error::other(e.to_string()))
    }
}
