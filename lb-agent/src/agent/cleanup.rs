//! `lb-agent cleanup`: removes what agents leave in place on purpose (the pinned link,
//! the maps, the VIP addresses and managed neighbour entries).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use lb_common::BACKEND_F_PRESENT;
use tracing::info;

use super::AgentError;
use crate::config::{FieldError, Problem};
use crate::dataplane::xdp::loader::{LoadError, Maps};
use crate::model::{addr_from_bytes, Vip};
use crate::netlink::{Netlink, NetlinkError};

/// What the pinned maps say the agent put on the host.
fn read_host_state(pin_dir: &Path) -> (BTreeSet<IpAddr>, BTreeSet<IpAddr>) {
    let mut vips = BTreeSet::new();
    let mut backends = BTreeSet::new();
    if let Ok((maps, _)) = Maps::from_pinned(pin_dir) {
        for key in maps.vips.keys().flatten() {
            if let Some(v) = Vip::from_key(&key) {
                vips.insert(v.addr);
            }
        }
        for b in maps.backends.iter().flatten().filter(|b| b.flags & BACKEND_F_PRESENT != 0) {
            backends.insert(addr_from_bytes(b.family, &b.addr));
        }
    }
    (vips, backends)
}

/// Removes `<pin_root>/<iface>` (which detaches the program), then the VIP addresses and
/// neighbour entries the pinned maps name. The name is checked first: it becomes a path
/// that is deleted recursively, and `..` would make that the whole pin root's parent.
pub async fn cleanup(iface: &str, pin_root: &Path) -> Result<(), AgentError> {
    crate::cli::check_iface_name(iface).map_err(|p| FieldError::new("--iface", iface, Problem::InterfaceName(p)))?;
    let pin_dir = pin_root.join(iface);
    let (vips, backends) = read_host_state(&pin_dir);
    // Unpinning the link detaches the program (no process holds it).
    match std::fs::remove_dir_all(&pin_dir) {
        Ok(()) => info!(path = %pin_dir.display(), "pinned link and maps removed; program detached"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => info!(path = %pin_dir.display(), "nothing pinned"),
        Err(source) => return Err(LoadError::PinDir { path: pin_dir, source }.into()),
    }
    let nl = Netlink::new()?;
    let link = match nl.link(iface).await {
        Err(NetlinkError::NoSuchInterface { .. }) => {
            return Err(FieldError::new("--iface", iface, Problem::NoSuchInterface).into())
        }
        other => other?,
    };
    for addr in vips {
        nl.del_address(link.index, addr).await?;
        info!(%addr, iface, "VIP address removed");
    }
    for addr in backends {
        nl.forget(link.index, addr).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that would leave the pin root is refused before anything is removed.
    #[test]
    fn names_that_leave_the_pin_root_are_refused_and_nothing_is_deleted() {
        let base = std::env::temp_dir().join(format!("lb-cleanup-test-{}", std::process::id()));
        let root = base.join("lb");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(base.join("keep"), "x").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for bad in ["..", "a/b", ".", "", "../lb", "eth0 "] {
            let err = rt.block_on(cleanup(bad, &root)).expect_err(bad);
            let AgentError::Usage(e) = &err else { panic!("{bad:?}: not a usage error: {err}") };
            assert_eq!(e.field, "--iface");
            assert!(err.to_string().contains("is not an interface name"), "{err}");
        }
        assert!(base.join("keep").is_file(), "the pin root's parent is untouched");
        assert!(root.join("a/b").is_dir(), "a/b under the pin root is untouched");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
