//! `TABLES` through a shared memory mapping (the map is `BPF_F_MMAPABLE`): the agent
//! reads and writes table slots with plain loads and stores instead of a syscall each.

use aya::maps::MapData;
use lb_common::{table_index, TableEntry, TABLE_HALVES};
use std::os::fd::{AsFd, AsRawFd};

pub struct TableMem {
    ptr: *mut u64,
    entries: usize,
    table_size: u32,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value; access goes through &self/&mut self.
unsafe impl Send for TableMem {}
unsafe impl Sync for TableMem {}

impl TableMem {
    /// Maps `entries` entries of the `TABLES` map.
    pub fn map(map: MapData, entries: u32, table_size: u32) -> std::io::Result<Self> {
        let entries = entries as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let len = entries * std::mem::size_of::<TableEntry>();
        // SAFETY: mapping a BPF array fd as the kernel documents for BPF_F_MMAPABLE maps.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TableMem { ptr: ptr.cast(), entries, table_size, _map: map })
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

    pub fn get(&self, vip_id: u32, half: u32, slot: u32) -> TableEntry {
        // SAFETY: index is bounds-checked; 8-byte aligned inside a page-aligned mapping.
        let raw = unsafe { self.ptr.add(self.index(vip_id, half, slot)).read_volatile() };
        TableEntry { backend: raw as u32, prev: (raw >> 32) as u32 }
    }

    /// One 8-byte store: a packet reading the slot sees the old or the new entry.
    pub fn set(&mut self, vip_id: u32, half: u32, slot: u32, e: TableEntry) {
        let raw = e.backend as u64 | ((e.prev as u64) << 32);
        // SAFETY: as in `get`.
        unsafe { self.ptr.add(self.index(vip_id, half, slot)).write_volatile(raw) };
    }

    /// A whole table (one half of one VIP).
    pub fn read(&self, vip_id: u32, half: u32) -> Vec<TableEntry> {
        (0..self.table_size).map(|s| self.get(vip_id, half, s)).collect()
    }

    /// Writes the slots of a half that differ from `want`; returns how many.
    pub fn write_diff(&mut self, vip_id: u32, half: u32, want: &[TableEntry]) -> usize {
        let mut n = 0;
        for (slot, e) in want.iter().enumerate() {
            if self.get(vip_id, half, slot as u32) != *e {
                self.set(vip_id, half, slot as u32, *e);
                n += 1;
            }
        }
        n
    }
}

impl Drop for TableMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.entries * std::mem::size_of::<TableEntry>()) };
    }
}
