//! Indices of the `REASONS` counters: one per verdict reason, then notes.
//!
//! A packet moves exactly one verdict counter (`Reason::TX` .. `VERDICT_COUNT`); notes
//! count events on the way and may move too.

/// A `REASONS` index. Read from maps as a plain `u32` and named here; never an enum
/// read out of memory.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(pub u32);

impl Reason {
    /// Forwarded to a backend (XDP_TX).
    pub const TX: Reason = Reason(0);
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    pub const PASS_NOT_IP: Reason = Reason(1);
    /// IPv4 or IPv6 to an address that is no VIP's: passed, nothing past the IP header read.
    pub const PASS_NOT_VIP: Reason = Reason(2);
    /// The frame ends before a header it announces: passed (the kernel drops and counts it).
    pub const PASS_TRUNCATED: Reason = Reason(3);
    /// Header fields contradict each other or the frame (version, lengths, data offset):
    /// passed, never forwarded.
    pub const PASS_MALFORMED: Reason = Reason(4);
    /// ICMP echo request, or ICMPv6 echo request / neighbour discovery, to a VIP address:
    /// passed, the LB host answers.
    pub const PASS_LOCAL_ICMP: Reason = Reason(5);
    /// For a VIP that has no backend with weight: dropped.
    pub const DROP_NO_BACKEND: Reason = Reason(6);
    /// The chosen backend id has no active entry (a race with a removal): dropped.
    pub const DROP_BACKEND_GONE: Reason = Reason(7);
    /// A VIP's table entry could not be read (should never happen): dropped.
    pub const DROP_TABLE: Reason = Reason(8);
    /// To a VIP address, but not to one of its (port, protocol)s: other ports, other
    /// protocols, fragments, IPv6 extension headers, ICMP other than echo, neighbour
    /// discovery and packet-too-big: dropped, so host services never answer on a VIP.
    pub const DROP_CLOSED: Reason = Reason(9);
    /// The VIP has source ranges and the client is outside them: dropped.
    pub const DROP_SOURCE_RANGE: Reason = Reason(10);
    /// Note: a forwarded IPv4 packet carried options.
    pub const NOTE_IPV4_OPTIONS: Reason = Reason(11);
    /// Note: a packet consulted the flow tables.
    pub const NOTE_FLOW_LOOKUP: Reason = Reason(12);
    /// Note: a flow entry was written (a new flow, or a flow confirmed by its next packet).
    pub const NOTE_FLOW_PINNED: Reason = Reason(13);
    /// Note: a non-SYN TCP packet in a changed slot went to the slot's previous backend.
    pub const NOTE_PREV_BACKEND: Reason = Reason(14);
    /// Note: an ICMP "fragmentation needed" / ICMPv6 "packet too big" about a VIP flow
    /// went to that flow's backend (path MTU discovery).
    pub const NOTE_ICMP_PTB: Reason = Reason(15);

    /// The index as the map takes it.
    #[inline(always)]
    pub const fn index(self) -> u32 {
        self.0
    }

    /// The name used in metrics and `status`.
    pub fn name(self) -> &'static str {
        match REASON_NAMES.get(self.0 as usize) {
            Some(n) => n,
            None => "unknown",
        }
    }

    /// A verdict (exactly one per packet), as opposed to a note.
    pub const fn is_verdict(self) -> bool {
        self.0 < VERDICT_COUNT
    }
}

/// Reasons below this are verdicts; the rest are notes.
pub const VERDICT_COUNT: u32 = 11;
pub const REASON_COUNT: u32 = 16;

/// Names for metrics and `status` (index = reason).
pub const REASON_NAMES: [&str; REASON_COUNT as usize] = [
    "tx",
    "pass_not_ip",
    "pass_not_vip",
    "pass_truncated",
    "pass_malformed",
    "pass_local_icmp",
    "drop_no_backend",
    "drop_backend_gone",
    "drop_table",
    "drop_closed",
    "drop_source_range",
    "note_ipv4_options",
    "note_flow_lookup",
    "note_flow_pinned",
    "note_prev_backend",
    "note_icmp_ptb",
];
