//! Ids for VIPs and backends: indexes into the maps.

use std::collections::VecDeque;

/// Hands out ids, reusing the longest-freed one last so a stale reference to a freed id
/// is unlikely to meet a new owner soon.
pub struct IdPool {
    free: VecDeque<u32>,
    pub capacity: u32,
}

impl IdPool {
    pub fn new(capacity: u32) -> Self {
        IdPool { free: (0..capacity).collect(), capacity }
    }
    pub fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }
    pub fn give(&mut self, id: u32) {
        self.free.push_back(id);
    }
    /// Marks an id in use (adoption).
    pub fn claim(&mut self, id: u32) {
        self.free.retain(|&f| f != id);
    }
}
