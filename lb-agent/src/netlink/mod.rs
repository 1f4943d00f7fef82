//! The agent's rtnetlink edge: interface facts, VIP addresses, and the neighbour table.
//!
//! Everything here goes through one `rtnetlink` connection ([`Netlink`]), whose socket
//! belongs to the network namespace of the thread that called [`Netlink::new`].
//!
//! # Keeping backends resolved: managed neighbour entries
//!
//! The XDP program needs each backend's MAC address, and the kernel only learns it by
//! ARP / neighbour discovery, which it does not do for traffic it never routes itself.
//! [`Netlink::resolve`] therefore installs a *managed* neighbour entry
//! (`NTF_EXT_MANAGED`, Linux ≥ 5.16): the kernel resolves such an entry on creation and
//! keeps re-probing it, so it stays usable and follows MAC changes with no traffic of
//! ours. The request is byte-for-byte what `ip neigh replace ADDR dev IF managed`
//! sends (checked with `strace` against iproute2 6.1): `RTM_NEWNEIGH` with
//! `NLM_F_REQUEST|NLM_F_ACK|NLM_F_REPLACE|NLM_F_CREATE`, `ndm_state = NUD_NONE`,
//! `ndm_flags = 0`, and the attributes `NDA_DST` and `NDA_FLAGS_EXT = NTF_EXT_MANAGED`.
//! `netlink-packet-route` 0.34 (the version `rtnetlink` 0.24 uses) expresses that
//! attribute as `NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed)`, so no raw
//! bytes and no fallback (such as a UDP datagram to provoke a solicitation) are needed.
//!
//! For an entry that already exists the kernel only sets the managed flag and leaves the
//! state alone, except that it clears `NUD_PERMANENT`. So that an administrator's static
//! entry is never demoted, `resolve` leaves `PERMANENT` and `NOARP` entries untouched
//! (they are usable as they are), and [`Netlink::forget`] deletes only entries that carry
//! the managed flag.
//!
//! IPv6 caveat: a solicitation that no packet triggered (as here) takes its source
//! address from the interface's link-local address, and the kernel sends none while
//! that address is tentative or missing (`ndisc_send_ns`). Right after the link comes
//! up, resolution therefore waits for the link-local address's DAD (about 2 s in the
//! namespace tests), and on an interface without one (`addrgenmode none`) IPv6
//! neighbours never resolve: the entry goes `FAILED` without a solicitation sent.
//!
//! # Errors
//!
//! Every failure is a [`NetlinkError`] naming the interface (by name or index) and the
//! address involved; the `rtnetlink` error (usually a kernel errno) is its source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

/// Longest interface name the kernel accepts (`IFNAMSIZ` minus the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// One network interface as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The kernel's interface index.
    pub index: u32,
    /// The interface's name as the kernel reports it (its primary name, even when it
    /// was looked up by an alternative name).
    pub name: String,
    /// The interface's Ethernet address.
    pub mac: [u8; 6],
    /// Every address configured on the interface, with its prefix length, in the
    /// kernel's order: IPv4 and IPv6, including IPv6 link-local and any /32 or /128
    /// VIPs added by [`Netlink::add_address`].
    pub addrs: Vec<(IpAddr, u8)>,
    /// The gateways of routes out of this interface (any table), when it was read.
    pub gateways: Vec<IpAddr>,
}

/// A failed rtnetlink operation, with the interface and address it concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// [`Netlink::new`] was called outside a tokio runtime.
    #[error("the rtnetlink connection needs a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The rtnetlink socket could not be opened.
    #[error("cannot open an rtnetlink socket")]
    Connect(#[source] std::io::Error),
    /// No interface has this name (in this network namespace).
    #[error("no interface named {name:?}")]
    NoSuchInterface { name: String },
    /// No interface has this index (in this network namespace).
    #[error("no interface with index {ifindex}")]
    NoSuchIfindex { ifindex: u32 },
    /// The interface has no 6-byte hardware address, so it is not Ethernet-like.
    #[error("interface {name:?} has no Ethernet address (hardware address of {len} bytes)")]
    NotEthernet { name: String, len: usize },
    /// Looking up an interface failed.
    #[error("cannot look up interface {name:?}")]
    GetLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing an interface's addresses failed.
    #[error("cannot list the addresses of interface {ifindex}")]
    ListAddresses {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding an address failed.
    #[error("cannot add address {addr} to interface {ifindex}")]
    AddAddress {
        ifindex: u32,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting an address failed.
    #[error("cannot delete address {addr} from interface {ifindex}")]
    DelAddress {
        ifindex: u32,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing the neighbour table failed.
    #[error("cannot list the neighbours of interface {ifindex}")]
    ListNeighbours {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Reading one neighbour entry failed.
    #[error("cannot read the neighbour entry for {addr} on interface {ifindex}")]
    GetNeighbour {
        ifindex: u32,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// Installing the managed neighbour entry failed.
    #[error("cannot make the kernel resolve {addr} on interface {ifindex}")]
    Resolve {
        ifindex: u32,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing the routes failed.
    #[error("cannot list the routes out of interface {ifindex}")]
    ListRoutes {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting the managed neighbour entry failed.
    #[error("cannot delete the neighbour entry for {addr} on interface {ifindex}")]
    Forget {
        ifindex: u32,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The agent's rtnetlink connection.
///
/// The connection runs as a task on the tokio runtime [`Netlink::new`] was called on;
/// dropping the `Netlink` stops it.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace and spawns
    /// its connection task on the current tokio runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(NetlinkError::NoRuntime)?;
        // The socket registers with the runtime's reactor, so build it inside the runtime.
        let _guard = runtime.enter();
        let (connection, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        let connection = runtime.spawn(connection);
        Ok(Self { handle, connection })
    }

    /// The interface called `name`: its index, MAC and configured addresses.
    ///
    /// A name the kernel cannot hold (empty, longer than 15 bytes, with a NUL) is
    /// [`NetlinkError::NoSuchInterface`] like any other missing name.
    pub async fn link(&self, name: &str) -> Result<Link, NetlinkError> {
        let no_such = || NetlinkError::NoSuchInterface { name: name.to_owned() };
        if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains('\0') {
            return Err(no_such());
        }
        let message = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(|source| match errno(&source) {
                Some(libc::ENODEV) => no_such(),
                _ => NetlinkError::GetLink { name: name.to_owned(), source },
            })?
            .ok_or_else(no_such)?;

        let index = message.header.index;
        let mut real_name = None;
        let mut hw = None;
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => real_name = Some(n),
                LinkAttribute::Address(a) => hw = Some(a),
                _ => {}
            }
        }
        let name = real_name.unwrap_or_else(|| name.to_owned());
        let hw = hw.unwrap_or_default();
        let mac: [u8; 6] =
            hw.as_slice().try_into().map_err(|_| NetlinkError::NotEthernet { name: name.clone(), len: hw.len() })?;

        let addrs = self.addresses(index).await?;
        let gateways = self.gateways(index).await?;
        Ok(Link { index, name, mac, addrs, gateways })
    }

    /// The gateways of the routes (IPv4 and IPv6, every table) out of `ifindex`.
    async fn gateways(&self, ifindex: u32) -> Result<Vec<IpAddr>, NetlinkError> {
        let mut out = Vec::new();
        let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        for request in dumps {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|source| NetlinkError::ListRoutes { ifindex, source })?;
            for r in &routes {
                let oif =
                    r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
                let gateway = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                    _ => None,
                });
                if let (Some(i), Some(g)) = (oif, gateway) {
                    if i == ifindex {
                        out.push(g);
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every address on interface `ifindex`, with its prefix length.
    async fn addresses(&self, ifindex: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::ListAddresses { ifindex, source })?;
        Ok(messages.iter().filter_map(configured_address).collect())
    }

    /// Adds `addr` to interface `ifindex` as a /32 (IPv4) or /128 (IPv6, without
    /// duplicate address detection, so it is usable at once).
    ///
    /// Returns `Ok(true)` if the address was added, `Ok(false)` if the kernel already had
    /// it (`EEXIST`; for IPv4, the same address with the same /32 prefix).
    pub async fn add_address(&self, ifindex: u32, addr: IpAddr) -> Result<bool, NetlinkError> {
        let mut request = self.handle.address().add(ifindex, addr, host_prefix_len(addr));
        if addr.is_ipv6() {
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => {
                tracing::debug!(ifindex, %addr, "added address");
                Ok(true)
            }
            Err(source) => match errno(&source) {
                Some(libc::EEXIST) => Ok(false),
                Some(libc::ENODEV) => Err(NetlinkError::NoSuchIfindex { ifindex }),
                _ => Err(NetlinkError::AddAddress { ifindex, addr, source }),
            },
        }
    }

    /// Deletes the /32 or /128 `addr` from interface `ifindex`; an address that is not
    /// there (or is there only with another prefix length) is not an error.
    pub async fn del_address(&self, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        let prefix_len = host_prefix_len(addr);
        let message = match addr {
            IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new().index(ifindex).address(v4, prefix_len).build(),
            IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new().index(ifindex).address(v6, prefix_len).build(),
        };
        match self.handle.address().del(message).execute().await {
            Ok(()) => {
                tracing::debug!(ifindex, %addr, "deleted address");
                Ok(())
            }
            Err(source) => match errno(&source) {
                Some(libc::EADDRNOTAVAIL) => Ok(()),
                Some(libc::ENODEV) => Err(NetlinkError::NoSuchIfindex { ifindex }),
                _ => Err(NetlinkError::DelAddress { ifindex, addr, source }),
            },
        }
    }
}

/// The prefix length of a single-host address: 32 or 128.
fn host_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn address_family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The positive errno of a kernel error reply, if `error` is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

/// The address an `RTM_NEWADDR` message configures, with its prefix length.
///
/// `IFA_LOCAL` is the interface's own address; `IFA_ADDRESS` is the same except on
/// point-to-point links (where it is the peer), and is the only one IPv6 usually sends.
fn configured_address(message: &AddressMessage) -> Option<(IpAddr, u8)> {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    let addr = local.or(address)?;
    let family_matches = matches!(
        (message.header.family, addr),
        (AddressFamily::Inet, IpAddr::V4(_)) | (AddressFamily::Inet6, IpAddr::V6(_))
    );
    family_matches.then_some((addr, message.header.prefix_len))
}

mod checks;
mod neigh;

pub use checks::{host_conflict, on_link};

#[cfg(test)]
mod tests;
