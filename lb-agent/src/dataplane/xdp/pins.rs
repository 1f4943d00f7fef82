//! Pinned maps as readers see them: opened read-only ([`open_read_only`]), and
//! `FLOWS_NEW`, the direct-mapped table of first packets, read through a memory mapping
//! (the map is `BPF_F_MMAPABLE`): one read of every slot is one pass over the mapping,
//! not a syscall per slot. Mapped only while read, like `TABLES`.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::maps::{MapData, MapError};
use aya::sys::SyscallError;
use lb_common::{hash, FlowKey, FlowValue, NewPin};

/// `BPF_OBJ_GET`'s command number and its `BPF_F_RDONLY` file flag (uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_F_RDONLY: u32 = 1 << 3;

/// The `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
}

/// Opens a pinned map read-only (`BPF_OBJ_GET` with `BPF_F_RDONLY`): the kernel then
/// refuses every update and delete through this descriptor and any writable mapping, so
/// the commands that only look (`status`, `explain`, `top`, `/metrics`, `cleanup`'s
/// reading) cannot change the data path, whatever a bug in them does. aya's
/// `MapData::from_pin` always asks for read-write, hence this call.
pub fn open_read_only(path: &Path) -> Result<MapData, MapError> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|e| SyscallError {
        call: "BPF_OBJ_GET",
        io_error: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let attr = ObjGetAttr { pathname: name.as_ptr() as u64, file_flags: BPF_F_RDONLY, ..Default::default() };
    // SAFETY: `attr` is a valid BPF_OBJ_GET attribute whose path outlives the call; the
    // size passed is the struct's.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const ObjGetAttr, std::mem::size_of::<ObjGetAttr>())
    };
    if fd < 0 {
        let io_error = std::io::Error::last_os_error();
        return Err(SyscallError { call: "BPF_OBJ_GET", io_error }.into());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_MAP_UPDATE_BATCH`'s command number and the `batch` part of `union bpf_attr`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values[i]` at `keys[i]` for every i in one `BPF_MAP_UPDATE_BATCH` (aya has no
/// batch call). For an array of maps this matters: the kernel waits for an RCU grace
/// period (milliseconds) after every update of such a map, once per call, so 4,096
/// table maps take one wait instead of 4,096. On an error, the entries before the
/// failing one are written: returns (how many, the error).
pub fn update_batch_u32(map: &MapData, keys: &[u32], values: &[u32]) -> Result<(), (usize, std::io::Error)> {
    assert_eq!(keys.len(), values.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid BPF_MAP_UPDATE_BATCH attribute; `keys` and `values` hold
    // `count` u32s each and outlive the call; the kernel writes `count` back into `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        return Err((attr.count as usize, std::io::Error::last_os_error()));
    }
    Ok(())
}

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
