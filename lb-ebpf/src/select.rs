//! Backend choice: the Maglev slot, then the flow tables where a flow's backend must
//! not change with the table.
//!
//! * TCP in a stable slot (current backend == previous): the slot's backend, no
//!   flow-table work at all. That is nearly every packet.
//! * TCP in a changed slot, and every UDP packet: a pin in `FLOWS` wins, then one in
//!   `FLOWS_NEW` (that flow's second packet: it is confirmed into `FLOWS`); otherwise
//!   `maglev::unpinned_choice` decides and the choice is pinned in `FLOWS_NEW`. A flood
//!   of one-packet flows therefore churns `FLOWS_NEW` only.
//! * Client-address affinity: a pin per client (port 0), in the same two tables; see
//!   `affinity`.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    hash, maglev, stats::Reason, table_index, Backend, FlowKey, FlowValue, NewPin, TableEntry, VipMeta, BACKEND_F_ACTIVE,
    BACKEND_F_DRAINING, FLOW_F_CLOSING, FLOW_F_MOVED, NO_BACKEND, NO_PREV, PROTO_TCP, PROTO_UDP, TABLE_CLASSES, VIP_F_AFFINITY,
};

use crate::{
    maps::{flow_idle_ns, hash_seed, new_mask, BACKENDS, FLOWS, FLOWS_NEW, TABLES_1K, TABLES_256, TABLES_64K, TABLES_8K},
    stats::note,
};

/// A flow-table entry's `last_seen_ns` is refreshed when older than this.
const REFRESH_NS: u64 = 1_000_000_000;

/// The packet as the choice sees it (for an ICMP error: the quoted flow's forward
/// direction).
#[derive(Clone, Copy, Default)]
pub struct Flow {
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub syn: bool,
    pub closing: bool,
    /// An ICMP error about the flow: follows pins, writes none.
    pub icmp: bool,
}

/// A backend chosen for a packet: its id, and its entry when already validated.
type Choice = (u32, Option<&'static Backend>);

/// The backend for this packet, with its id.
#[inline(always)]
pub fn backend(flow: &Flow, meta: &VipMeta) -> Result<(u32, &'static Backend), Reason> {
    let affinity = meta.flags & VIP_F_AFFINITY != 0;
    let ports = hash::vip_ports_word(affinity, flow.src_port_be, flow.dst_port_be);
    let h = hash::flow_hash_words(flow.family, &flow.src, &flow.dst, ports, flow.proto, hash_seed());
    let slot = maglev::slot_of(h, meta.mask);
    let index = table_index(meta.half, meta.mask, slot);
    let entry: TableEntry = table_entry(meta, index).ok_or(Reason::DROP_TABLE)?;
    let (id, found) = if affinity {
        self::affinity(flow, meta, &entry)
    } else if entry.backend == entry.prev && flow.proto != PROTO_UDP {
        (entry.backend, None)
    } else {
        pinned_or_chosen(flow, meta, &entry)
    };
    if id == NO_BACKEND {
        return Err(Reason::DROP_NO_BACKEND);
    }
    // A backend a pin lookup already validated is not looked up twice.
    match found.or_else(|| active(id, meta.id)) {
        Some(b) => Ok((id, b)),
        None => Err(Reason::DROP_BACKEND_GONE),
    }
}

/// The entry at `index` of the VIP's table map, in the array of its size.
#[inline(always)]
fn table_entry(meta: &VipMeta, index: u32) -> Option<TableEntry> {
    let packed = match meta.mask + 1 {
        s if s == TABLE_CLASSES[0] => entry_256(meta.table, index),
        s if s == TABLE_CLASSES[1] => entry_1k(meta.table, index),
        s if s == TABLE_CLASSES[2] => entry_8k(meta.table, index),
        _ => entry_64k(meta.table, index),
    };
    (packed != NO_TABLE).then_some(TableEntry { backend: packed as u32, prev: (packed >> 32) as u32 })
}

/// "No table map there" from the lookups below (no entry has `NO_PREV` as its backend).
const NO_TABLE: u64 = (NO_PREV as u64) << 32 | NO_PREV as u64;

/// One lookup function per array of table maps, each out of line: the verifier inlines
/// the inner lookup only where one call site sees one inner map size, and inlined
/// lookups in one function would be merged by LLVM into a single call site.
macro_rules! table_lookup {
    ($name:ident, $tables:ident) => {
        #[inline(never)]
        fn $name(place: u32, index: u32) -> u64 {
            match $tables.get_value(place, &index) {
                Some(e) => e.backend as u64 | (e.prev as u64) << 32,
                None => NO_TABLE,
            }
        }
    };
}
table_lookup!(entry_256, TABLES_256);
table_lookup!(entry_1k, TABLES_1K);
table_lookup!(entry_8k, TABLES_8K);
table_lookup!(entry_64k, TABLES_64K);

#[inline(always)]
fn active(id: u32, vip_id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    (b.flags & BACKEND_F_ACTIVE != 0 && b.vip_id == vip_id).then_some(b)
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn key_of(flow: &Flow, vip_id: u32, src_port_be: u16) -> FlowKey {
    let mut src_addr = [0u8; 16];
    // SAFETY: 16 bytes, an unaligned store of four words.
    unsafe { (src_addr.as_mut_ptr() as *mut [u32; 4]).write_unaligned(flow.src) };
    FlowKey { src_addr, vip_id, src_port_be, _pad: 0 }
}

/// Non-affinity flows in changed slots, and UDP: see the module docs. Out of line, so
/// the stable path keeps a small stack (and the deepest call chain within 512 bytes).
#[inline(never)]
fn pinned_or_chosen(flow: &Flow, meta: &VipMeta, entry: &TableEntry) -> Choice {
    note(Reason::NOTE_FLOW_LOOKUP);
    let key = key_of(flow, meta.id, flow.src_port_be);
    let now = now_ns();
    if !flow.syn {
        if let Some(hit) = find_pin(&key, meta, flow, now, 0) {
            return hit;
        }
    }
    let tcp = flow.proto == PROTO_TCP;
    let prev = if tcp && !flow.syn { active(entry.prev, meta.id) } else { None };
    let (chosen, used_prev) = maglev::unpinned_choice(entry, tcp, flow.syn, prev.is_some());
    if used_prev {
        note(Reason::NOTE_PREV_BACKEND);
    }
    if chosen != NO_BACKEND && !flow.icmp {
        pin_new(&key, chosen, flow.closing, now);
    }
    (chosen, if used_prev { prev } else { None })
}

/// A usable pin for `key`: `FLOWS` first, then `FLOWS_NEW`, whose hit is the flow's
/// next packet and is confirmed into `FLOWS`. A closing pin in `FLOWS` gives way to a
/// newer one in `FLOWS_NEW` (a new connection on the same ports, after a FIN or RST).
/// For an ICMP error nothing is written. `timeout_s` is 0 for a flow's own pin.
#[inline(always)]
fn find_pin(key: &FlowKey, meta: &VipMeta, flow: &Flow, now: u64, timeout_s: u32) -> Option<Choice> {
    let mut closing: Option<(*mut FlowValue, &'static Backend)> = None;
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value, valid for this program run; per-field races with other
        // CPUs only lose a refresh.
        let pin = unsafe { &mut *v };
        if let Some(b) = usable(pin, meta.id, timeout_s, flow.syn, now) {
            if pin.flags & FLOW_F_CLOSING == 0 || flow.icmp {
                if !flow.icmp {
                    refresh(pin, now, flow.closing);
                }
                return Some((pin.backend, Some(b)));
            }
            closing = Some((v, b));
        }
    }
    // SAFETY (both derefs): the `FLOWS` value found above, valid for this program run.
    let closed_at = closing.map_or(0, |(v, _)| unsafe { (*v).last_seen_ns });
    // A first-packet pin no newer than a closing confirmed one is that connection's own
    // (stale) first packet: the confirmed pin stands.
    let newer = new_get(key).filter(|p| p.last_seen_ns > closed_at);
    let found = newer.and_then(|p| usable(&p, meta.id, timeout_s, flow.syn, now).map(|b| (p, b)));
    let Some((mut pin, b)) = found else {
        let (v, b) = closing?;
        let pin = unsafe { &mut *v };
        refresh(pin, now, flow.closing);
        return Some((pin.backend, Some(b)));
    };
    if !flow.icmp {
        pin.last_seen_ns = now;
        if flow.closing {
            pin.flags |= FLOW_F_CLOSING;
        }
        if FLOWS.insert(key, &pin, 0).is_ok() {
            note(Reason::NOTE_FLOW_PINNED);
        }
    }
    Some((pin.backend, Some(b)))
}

/// The pin's backend, if the packet may follow it (`maglev::pin_usable`).
#[inline(always)]
fn usable(pin: &FlowValue, vip_id: u32, timeout_s: u32, syn: bool, now: u64) -> Option<&'static Backend> {
    let b = active(pin.backend, vip_id);
    let state = maglev::Pin {
        active: b.is_some(),
        draining: b.is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0),
        age_ns: now.saturating_sub(pin.last_seen_ns),
    };
    if maglev::pin_usable(timeout_s, flow_idle_ns(), syn, &state) {
        b
    } else {
        None
    }
}

#[inline(always)]
fn refresh(pin: &mut FlowValue, now: u64, closing: bool) {
    if now.saturating_sub(pin.last_seen_ns) > REFRESH_NS {
        pin.last_seen_ns = now;
    }
    if closing && pin.flags & FLOW_F_CLOSING == 0 {
        pin.flags |= FLOW_F_CLOSING;
    }
}

/// Pins a first packet's choice in `FLOWS_NEW`.
#[inline(always)]
fn pin_new(key: &FlowKey, backend: u32, closing: bool, now: u64) {
    let flags = if closing { FLOW_F_CLOSING } else { 0 };
    new_put(key, &FlowValue { backend, flags, last_seen_ns: now, moved_from: 0, _pad: 0 });
}

/// The first-packet pin of `key`, if one of its two slots holds it whole.
#[inline(always)]
fn new_get(key: &FlowKey) -> Option<FlowValue> {
    let (a, b) = hash::new_pin_slots(key, new_mask());
    for index in [a, b] {
        let slot = FLOWS_NEW.get_ptr(index)?;
        // SAFETY: an array value, copied out at once (a concurrent writer is caught by
        // `check`).
        let e = unsafe { &*slot };
        if e.key == *key {
            let e = *e;
            return (e.check == hash::new_pin_check(&e.key, &e.value)).then_some(e.value);
        }
    }
    None
}

/// Writes a first-packet pin into both of its slots, blindly: no read of the slots (on
/// a cold table a read-before-write costs a cache miss; the stores do not wait), and a
/// pin is lost only if other first packets overwrite both slots before its flow's next
/// packet.
#[inline(always)]
fn new_put(key: &FlowKey, value: &FlowValue) {
    let (a, b) = hash::new_pin_slots(key, new_mask());
    let pin = NewPin { key: *key, value: *value, check: hash::new_pin_check(key, value), _pad: 0 };
    for index in [a, b] {
        if let Some(slot) = FLOWS_NEW.get_ptr_mut(index) {
            // SAFETY: an array value, valid for this program run.
            unsafe { *slot = pin };
        }
    }
    note(Reason::NOTE_FLOW_PINNED);
}

/// Client-address affinity. A client pin (port 0) sends every flow of the client to one
/// backend while it is younger than the timeout. A first packet (a TCP SYN, or a UDP
/// datagram of a flow with no pin of its own) does not follow a pin to a draining
/// backend: it gets the table's backend and the client is re-pinned, marked
/// `FLOW_F_MOVED` with the old backend in `moved_from` if that one is still active.
/// Packets of the client's connections from before then go on to `moved_from`, each
/// pinned on its own; connections made after the move are pinned on their own too. So
/// an established connection never moves.
#[inline(never)]
fn affinity(flow: &Flow, meta: &VipMeta, entry: &TableEntry) -> Choice {
    note(Reason::NOTE_FLOW_LOOKUP);
    let now = now_ns();
    let udp = flow.proto == PROTO_UDP;
    let conn = key_of(flow, meta.id, flow.src_port_be);
    // UDP flows are pinned one by one as well: a known flow keeps its backend.
    if udp {
        if let Some(hit) = find_pin(&conn, meta, flow, now, 0) {
            return hit;
        }
    }
    let first = flow.syn || udp;
    let client = key_of(flow, meta.id, 0);
    let found = ClientPin::find(&client);
    if let Some(pin) = &found {
        let value = pin.value();
        if let Some(b) = usable(&value, meta.id, meta.affinity_timeout_s, first, now) {
            if value.flags & FLOW_F_MOVED != 0 && !first {
                if let Some(hit) = find_pin(&conn, meta, flow, now, 0) {
                    return hit;
                }
                // A connection from before the move.
                if let Some(old) = active(value.moved_from, meta.id) {
                    if !flow.icmp {
                        pin_new(&conn, value.moved_from, flow.closing, now);
                    }
                    return (value.moved_from, Some(old));
                }
            }
            if !flow.icmp {
                if first && (value.flags & FLOW_F_MOVED != 0 || udp) {
                    pin_new(&conn, value.backend, flow.closing, now);
                }
                pin.keep(&client, now);
            }
            return (value.backend, Some(b));
        }
    }
    // No usable client pin: the table decides, as for a flow without affinity.
    let tcp = !udp;
    let prev = if tcp && !first { active(entry.prev, meta.id) } else { None };
    let (chosen, used_prev) = maglev::unpinned_choice(entry, tcp, first, prev.is_some());
    let choice = (chosen, if used_prev { prev } else { None });
    if chosen == NO_BACKEND || flow.icmp {
        return choice;
    }
    let moved_from = match &found {
        Some(old) if old.value().backend != chosen && active(old.value().backend, meta.id).is_some() => {
            old.value().backend
        }
        _ => NO_BACKEND,
    };
    let flags = if moved_from != NO_BACKEND { FLOW_F_MOVED } else { 0 };
    let value = FlowValue { backend: chosen, flags, last_seen_ns: now, moved_from, _pad: 0 };
    match found {
        // SAFETY: a `FLOWS` value, valid for this program run.
        Some(ClientPin::Confirmed(v)) => unsafe { *v = value },
        _ => new_put(&client, &value),
    }
    if flags != 0 || udp {
        pin_new(&conn, chosen, flow.closing, now);
    }
    choice
}

/// A client pin and where it lives.
enum ClientPin {
    /// In `FLOWS`: updated in place.
    Confirmed(*mut FlowValue),
    /// In `FLOWS_NEW` (copied out): its next use confirms it into `FLOWS`.
    New(FlowValue),
}

impl ClientPin {
    #[inline(always)]
    fn find(key: &FlowKey) -> Option<ClientPin> {
        if let Some(v) = FLOWS.get_ptr_mut(key) {
            return Some(ClientPin::Confirmed(v));
        }
        new_get(key).map(ClientPin::New)
    }

    #[inline(always)]
    fn value(&self) -> FlowValue {
        match self {
            // SAFETY: a `FLOWS` value, valid for this program run.
            ClientPin::Confirmed(v) => unsafe { **v },
            ClientPin::New(v) => *v,
        }
    }

    /// Refreshes the pin (or confirms it into `FLOWS`).
    #[inline(always)]
    fn keep(&self, key: &FlowKey, now: u64) {
        match self {
            // SAFETY: as in `value`.
            ClientPin::Confirmed(v) => refresh(unsafe { &mut **v }, now, false),
            ClientPin::New(v) => {
                let value = FlowValue { last_seen_ns: now, ..*v };
                if FLOWS.insert(key, &value, 0).is_ok() {
                    note(Reason::NOTE_FLOW_PINNED);
                }
            }
        }
    }
}
