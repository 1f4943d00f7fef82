//! The VIP addresses (`VIP_ADDRS` and the `VIP_FILTER` bits, counted per address since
//! several VIPs share one) and each VIP's source ranges (`SRC_RANGES`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use aya::maps::MapError;
use ipnet::IpNet;
use lb_common::{hash, AddrKey, SrcRangeKey, VIP_FILTER_WORDS};

use crate::dataplane::xdp::loader::Maps;
use crate::model::{addr_bytes, family};

/// Which addresses are some VIP's, and the filter words derived from them.
#[derive(Default)]
pub(super) struct AddrBook {
    users: BTreeMap<IpAddr, u32>,
    bit_users: BTreeMap<u32, u32>,
    words: BTreeMap<u32, u64>,
}

fn addr_key(addr: IpAddr) -> AddrKey {
    AddrKey { addr: addr_bytes(addr), family: family(addr), _pad: [0; 3] }
}

fn bit_of(addr: IpAddr) -> u32 {
    hash::filter_bit(&hash::addr_words(&addr_bytes(addr))) % (VIP_FILTER_WORDS * 64)
}

impl AddrBook {
    /// One more VIP on `addr`; returns the writes made.
    pub fn add(&mut self, maps: &mut Maps, addr: IpAddr) -> Result<usize, MapError> {
        let users = self.users.entry(addr).or_default();
        *users += 1;
        if *users > 1 {
            return Ok(0);
        }
        maps.vip_addrs.insert(addr_key(addr), 1, 0)?;
        let bit = bit_of(addr);
        *self.bit_users.entry(bit).or_default() += 1;
        self.write_word(maps, bit)?;
        Ok(2)
    }

    /// One VIP fewer on `addr`; returns the writes made.
    pub fn remove(&mut self, maps: &mut Maps, addr: IpAddr) -> Result<usize, MapError> {
        let Some(users) = self.users.get_mut(&addr) else { return Ok(0) };
        *users -= 1;
        if *users > 0 {
            return Ok(0);
        }
        self.users.remove(&addr);
        let bit = bit_of(addr);
        if let Some(n) = self.bit_users.get_mut(&bit) {
            *n -= 1;
            if *n == 0 {
                self.bit_users.remove(&bit);
            }
        }
        self.write_word(maps, bit)?;
        match maps.vip_addrs.remove(&addr_key(addr)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
        Ok(2)
    }

    fn write_word(&mut self, maps: &mut Maps, bit: u32) -> Result<(), MapError> {
        let index = bit / 64;
        let word = self.bit_users.range(index * 64..(index + 1) * 64).fold(0u64, |w, (b, _)| w | (1u64 << (b % 64)));
        if self.words.get(&index).copied().unwrap_or(0) != word {
            maps.vip_filter.set(index, word, 0)?;
            self.words.insert(index, word);
        }
        Ok(())
    }
}

fn range_key(vip_id: u32, net: &IpNet) -> Key<SrcRangeKey> {
    let data = SrcRangeKey { vip_id_be: vip_id.to_be_bytes(), addr: addr_bytes(net.network()) };
    Key::new(32 + u32::from(net.prefix_len()), data)
}

/// Makes `SRC_RANGES` hold `want` for a VIP that holds `had`: adds first, removes after
/// (`removals` false) or only removes (`removals` true), so that the caller can flip the
/// VIP's flag in between. Returns the writes made.
pub(super) fn sync_ranges(
    maps: &mut Maps,
    vip_id: u32,
    had: &BTreeSet<IpNet>,
    want: &BTreeSet<IpNet>,
    removals: bool,
) -> Result<usize, MapError> {
    let mut writes = 0;
    if !removals {
        for net in want.difference(had) {
            maps.src_ranges.insert(&range_key(vip_id, net), 1, 0)?;
            writes += 1;
        }
    } else {
        for net in had.difference(want) {
            match maps.src_ranges.remove(&range_key(vip_id, net)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e),
            }
            writes += 1;
        }
    }
    Ok(writes)
}

/// The source ranges written for each VIP id (adoption after a restart).
pub(super) fn read_ranges(maps: &Maps) -> Result<BTreeMap<u32, BTreeSet<IpNet>>, MapError> {
    let mut out: BTreeMap<u32, BTreeSet<IpNet>> = BTreeMap::new();
    for key in maps.src_ranges.keys() {
        let key = key?;
        let data = key.data();
        let vip_id = u32::from_be_bytes(data.vip_id_be);
        let len = key.prefix_len().saturating_sub(32);
        let v4 = len <= 32 && data.addr[4..].iter().all(|&b| b == 0);
        let addr = if v4 {
            IpAddr::from([data.addr[0], data.addr[1], data.addr[2], data.addr[3]])
        } else {
            IpAddr::from(data.addr)
        };
        if let Ok(net) = IpNet::new(addr, len as u8) {
            out.entry(vip_id).or_default().insert(net);
        }
    }
    Ok(out)
}
