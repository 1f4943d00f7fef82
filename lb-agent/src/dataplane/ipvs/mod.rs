//! The kernel's IPVS as a data plane, for hosts where XDP cannot run: the same wanted
//! state as virtual services (one per VIP) with real servers in direct-routing mode.
//! Work in progress (issue 12): the generic netlink layer and client are here; the
//! `Dataplane` implementation is not yet.

pub mod client;
pub mod genl;
