//! Weighted Maglev consistent hashing.
//!
//! The lookup (`slot_of`) is what the kernel does; the builder (`build`, `delta`) runs
//! in userspace. The builder's output depends only on the backends' keys and weights
//! (never on their order or on ids), so every LB host given the same backends builds
//! the same table and picks the same backend for a flow.

/// The slot a flow hash falls into in a table of `mask + 1` slots (a power of two).
/// The low bits of the hash: a slot of a table twice the size holds a subset of the
/// flows of one slot of the smaller table, which is what lets a table grow without
/// moving established flows.
#[inline(always)]
pub fn slot_of(hash: u32, mask: u32) -> u32 {
    hash & mask
}

/// The backend for a packet in a changed slot (`entry.backend != entry.prev`) that has
/// no usable flow-table entry: a TCP packet that is not a SYN belongs to a connection
/// older than the change and goes to the previous backend if that one is still active;
/// anything else is a new flow for the current backend. Returns (backend, used_prev).
/// The kernel and `lb-agent explain` both decide with this function.
#[inline(always)]
pub fn unpinned_choice(entry: &crate::TableEntry, tcp: bool, syn: bool, prev_active: bool) -> (u32, bool) {
    if tcp && !syn && prev_active {
        (entry.prev, true)
    } else {
        (entry.backend, false)
    }
}

/// What the kernel knows about a flow-table entry when it finds one.
#[derive(Clone, Copy, Debug)]
pub struct Pin {
    /// The pinned backend is active and serves this VIP.
    pub active: bool,
    /// The pinned backend is draining.
    pub draining: bool,
    /// Nanoseconds since the entry last saw a packet.
    pub age_ns: u64,
}

/// May a packet follow a flow-table entry? Without affinity only packets of an
/// established flow do (a SYN starts a new connection), and only while the flow has not
/// been silent for longer than `idle_ns` (then it is dead, and a packet with the same
/// addresses and ports starts a new flow; 0 = no limit). With affinity (timeout > 0) the
/// entry pins the client: any packet follows it while it is younger than the timeout,
/// except that a new connection is not sent to a draining backend.
#[inline(always)]
pub fn pin_usable(affinity_timeout_s: u32, idle_ns: u64, syn: bool, pin: &Pin) -> bool {
    if !pin.active {
        return false;
    }
    if affinity_timeout_s > 0 {
        pin.age_ns <= affinity_timeout_s as u64 * 1_000_000_000 && !(syn && pin.draining)
    } else {
        !syn && (idle_ns == 0 || pin.age_ns <= idle_ns)
    }
}

#[cfg(feature = "user")]
pub use builder::*;

#[cfg(feature = "user")]
mod builder {
    use super::NO_ENTRY;
    use crate::hash::bytes_hash;
    use alloc::vec;
    use alloc::vec::Vec;

    /// One backend as the builder sees it: a stable identity and a weight.
    #[derive(Clone, Copy, Debug)]
    pub struct Member<'a> {
        /// Identity that is the same on every host (the backend's address bytes).
        pub key: &'a [u8],
        pub weight: u32,
    }

    const OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
    const SKIP_SEED: u64 = 0x6d61_676c_6576_0002;

    /// Builds a table of `size` slots (a power of two). Each slot holds an index into
    /// `members`, or `NO_ENTRY` for every slot when no member has weight.
    ///
    /// Weighted variant of Maglev's population: members take turns in key order; in
    /// each round a member earns its weight in credit and places one entry (at the
    /// next free position of its own permutation) per `max_weight` of credit. Shares
    /// are therefore proportional to weights, up to one entry per member.
    pub fn build(members: &[Member<'_>], size: u32) -> Vec<u32> {
        assert!(size.is_power_of_two() && size >= 2, "Maglev table size {size} is not a power of two");
        let m = size as u64;
        let mut table = vec![NO_ENTRY; size as usize];
        let max_weight = members.iter().map(|b| b.weight).max().unwrap_or(0);
        if max_weight == 0 {
            return table;
        }
        let mut order: Vec<usize> = (0..members.len()).filter(|&i| members[i].weight > 0).collect();
        order.sort_by(|&a, &b| members[a].key.cmp(members[b].key));

        // Per member: next candidate position and step of its permutation, and credit.
        let mut next: Vec<u64> = order.iter().map(|&i| bytes_hash(members[i].key, OFFSET_SEED) % m).collect();
        // An odd step visits every slot of a power-of-two table.
        let skip: Vec<u64> = order.iter().map(|&i| (bytes_hash(members[i].key, SKIP_SEED) % (m / 2)) * 2 + 1).collect();
        let mut credit: Vec<u64> = vec![0; order.len()];

        let mut filled = 0u64;
        loop {
            for (k, &i) in order.iter().enumerate() {
                credit[k] += members[i].weight as u64;
                while credit[k] >= max_weight as u64 {
                    credit[k] -= max_weight as u64;
                    // Probe this member's permutation for its next free slot.
                    loop {
                        let c = next[k] as usize;
                        next[k] += skip[k];
                        if next[k] >= m {
                            next[k] -= m;
                        }
                        if table[c] == NO_ENTRY {
                            table[c] = i as u32;
                            break;
                        }
                    }
                    filled += 1;
                    if filled == m {
                        return table;
                    }
                }
            }
        }
    }

    /// Slots whose entry differs between two tables of the same size, with the new entry.
    pub fn delta<'t>(old: &'t [u32], new: &'t [u32]) -> impl Iterator<Item = (u32, u32)> + 't {
        assert_eq!(old.len(), new.len(), "Maglev tables of different sizes");
        old.iter().zip(new).enumerate().filter(|(_, (o, n))| o != n).map(|(slot, (_, &n))| (slot as u32, n))
    }

    /// How many slots each member holds.
    pub fn shares(table: &[u32], members: usize) -> Vec<u32> {
        let mut out = vec![0u32; members];
        for &e in table {
            if let Some(c) = out.get_mut(e as usize) {
                *c += 1;
            }
        }
        out
    }
}

/// Table value for "no member" in builder output.
pub const NO_ENTRY: u32 = u32::MAX;

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    extern crate std;
    use std::format;
    use std::string::String;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1)).collect()
    }

    fn members<'a>(names: &'a [String], weights: &[u32]) -> Vec<Member<'a>> {
        names.iter().zip(weights).map(|(n, &w)| Member { key: n.as_bytes(), weight: w }).collect()
    }

    #[test]
    fn deterministic_and_order_independent() {
        let n = names(7);
        let w = [1, 2, 3, 4, 5, 6, 7];
        let a = build(&members(&n, &w), 1024);
        assert_eq!(a, build(&members(&n, &w), 1024));
        // Same members in reverse order: same backend (by key) in every slot.
        let rev_n: Vec<String> = n.iter().rev().cloned().collect();
        let rev_w: Vec<u32> = w.iter().rev().copied().collect();
        let b = build(&members(&rev_n, &rev_w), 1024);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(n[*x as usize], rev_n[*y as usize]);
        }
    }

    #[test]
    fn no_empty_slot_while_any_weight() {
        let n = names(5);
        let t = build(&members(&n, &[0, 0, 3, 0, 0]), 256);
        assert!(t.iter().all(|&e| e == 2));
        let t = build(&members(&n, &[1, 1, 1, 1, 1]), 256);
        assert!(t.iter().all(|&e| e != NO_ENTRY));
        let t = build(&members(&n, &[0, 0, 0, 0, 0]), 256);
        assert!(t.iter().all(|&e| e == NO_ENTRY));
        assert!(build(&[], 256).iter().all(|&e| e == NO_ENTRY));
    }

    #[test]
    fn shares_follow_weights_within_one_percent() {
        for (count, size) in [(3usize, 65_536u32), (10, 65_536), (100, 65_536), (13, 16_384)] {
            let n = names(count);
            let w: Vec<u32> = (0..count as u32).map(|i| 1 + (i * 7) % 10).collect();
            let t = build(&members(&n, &w), size);
            let total: u32 = w.iter().sum();
            for (i, got) in shares(&t, count).iter().enumerate() {
                let want = size as f64 * w[i] as f64 / total as f64;
                let err = (*got as f64 - want).abs() / size as f64;
                assert!(err <= 0.01, "{count} backends, #{i}: {got} slots, want {want:.0}");
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_little() {
        for count in [3usize, 5, 10, 50, 100] {
            let n = names(count);
            let w = alloc::vec![1u32; count];
            let before = build(&members(&n, &w), 65_536);
            let mut w2 = w.clone();
            w2[count / 2] = 0;
            let after = build(&members(&n, &w2), 65_536);
            let moved = delta(&before, &after).count() as f64 / 65_536.0;
            let bound = 1.0 / count as f64 + 0.01;
            assert!(moved <= bound, "{count} backends: moved {moved:.4} > {bound:.4}");
        }
    }

    #[test]
    fn weight_change_moves_proportionally() {
        let n = names(4);
        let before = build(&members(&n, &[10, 10, 10, 10]), 16_384);
        let after = build(&members(&n, &[10, 10, 10, 20]), 16_384);
        // Backend 3 grows from 25 % to 40 %: about 15 % of slots must move, not more
        // than a few points beyond that.
        let moved = delta(&before, &after).count() as f64 / 16_384.0;
        assert!(moved <= 0.20, "moved {moved}");
    }

    #[test]
    fn same_input_gives_empty_delta() {
        let n = names(10);
        let w = [5u32; 10];
        let a = build(&members(&n, &w), 4_096);
        let b = build(&members(&n, &w), 4_096);
        assert_eq!(delta(&a, &b).count(), 0);
    }
}
