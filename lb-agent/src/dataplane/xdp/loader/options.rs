//! Load-time settings: map sizes and the program's globals, and what `META` records of
//! them.

use lb_common::{Meta, ABI_VERSION, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOWS, DEFAULT_MAX_VIPS, DEFAULT_TABLE_SIZE};

/// Load-time settings: map sizes and the program's globals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The largest table a VIP gets (a power of two).
    pub table_size: u32,
    pub max_vips: u32,
    pub max_backends: u32,
    pub max_flows: u32,
    pub hash_seed: u32,
    /// Source MAC of forwarded frames (the interface's own).
    pub lb_mac: [u8; 6],
    /// `--flow-idle-timeout`: a pin silent for longer is not followed.
    pub flow_idle_ns: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            table_size: DEFAULT_TABLE_SIZE,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_flows: DEFAULT_MAX_FLOWS,
            hash_seed: 0,
            lb_mac: [0; 6],
            flow_idle_ns: 120_000_000_000,
        }
    }
}

impl LoadOptions {
    /// Entries of `TABLES` (the array of table maps): two per VIP.
    pub fn table_maps(&self) -> u32 {
        self.max_vips * 2
    }

    /// Slots of `FLOWS_NEW` (first packets of flows).
    pub fn new_flows(&self) -> u32 {
        lb_common::new_flow_slots(self.max_flows)
    }

    /// What `META` records for maps created with these options.
    pub fn meta(&self) -> Meta {
        Meta {
            abi_version: ABI_VERSION,
            table_size: self.table_size,
            hash_seed: self.hash_seed,
            max_vips: self.max_vips,
            max_backends: self.max_backends,
            max_flows: self.max_flows,
        }
    }
}
