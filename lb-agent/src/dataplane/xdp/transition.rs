//! How a VIP's table moves from one generation to the next.
//!
//! An entry `(backend, prev)` with `backend == prev` is stable: the kernel sends every
//! flow of that slot to `backend` without reading the flow table. When a slot's
//! backend changes, it becomes `(new, old)`: established flows that are not pinned in
//! the flow table still belong to `old`, new flows go to `new`, and the kernel pins
//! what it decides. A slot already in transition keeps its original `prev` when it
//! changes again: every flow that started during the transition was pinned, so the
//! only unpinned flows are the ones from before the first change.

use lb_common::{TableEntry, NO_BACKEND, NO_PREV};

/// The next live table, from the live one and the new Maglev assignment (backend ids,
/// `NO_BACKEND` where the VIP has no weighted backend). `removed(id)` says a backend is
/// gone: no flow can go back to it, so it is not kept as a previous backend.
///
/// `assigned` may be larger than `live` (the table grows; both are powers of two): a
/// flow in slot `s` of the larger table was in slot `s & (live.len() - 1)` of the
/// smaller one (`maglev::slot_of` takes the low bits of the hash), so that slot's entry
/// is where its established flows went, and the same rules apply.
pub fn next_entries(live: &[TableEntry], assigned: &[u32], removed: impl Fn(u32) -> bool) -> Vec<TableEntry> {
    assert!(
        live.len().is_power_of_two() && assigned.len().is_multiple_of(live.len()),
        "a table only grows, by powers of two"
    );
    let mask = live.len() - 1;
    assigned
        .iter()
        .enumerate()
        .map(|(slot, &new)| {
            let e = &live[slot & mask];
            let mut next = if e.backend == NO_BACKEND && e.prev == NO_BACKEND {
                // Empty and stable: no flow can exist, the new backend starts stable.
                TableEntry { backend: new, prev: new }
            } else if new == e.backend {
                *e
            } else if e.backend == e.prev {
                TableEntry { backend: new, prev: e.backend }
            } else if new == e.prev {
                // Back to the original backend, but flows pinned during the transition
                // must still be looked up: stay in transition, unpinned flows go to `new`.
                TableEntry { backend: new, prev: NO_PREV }
            } else {
                TableEntry { backend: new, prev: e.prev }
            };
            if next.prev != next.backend && next.prev != NO_PREV && removed(next.prev) {
                // Still a transition (pinned flows must be looked up), without a prev.
                next.prev = NO_PREV;
            }
            next
        })
        .collect()
}

/// A fresh table for a new VIP: every slot stable.
pub fn fresh_entries(assigned: &[u32]) -> Vec<TableEntry> {
    assigned.iter().map(|&b| TableEntry { backend: b, prev: b }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = NO_BACKEND;
    const P: u32 = NO_PREV;
    fn e(backend: u32, prev: u32) -> TableEntry {
        TableEntry { backend, prev }
    }

    #[test]
    fn transitions() {
        // (live entry, newly assigned backend, removed backends) -> next entry
        let cases = [
            (e(1, 1), 1, vec![], e(1, 1)), // unchanged stays stable
            (e(1, 1), 2, vec![], e(2, 1)), // change starts a transition
            (e(2, 1), 2, vec![], e(2, 1)), // transition kept
            (e(2, 1), 3, vec![], e(3, 1)), // second change keeps the first prev
            (e(2, 1), 1, vec![], e(1, P)), // back to the original: pins must still be read
            (e(N, N), 4, vec![], e(4, 4)), // empty slot: new backend starts stable
            (e(1, 1), N, vec![], e(N, 1)), // all weights gone: old flows still go to 1
            (e(N, 1), 1, vec![], e(1, P)),
            (e(2, P), N, vec![], e(N, P)),  // no backend, but pinned flows continue
            (e(1, 1), 2, vec![1], e(2, P)), // prev removed: transition without prev
            (e(2, 1), 2, vec![1], e(2, P)),
            (e(2, P), 3, vec![2], e(3, P)),
        ];
        for (live, new, removed, want) in cases {
            let got = next_entries(&[live], &[new], |id| removed.contains(&id));
            assert_eq!(got[0], want, "{live:?} -> {new}");
        }
    }

    #[test]
    fn a_grown_table_continues_each_slot_of_the_smaller_one() {
        // Slot s of 8 holds the flows of slot s % 4 of 4.
        let live = vec![e(1, 1), e(2, 1), e(3, P), e(N, N)];
        let assigned = vec![1, 1, 3, 4, 2, 2, 3, 4];
        let got = next_entries(&live, &assigned, |_| false);
        let want = vec![e(1, 1), e(1, P), e(3, P), e(4, 4), e(2, 1), e(2, 1), e(3, P), e(4, 4)];
        assert_eq!(got, want);
    }

    #[test]
    fn same_assignment_is_a_fixed_point() {
        let live = vec![e(1, 1), e(2, 1), e(3, P), e(N, 2)];
        let assigned: Vec<u32> = live.iter().map(|x| x.backend).collect();
        assert_eq!(next_entries(&live, &assigned, |_| false), live);
    }
}
