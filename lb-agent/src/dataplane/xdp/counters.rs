//! Reading the per-CPU counters back.

use aya::maps::{MapData, MapError, PerCpuArray};
use lb_common::stats::{REASON_COUNT, REASON_NAMES};
use lb_common::{Counter, Traffic};

/// The sum over CPUs of one counter.
pub fn read(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Counter, MapError> {
    let values = map.get(&index, 0)?;
    Ok(values
        .iter()
        .fold(Counter::default(), |acc, c| Counter { packets: acc.packets + c.packets, bytes: acc.bytes + c.bytes }))
}

/// Every verdict reason with its counter, in index order.
pub fn reasons(map: &PerCpuArray<MapData, Counter>) -> Result<Vec<(&'static str, Counter)>, MapError> {
    (0..REASON_COUNT).map(|i| Ok((REASON_NAMES[i as usize], read(map, i)?))).collect()
}

/// The sum over CPUs of one VIP's or backend's traffic.
pub fn traffic(map: &PerCpuArray<MapData, Traffic>, index: u32) -> Result<Traffic, MapError> {
    let values = map.get(&index, 0)?;
    Ok(values.iter().fold(Traffic::default(), |acc, c| Traffic {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
        new_flows: acc.new_flows + c.new_flows,
    }))
}
