//! What the data plane really holds for a Service, as the agent found it after a sync:
//! the Service's status is written from this, not from the wanted state.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::dataplane::Programmed;
use crate::model::Vip;

/// One VIP of a Service in the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VipHeld {
    Programmed(Programmed),
    /// The data plane or the host refused it (a full map, a refused address).
    Failed(String),
    /// Not applied yet.
    Missing,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub vips: BTreeMap<Vip, VipHeld>,
    /// Endpoints left out: not on the LB interface's subnets (direct server return needs
    /// them on the link).
    pub off_link: Vec<IpAddr>,
    /// Established flows still on the Service's draining backends.
    pub draining_flows: u64,
}

impl Held {
    /// Every VIP is in the data plane with a backend that takes new flows.
    pub fn serving(&self) -> bool {
        !self.vips.is_empty() && self.vips.values().all(|v| matches!(v, VipHeld::Programmed(p) if p.serving > 0))
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<(&Vip, &str)> {
        self.vips.iter().find_map(|(v, h)| match h {
            VipHeld::Failed(m) => Some((v, m.as_str())),
            _ => None,
        })
    }
}

/// "2 VIPs; 3 backends serving, 1 draining, 1 unresolved; 2 endpoints skipped (not on
/// the interface's subnets)": what the condition message says.
impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sum = Programmed::default();
        let mut missing = 0;
        for h in self.vips.values() {
            match h {
                VipHeld::Programmed(p) => {
                    sum.serving += p.serving;
                    sum.ramping += p.ramping;
                    sum.draining += p.draining;
                    sum.unresolved += p.unresolved;
                }
                VipHeld::Failed(_) | VipHeld::Missing => missing += 1,
            }
        }
        let held = self.vips.len() - missing;
        write!(f, "{held} of {} VIPs in the data plane; {} backends serving", self.vips.len(), sum.serving)?;
        if sum.ramping > 0 {
            write!(f, " ({} ramping up)", sum.ramping)?;
        }
        if sum.draining > 0 {
            write!(f, ", {} draining with {} live flows", sum.draining, self.draining_flows)?;
        }
        if sum.unresolved > 0 {
            write!(f, ", {} without a link-layer address yet", sum.unresolved)?;
        }
        if !self.off_link.is_empty() {
            write!(f, "; {} endpoints skipped (not on the interface's subnets)", self.off_link.len())?;
        }
        Ok(())
    }
}
