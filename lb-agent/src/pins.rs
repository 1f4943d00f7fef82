//! `FLOWS_NEW`, the direct-mapped table of first packets, read through a memory mapping
//! (the map is `BPF_F_MMAPABLE`): one read of every slot is one pass over the mapping,
//! not a syscall per slot. Mapped only while read, like `TABLES`.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use lb_common::{hash, FlowKey, FlowValue, NewPin};

pub struct NewPins {
    map: MapData,
    slots: u32,
}

/// The whole table, mapped read-only for as long as this lives.
struct Mapping {
    ptr: *const NewPin,
    len: usize,
    slots: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `NewPins::mapping` mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl Mapping {
    /// The pin in slot `i` if it is whole (an empty or torn slot fails its check).
    fn get(&self, i: usize) -> Option<NewPin> {
        assert!(i < self.slots);
        // SAFETY: inside the mapping; the kernel may write the slot meanwhile, which the
        // check catches.
        let e = unsafe { self.ptr.add(i).read_volatile() };
        (e.check == hash::new_pin_check(&e.key, &e.value)).then_some(e)
    }
}

impl NewPins {
    pub fn new(map: MapData, slots: u32) -> Self {
        NewPins { map, slots }
    }

    /// Another handle on the same map (a duplicated descriptor), for another thread.
    pub fn try_clone(&self) -> std::io::Result<NewPins> {
        let fd = self.map.fd().as_fd().try_clone_to_owned()?;
        let map = MapData::from_fd(fd).map_err(std::io::Error::other)?;
        Ok(NewPins { map, slots: self.slots })
    }

    fn mapping(&self) -> std::io::Result<Mapping> {
        let len = (self.slots as usize * std::mem::size_of::<NewPin>()).div_ceil(4096) * 4096;
        let fd = self.map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array read-only, as the kernel documents.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr as *const NewPin, len, slots: self.slots as usize })
    }

    /// The pin of `key`, as the kernel finds it.
    pub fn get(&self, key: &FlowKey) -> std::io::Result<Option<FlowValue>> {
        let m = self.mapping()?;
        let (a, b) = hash::new_pin_slots(key, self.slots - 1);
        Ok([a, b].into_iter().filter_map(|i| m.get(i as usize)).find(|e| e.key == *key).map(|e| e.value))
    }

    /// Every whole pin.
    pub fn all(&self) -> std::io::Result<Vec<(FlowKey, FlowValue)>> {
        let m = self.mapping()?;
        Ok((0..m.slots).filter_map(|i| m.get(i)).map(|e| (e.key, e.value)).collect())
    }
}
