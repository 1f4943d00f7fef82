//! Indices of the `REASONS` counters: one per verdict reason, plus notes.

/// Forwarded to a backend (XDP_TX).
pub const TX: u32 = 0;
/// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
pub const PASS_NOT_IP: u32 = 1;
/// IP, TCP or UDP, but no VIP matches (address, port, protocol): passed.
pub const PASS_NOT_VIP: u32 = 2;
/// IP but neither TCP nor UDP (ICMP, ...): passed.
pub const PASS_OTHER_PROTO: u32 = 3;
/// Frame too short for the headers it announces: passed, the kernel drops and counts it.
pub const PASS_TRUNCATED: u32 = 4;
/// IPv4 fragment: passed (fragments carry no ports, so no VIP can be matched).
pub const PASS_FRAGMENT: u32 = 5;
/// IPv6 with an extension header before the transport header: passed.
pub const PASS_IPV6_EXT: u32 = 6;
/// For a VIP that has no backend with weight: dropped.
pub const DROP_NO_BACKEND: u32 = 7;
/// The chosen backend id has no active entry (a race with a removal): dropped.
pub const DROP_BACKEND_GONE: u32 = 8;
/// A VIP's table entry could not be read (VIP id beyond the table): dropped.
pub const DROP_TABLE: u32 = 9;
/// Note, not a verdict: an IPv4 packet with options was forwarded.
pub const NOTE_IPV4_OPTIONS: u32 = 10;
/// Note: a packet consulted the flow table (its slot is in transition).
pub const NOTE_FLOW_LOOKUP: u32 = 11;
/// Note: a flow was pinned in the flow table.
pub const NOTE_FLOW_PINNED: u32 = 12;
/// Note: a non-SYN TCP packet in a changed slot went to the slot's previous backend.
pub const NOTE_PREV_BACKEND: u32 = 13;

pub const REASON_COUNT: u32 = 14;

/// Names for metrics and `status` (index = reason).
pub const REASON_NAMES: [&str; REASON_COUNT as usize] = [
    "tx",
    "pass_not_ip",
    "pass_not_vip",
    "pass_other_proto",
    "pass_truncated",
    "pass_fragment",
    "pass_ipv6_ext",
    "drop_no_backend",
    "drop_backend_gone",
    "drop_table",
    "note_ipv4_options",
    "note_flow_lookup",
    "note_flow_pinned",
    "note_prev_backend",
];
