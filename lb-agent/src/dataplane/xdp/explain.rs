//! Which backend the kernel picks for a flow, and why: the same hash, table and
//! decision code as the XDP program, run against the live maps.

use std::fmt;
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use aya::maps::MapError;
use lb_common::{
    hash, maglev, Backend, FlowKey, FlowValue, SrcRangeKey, TableEntry, VipMeta, BACKEND_F_ACTIVE, BACKEND_F_DRAINING,
    FLOW_F_MOVED, NO_BACKEND, SRC_RANGE_FULL_PREFIX, VIP_F_AFFINITY, VIP_F_NO_BACKENDS, VIP_F_SOURCE_RANGES,
};

use crate::dataplane::xdp::loader::Maps;
use crate::dataplane::xdp::monotonic_coarse_ns;
use crate::model::{addr_bytes, family, Protocol, Vip};

/// A flow to explain.
#[derive(Clone, Copy, Debug)]
pub struct Query {
    pub src: IpAddr,
    pub src_port: u16,
    pub vip: Vip,
    /// Explain the first packet (a TCP SYN) rather than a packet of an established flow.
    /// (Every UDP packet without a pin of its own is a first packet.)
    pub syn: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No VIP matches: the kernel gets the packet.
    NotAVip,
    /// The VIP has no backend that can take the packet.
    NoBackend,
    /// The client is outside the VIP's source ranges: dropped.
    SourceRange,
    /// Affinity: the client was re-pinned, and this connection from before goes on to
    /// the backend it had.
    BeforeMove,
    /// The slot is stable: its backend, without a flow-table lookup.
    Stable,
    /// The slot changed and the flow is pinned in the flow table.
    Pinned,
    /// The slot changed; an unpinned established TCP flow goes to the previous backend.
    PreviousBackend,
    /// The slot changed; a new flow goes to the current backend (and is pinned).
    NewFlow,
}

#[derive(Clone, Copy, Debug)]
pub struct Explanation {
    pub reason: Reason,
    pub vip_id: Option<u32>,
    pub slot: Option<u32>,
    pub entry: Option<TableEntry>,
    pub backend_id: Option<u32>,
    pub backend: Option<Backend>,
}

impl Explanation {
    fn none(reason: Reason, vip_id: Option<u32>) -> Self {
        Explanation { reason, vip_id, slot: None, entry: None, backend_id: None, backend: None }
    }
}

/// A pin as the kernel finds it: `FLOWS` first, then `FLOWS_NEW`.
fn find_pin(maps: &Maps, key: &FlowKey) -> Result<Option<FlowValue>, MapError> {
    match maps.flows.get(key, 0) {
        Ok(v) => return Ok(Some(v)),
        Err(MapError::KeyNotFound) => {}
        Err(e) => return Err(e),
    }
    maps.flows_new.get(key).map_err(MapError::IoError)
}

/// Mirrors `lb-ebpf`'s `vip` and `select` for a TCP or UDP packet of a client.
pub fn explain(maps: &Maps, seed: u32, q: &Query) -> Result<Explanation, MapError> {
    let meta: VipMeta = match maps.vips.get(&q.vip.key(), 0) {
        Ok(m) => m,
        Err(MapError::KeyNotFound) => return Ok(Explanation::none(Reason::NotAVip, None)),
        Err(e) => return Err(e),
    };
    if meta.flags & VIP_F_SOURCE_RANGES != 0 && !source_allowed(maps, meta.id, q.src)? {
        return Ok(Explanation::none(Reason::SourceRange, Some(meta.id)));
    }
    if meta.flags & VIP_F_NO_BACKENDS != 0 {
        return Ok(Explanation::none(Reason::NoBackend, Some(meta.id)));
    }
    let affinity = meta.flags & VIP_F_AFFINITY != 0;
    let (s, d) = (hash::addr_words(&addr_bytes(q.src)), hash::addr_words(&addr_bytes(q.vip.addr)));
    let ports = hash::vip_ports_word(affinity, q.src_port.to_be(), q.vip.port.to_be());
    let h = hash::flow_hash_words(family(q.vip.addr), &s, &d, ports, q.vip.proto.number(), seed);
    let slot = maglev::slot_of(h, meta.mask);
    let entry = maps.tables.get(&meta, meta.half, slot)?;
    let active = |id: u32| -> Result<Option<Backend>, MapError> {
        if id >= maps.backends.len() {
            return Ok(None);
        }
        let b = maps.backends.get(&id, 0)?;
        Ok((b.flags & BACKEND_F_ACTIVE != 0 && b.vip_id == meta.id).then_some(b))
    };
    let usable = |v: &FlowValue, timeout: u32, syn: bool| -> Result<bool, MapError> {
        let b = active(v.backend)?;
        let pin = maglev::Pin {
            active: b.is_some(),
            draining: b.is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0),
            age_ns: monotonic_coarse_ns().saturating_sub(v.last_seen_ns),
        };
        Ok(maglev::pin_usable(timeout, 0, syn, &pin))
    };
    let udp = q.vip.proto == Protocol::Udp;
    let tcp = !udp;
    let conn = FlowKey { src_addr: addr_bytes(q.src), vip_id: meta.id, src_port_be: q.src_port.to_be(), _pad: 0 };
    let (id, reason) = if entry.backend == entry.prev && !affinity && !udp {
        (entry.backend, Reason::Stable)
    } else {
        // A flow's own pin (UDP, established TCP), then for affinity the client's pin.
        let own =
            if q.syn && tcp { None } else { find_pin(maps, &conn)?.filter(|v| usable(v, 0, false).unwrap_or(false)) };
        let first = q.syn || udp;
        let client = if affinity {
            find_pin(maps, &FlowKey { src_port_be: 0, ..conn })?
                .filter(|v| usable(v, meta.affinity_timeout_s, first).unwrap_or(false))
        } else {
            None
        };
        match (own, client) {
            (Some(v), _) if !affinity || udp || client.is_some_and(|c| c.flags & FLOW_F_MOVED != 0) => {
                (v.backend, Reason::Pinned)
            }
            (None, Some(c)) if c.flags & FLOW_F_MOVED != 0 && !first && active(c.moved_from)?.is_some() => {
                (c.moved_from, Reason::BeforeMove)
            }
            (_, Some(c)) => (c.backend, Reason::Pinned),
            _ => {
                let prev_active = tcp && !first && active(entry.prev)?.is_some();
                let (id, used_prev) = maglev::unpinned_choice(&entry, tcp, first, prev_active);
                (id, if used_prev { Reason::PreviousBackend } else { Reason::NewFlow })
            }
        }
    };
    let backend = if id == NO_BACKEND { None } else { active(id)? };
    let reason = if backend.is_none() { Reason::NoBackend } else { reason };
    Ok(Explanation {
        reason,
        vip_id: Some(meta.id),
        slot: Some(slot),
        entry: Some(entry),
        backend_id: Some(id).filter(|&i| i != NO_BACKEND),
        backend,
    })
}

/// Is `client` inside one of the VIP's source ranges (as the kernel's LPM lookup)?
fn source_allowed(maps: &Maps, vip_id: u32, client: IpAddr) -> Result<bool, MapError> {
    let data = SrcRangeKey { vip_id_be: vip_id.to_be_bytes(), addr: addr_bytes(client) };
    match maps.src_ranges.get(&Key::new(SRC_RANGE_FULL_PREFIX, data), 0) {
        Ok(_) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(e),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            Reason::NotAVip => "no VIP matches: passed to the kernel",
            Reason::NoBackend => "no backend can take it: dropped",
            Reason::SourceRange => "the client is outside the VIP's source ranges: dropped",
            Reason::BeforeMove => "client re-pinned; this connection from before keeps its backend",
            Reason::Stable => "table slot is stable",
            Reason::Pinned => "slot changed; flow pinned in the flow table",
            Reason::PreviousBackend => "slot changed; established flow kept on the previous backend",
            Reason::NewFlow => "slot changed; new flow to the current backend",
        };
        match (self.backend, self.backend_id, self.slot) {
            (Some(b), Some(id), Some(slot)) => {
                let addr = crate::model::addr_from_bytes(b.family, &b.addr);
                let m = b.mac;
                write!(
                    f,
                    "backend {addr} (id {id}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}): slot {slot}, {why}",
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            }
            _ => f.write_str(why),
        }
    }
}
