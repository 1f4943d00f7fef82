//! Is a pinned XDP link still on the interface we are asked to serve?
//!
//! A pinned link outlives its interface: when the interface is deleted the kernel
//! detaches the link but the pin stays ("severed": its ifindex reads 0, and
//! `bpf_link_update` on it fails with ENOLINK). When the interface is renamed and a new
//! one takes its name, the pin still holds the old interface, and updating it would
//! put our program on an interface we were not asked about, leaving the new one bare.
//! aya's `LinkInfo` does not expose the link's interface, so it is read here with
//! `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD`.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::Ebpf;

use super::{attach_program, link_path, xdp_mut, Attachment, LoadError, PROG_LB};
use crate::config::XdpModeChoice;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// `union bpf_attr` for `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` with its union read as the XDP member (`ifindex` at 16).
#[repr(C)]
struct XdpLinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    ifindex: u32,
    _rest: [u32; 27],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly sized `bpf_attr` variant for `cmd`; the kernel
    // reads (and for GET_INFO writes through the pointer inside) only within it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The interface index of the XDP link pinned at `path` (0: severed, its interface is
/// gone), or `None` when the pin is no XDP link.
pub fn pinned_xdp_ifindex(path: &Path) -> io::Result<Option<u32>> {
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut get = ObjGet { pathname: c_path.as_ptr() as u64, ..Default::default() };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = XdpLinkInfo { type_: 0, id: 0, prog_id: 0, _pad: 0, ifindex: 0, _rest: [0; 27] };
    let mut attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<XdpLinkInfo>() as u32,
        info: &mut info as *mut XdpLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.type_ == BPF_LINK_TYPE_XDP).then_some(info.ifindex))
}

/// The index of interface `iface` in this network namespace, if it exists.
pub fn ifindex_of(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Why a pinned link cannot be reused for `iface`, if it cannot.
pub fn stale_reason(path: &Path, iface: &str) -> Option<String> {
    let want = ifindex_of(iface);
    match pinned_xdp_ifindex(path) {
        Err(e) => Some(format!("reading the pinned link: {e}")),
        Ok(None) => Some("the pin is not an XDP link".into()),
        Ok(Some(0)) => {
            Some(format!("the link was severed: the interface it ran on was deleted (now {iface} is a new one)"))
        }
        Ok(Some(i)) if Some(i) != want => Some(format!(
            "the link runs on interface index {i}, but {iface} is index {} (renamed or recreated)",
            want.map_or("none".to_string(), |w| w.to_string())
        )),
        Ok(Some(_)) => None,
    }
}

/// Whether the program pinned at `path` runs on interface `iface` (`/healthz`); the
/// reason if not.
pub fn attached(path: &Path, iface: &str) -> Result<(), String> {
    let Some(want) = ifindex_of(iface) else { return Err(format!("interface {iface} is gone")) };
    match pinned_xdp_ifindex(path) {
        Ok(Some(i)) if i == want => Ok(()),
        Ok(Some(0)) => Err(format!("the XDP program is detached from {iface}")),
        Ok(Some(i)) => Err(format!("the XDP link is attached to ifindex {i}, not {iface} ({want})")),
        Ok(None) => Err(format!("{} is not an XDP link", path.display())),
        Err(e) => Err(format!("reading the pinned XDP link {}: {e}", path.display())),
    }
}

/// Attaches the balancer to `iface` through a pinned link (see `Loaded::attach_pinned`).
pub fn attach_pinned(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpModeChoice,
    pin_dir: &Path,
) -> Result<Attachment, LoadError> {
    let path = link_path(pin_dir);
    if path.exists() {
        let stale = stale_reason(&path, iface);
        match (stale, PinnedLink::from_pin(&path)) {
            (None, Ok(pinned)) => match update_link(ebpf, pinned) {
                Ok(()) => return Ok(Attachment::Replaced),
                Err(e) => replace_pin(&path, iface, &e.to_string())?,
            },
            (Some(reason), _) => replace_pin(&path, iface, &reason)?,
            (None, Err(e)) => replace_pin(&path, iface, &e.to_string())?,
        }
    }
    let (mode, id) = attach_program(&mut *ebpf, PROG_LB, iface, mode)?;
    let prog = xdp_mut(ebpf, PROG_LB)?;
    let link = prog.take_link(id).map_err(|source| LoadError::Program { name: PROG_LB, source })?;
    let fd = FdLink::try_from(link).map_err(LoadError::Link)?;
    fd.pin(&path).map_err(|source| LoadError::PinLink { path, source })?;
    Ok(Attachment::New(mode))
}

/// Swaps our program into a pinned link (`bpf_link_update`).
fn update_link(ebpf: &mut Ebpf, pinned: PinnedLink) -> Result<(), LoadError> {
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(LoadError::Link)?;
    xdp_mut(ebpf, PROG_LB)?.attach_to_link(link).map_err(|source| LoadError::Program { name: PROG_LB, source })?;
    Ok(())
}

/// Unpins a pinned link that cannot be reused; the kernel frees it (detaching it from
/// whatever interface it still held) once the last reference is gone.
fn replace_pin(path: &Path, iface: &str, reason: &str) -> Result<(), LoadError> {
    tracing::warn!(path = %path.display(), iface, reason, "pinned XDP link unusable: unpinned, replaced by a new link");
    std::fs::remove_file(path).map_err(|source| LoadError::PinDir { path: path.into(), source })
}
