//! `lb-agent cleanup`: removes what agents leave in place on purpose (the pinned link,
//! the maps, the VIP addresses and managed neighbour entries).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use lb_common::BACKEND_F_PRESENT;
use tracing::info;

use super::AgentError;
use crate::config::{FieldError, Problem};
use crate::loader::{LoadError, Maps};
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

pub async fn cleanup(iface: &str, pin_root: &Path) -> Result<(), AgentError> {
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
