//! Is the data path really there? The pinned XDP link is asked which interface it is
//! attached to (0 once the interface went away or someone detached it), and that is
//! compared with the interface the agent serves. aya 0.14's `LinkInfo` does not expose
//! the XDP part of `bpf_link_info`, hence the two raw `bpf(2)` calls here.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `union bpf_attr` for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info.
#[repr(C)]
#[derive(Default)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info`: type, id, prog_id, then a union whose XDP member starts with
/// the ifindex (at byte 16, the union being 8-aligned). 64 bytes covers every member.
#[repr(C, align(8))]
struct LinkInfo([u8; 64]);

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// The ifindex the XDP link pinned at `pin` is attached to (0: detached).
pub fn xdp_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut get = ObjGet { pathname: path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo([0; 64]);
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: 64,
        info: info.0.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(info.0[16..20].try_into().expect("4 bytes")))
}

/// The index of interface `name` in this network namespace (0: no such interface).
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: a NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Whether the program pinned at `pin` runs on interface `iface`; the reason if not.
pub fn attached(pin: &Path, iface: &str) -> Result<(), String> {
    let want = ifindex(iface);
    if want == 0 {
        return Err(format!("interface {iface} is gone"));
    }
    match xdp_link_ifindex(pin) {
        Ok(i) if i == want => Ok(()),
        Ok(0) => Err(format!("the XDP program is detached from {iface}")),
        Ok(i) => Err(format!("the XDP link is attached to ifindex {i}, not {iface} ({want})")),
        Err(e) => Err(format!("reading the pinned XDP link {}: {e}", pin.display())),
    }
}
