//! Neighbour entries: keeping backends resolved (managed entries, see the module docs), reading their MACs.

use super::*;

impl Netlink {
    /// The usable neighbours of interface `ifindex`, IPv4 and IPv6: entries in state
    /// `REACHABLE`, `STALE`, `DELAY`, `PROBE`, `PERMANENT` or `NOARP` that carry a 6-byte
    /// link-layer address. Multicast and broadcast mappings (`NOARP` entries for groups
    /// such as ff02::1) are left out. An unknown `ifindex` simply has no neighbours.
    pub async fn neighbours(&self, ifindex: u32) -> Result<HashMap<IpAddr, [u8; 6]>, NetlinkError> {
        // Folded message by message: a dump of 100,000 entries is never held whole.
        let mut out = HashMap::new();
        let mut dump = self.handle.neighbours().get().set_address_family(AddressFamily::Unspec).execute();
        while let Some(m) = dump.try_next().await.map_err(|source| NetlinkError::ListNeighbours { ifindex, source })? {
            if m.header.ifindex == ifindex {
                out.extend(usable_neighbour(&m));
            }
        }
        Ok(out)
    }

    /// Makes the kernel resolve `addr` on interface `ifindex` (ARP or neighbour
    /// discovery) and keep it resolved, by installing a managed neighbour entry (see the
    /// module documentation). Returns once the entry is installed, not once it is
    /// resolved; poll [`Netlink::neighbours`] for the MAC.
    ///
    /// A `PERMANENT` or `NOARP` entry already present is left as it is.
    pub async fn resolve(&self, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        if let Some(existing) = self.neighbour(ifindex, addr).await? {
            if matches!(existing.header.state, NeighbourState::Permanent | NeighbourState::Noarp) {
                tracing::debug!(
                    ifindex, %addr, state = %existing.header.state,
                    "static neighbour entry, leaving it alone"
                );
                return Ok(());
            }
        }
        let mut request = self.handle.neighbours().add(ifindex, addr).state(NeighbourState::None).replace();
        request.message_mut().attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        request.execute().await.map_err(|source| match errno(&source) {
            Some(libc::ENODEV) => NetlinkError::NoSuchIfindex { ifindex },
            _ => NetlinkError::Resolve { ifindex, addr, source },
        })?;
        tracing::debug!(ifindex, %addr, "installed managed neighbour entry");
        Ok(())
    }

    /// Undoes [`Netlink::resolve`]: deletes the neighbour entry for `addr` on interface
    /// `ifindex` if it is a managed one. No entry, or an entry without the managed flag
    /// (learned by the kernel, or configured by someone else), is left alone and is not
    /// an error.
    pub async fn forget(&self, ifindex: u32, addr: IpAddr) -> Result<(), NetlinkError> {
        let Some(existing) = self.neighbour(ifindex, addr).await? else {
            return Ok(());
        };
        if !ext_flags(&existing).contains(NeighbourExtFlags::Managed) {
            tracing::debug!(ifindex, %addr, "neighbour entry is not managed, leaving it alone");
            return Ok(());
        }
        let mut message = NeighbourMessage::default();
        message.header.family = existing.header.family;
        message.header.ifindex = ifindex;
        message.attributes.push(NeighbourAttribute::Destination(neighbour_address(addr)));
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => {
                tracing::debug!(ifindex, %addr, "deleted managed neighbour entry");
                Ok(())
            }
            Err(source) => match errno(&source) {
                Some(libc::ENOENT) => Ok(()),
                Some(libc::ENODEV) => Err(NetlinkError::NoSuchIfindex { ifindex }),
                _ => Err(NetlinkError::Forget { ifindex, addr, source }),
            },
        }
    }

    /// The neighbour entry for `addr` on interface `ifindex`, if there is one
    /// (a single `RTM_GETNEIGH`, not a dump; Linux ≥ 5.0).
    /// One neighbour's MAC, if its entry is usable (one request, no dump).
    pub async fn neighbour_mac(&self, ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, NetlinkError> {
        Ok(self.neighbour(ifindex, addr).await?.as_ref().and_then(usable_neighbour).map(|(_, mac)| mac))
    }

    async fn neighbour(&self, ifindex: u32, addr: IpAddr) -> Result<Option<NeighbourMessage>, NetlinkError> {
        let get_error = |source| NetlinkError::GetNeighbour { ifindex, addr, source };
        let mut query = NeighbourMessage::default();
        query.header.family = address_family(addr);
        query.header.ifindex = ifindex;
        query.attributes.push(NeighbourAttribute::Destination(neighbour_address(addr)));
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(query));
        request.header.flags = NLM_F_REQUEST;

        let mut handle = self.handle.clone();
        let mut responses = handle.request(request).map_err(get_error)?;
        let mut found = None;
        while let Some(response) = responses.next().await {
            let (header, payload) = response.into_parts();
            match payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => found = Some(m),
                NetlinkPayload::Error(e) if e.code.is_none() => {}
                NetlinkPayload::Error(e) => {
                    let source = rtnetlink::Error::NetlinkError(e);
                    return match errno(&source) {
                        Some(libc::ENOENT) => Ok(None),
                        Some(libc::ENODEV) => Err(NetlinkError::NoSuchIfindex { ifindex }),
                        _ => Err(get_error(source)),
                    };
                }
                payload => {
                    return Err(get_error(rtnetlink::Error::UnexpectedMessage(NetlinkMessage::new(header, payload))))
                }
            }
        }
        Ok(found)
    }
}

pub(super) fn neighbour_address(addr: IpAddr) -> NeighbourAddress {
    match addr {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The `NDA_FLAGS_EXT` flags of a neighbour entry (empty when the attribute is absent).
pub(super) fn ext_flags(message: &NeighbourMessage) -> NeighbourExtFlags {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            NeighbourAttribute::ExtFlags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or_default()
}

/// The IP and MAC of a neighbour entry that can be used to forward to, if it is one:
/// a usable state, a unicast IP and a 6-byte unicast link-layer address.
pub(super) fn usable_neighbour(message: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    const USABLE: u16 = 0x02 // NUD_REACHABLE
        | 0x04 // NUD_STALE
        | 0x08 // NUD_DELAY
        | 0x10 // NUD_PROBE
        | 0x40 // NUD_NOARP
        | 0x80; // NUD_PERMANENT
    if u16::from(message.header.state) & USABLE == 0 {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLayerAddress(lladdr) => mac = <[u8; 6]>::try_from(lladdr.as_slice()).ok(),
            _ => {}
        }
    }
    let (ip, mac) = (ip?, mac?);
    // NOARP entries also map multicast and broadcast groups (ff02::1 -> 33:33:00:00:00:01);
    // those are never a host to forward to.
    let unicast = !ip.is_multicast() && ip != IpAddr::V4(Ipv4Addr::BROADCAST) && mac[0] & 1 == 0;
    unicast.then_some((ip, mac))
}
