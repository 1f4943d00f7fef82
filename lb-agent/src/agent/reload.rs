//! Re-reading the config file: invalid VIPs are reported by name and skipped, a VIP
//! that is running keeps its last good configuration, the others are applied.

use tracing::{info, warn};

use super::RunOptions;
use crate::config;
use crate::model::Desired;
use crate::netlink::{self, Link};

/// The wanted state after a reload, and whether anything was skipped; `Err` when the
/// file cannot be read at all (the current state is kept).
pub fn reload(opts: &RunOptions, current: &Desired, link: &Link) -> Result<(Desired, bool), ()> {
    let file = match opts.config_path.as_deref().map(config::read_file).transpose() {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "reload: keeping the current configuration");
            return Err(());
        }
    };
    let mut raw = opts.flag_vips.clone();
    if let Some(f) = &file {
        raw.extend(f.raw_vips());
    }
    let (mut desired, errors) = config::validate_vips(&raw);
    for e in &errors {
        warn!(error = %e, "reload: invalid VIP skipped");
    }
    // An invalid entry for a VIP that is running keeps its last good configuration:
    // a typo must not take a working VIP down.
    for r in &raw {
        let Ok(vip) = r.address.trim().parse::<crate::model::Vip>() else { continue };
        if let (false, Some(old)) = (desired.vips.contains_key(&vip), current.vips.get(&vip)) {
            warn!(%vip, "reload: VIP keeps its last good configuration");
            desired.vips.insert(vip, old.clone());
        }
    }
    desired.vips.retain(|vip, spec| {
        let off = spec.backends.iter().find(|b| !netlink::on_link(link, b.addr));
        if let Some(b) = off {
            warn!(%vip, backend = %b.addr, iface = %link.name, "reload: VIP skipped: backend not on the interface's subnets");
        }
        off.is_none()
    });
    info!(vips = desired.vips.len(), skipped = errors.len(), "configuration reloaded");
    Ok((desired, !errors.is_empty()))
}
