//! `TABLES` through shared memory mappings (the map is `BPF_F_MMAPABLE`): the agent
//! reads and writes table slots with plain loads and stores instead of a syscall each.
//!
//! Only the pages of the VIP being read or written are mapped, and only while it is
//! (a window over its two halves): mapping the whole map would count all of it — the
//! tables of every possible VIP — in the agent's resident memory.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use lb_common::{table_index, TableEntry, TABLE_HALVES};

const PAGE: usize = 4096;
const ENTRY: usize = std::mem::size_of::<TableEntry>();

pub struct TableMem {
    map: MapData,
    entries: usize,
    table_size: u32,
    /// Whether windows are mapped writable (not for a read-only descriptor, which the
    /// kernel refuses to map so).
    writable: bool,
}

/// The pages holding one VIP's two halves, mapped for as long as this lives.
struct Window {
    ptr: *mut u8,
    len: usize,
    /// Byte offset in the map of `ptr`.
    offset: usize,
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `TableMem::window` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl Window {
    fn slot(&self, index: usize) -> *mut u64 {
        let byte = index * ENTRY - self.offset;
        assert!(byte + ENTRY <= self.len, "table index {index} outside the window");
        // SAFETY: inside the mapping (checked); 8-byte aligned (page-aligned base, 8-byte entries).
        unsafe { self.ptr.add(byte).cast() }
    }
    fn get(&self, index: usize) -> TableEntry {
        // SAFETY: see `slot`.
        let raw = unsafe { self.slot(index).read_volatile() };
        TableEntry { backend: raw as u32, prev: (raw >> 32) as u32 }
    }
    /// One 8-byte store: a packet reading the slot sees the old or the new entry.
    fn set(&self, index: usize, e: TableEntry) {
        // SAFETY: see `slot`.
        unsafe { self.slot(index).write_volatile(e.backend as u64 | ((e.prev as u64) << 32)) };
    }
}

impl TableMem {
    /// `entries` is the `TABLES` map's size; nothing is mapped yet.
    pub fn map(map: MapData, entries: u32, table_size: u32) -> std::io::Result<Self> {
        Ok(TableMem { map, entries: entries as usize, table_size, writable: true })
    }

    /// For readers: windows are mapped `PROT_READ` and [`write_diff`](Self::write_diff)
    /// is refused. (The descriptor itself must be writable: the kernel maps a BPF map only
    /// through one.)
    pub fn map_read_only(map: MapData, entries: u32, table_size: u32) -> Self {
        TableMem { map, entries: entries as usize, table_size, writable: false }
    }

    pub fn table_size(&self) -> u32 {
        self.table_size
    }

    /// How many VIPs' tables fit.
    pub fn vip_capacity(&self) -> u32 {
        (self.entries / (TABLE_HALVES * self.table_size) as usize) as u32
    }

    fn index(&self, vip_id: u32, half: u32, slot: u32) -> usize {
        let i = table_index(vip_id, half, self.table_size, slot) as usize;
        assert!(i < self.entries, "table index {i} beyond TABLES ({} entries)", self.entries);
        i
    }

    /// Maps the pages that hold VIP `vip_id`'s two halves.
    fn window(&self, vip_id: u32) -> std::io::Result<Window> {
        let start = self.index(vip_id, 0, 0) * ENTRY;
        let end = (self.index(vip_id, TABLE_HALVES - 1, self.table_size - 1) + 1) * ENTRY;
        let offset = start / PAGE * PAGE;
        let map_end = (self.entries * ENTRY).div_ceil(PAGE) * PAGE;
        let len = (end.div_ceil(PAGE) * PAGE).min(map_end) - offset;
        let fd = self.map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping part of a BPF_F_MMAPABLE array, as the kernel documents.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                if self.writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ },
                libc::MAP_SHARED,
                fd,
                offset as i64,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Window { ptr: ptr.cast(), len, offset })
    }

    pub fn get(&self, vip_id: u32, half: u32, slot: u32) -> std::io::Result<TableEntry> {
        Ok(self.window(vip_id)?.get(self.index(vip_id, half, slot)))
    }

    /// A whole table (one half of one VIP).
    pub fn read(&self, vip_id: u32, half: u32) -> std::io::Result<Vec<TableEntry>> {
        let w = self.window(vip_id)?;
        Ok((0..self.table_size).map(|s| w.get(self.index(vip_id, half, s))).collect())
    }

    /// Writes the slots of a half that differ from `want`; returns how many.
    pub fn write_diff(&mut self, vip_id: u32, half: u32, want: &[TableEntry]) -> std::io::Result<usize> {
        if !self.writable {
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "TABLES is open read-only"));
        }
        let w = self.window(vip_id)?;
        let mut n = 0;
        for (slot, e) in want.iter().enumerate() {
            let i = self.index(vip_id, half, slot as u32);
            if w.get(i) != *e {
                w.set(i, *e);
                n += 1;
            }
        }
        Ok(n)
    }
}
