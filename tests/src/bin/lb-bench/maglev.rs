//! Maglev table build: 65,536 slots for 1,000 weighted backends, timed with `Instant`
//! (the criterion bench `lb-common/benches/maglev.rs` measures the same build).

use std::hint::black_box;
use std::time::Instant;

use anyhow::{ensure, Result};
use lb_common::maglev::{self, Member};

use crate::report::{Row, Target};
use crate::stats::Summary;

pub const SLOTS: u32 = 65_536;
pub const BACKENDS: u32 = 1_000;
const TARGET: Target = Target { max: 2.0, stretch: None };

/// Backend keys as the agent makes them (16 address bytes, IPv4 first).
fn keys() -> Vec<[u8; 16]> {
    (0..BACKENDS)
        .map(|i| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
            k
        })
        .collect()
}

/// Weights 1..=10, spread over the backends.
fn weight(i: usize) -> u32 {
    1 + (i as u32 * 7) % 10
}

/// Milliseconds per build over `builds` builds (after one warm-up build).
pub fn measure(builds: usize) -> Result<Row> {
    let keys = keys();
    let members: Vec<Member<'_>> = keys.iter().enumerate().map(|(i, k)| Member { key: k, weight: weight(i) }).collect();
    let table = maglev::build(&members, SLOTS);
    ensure!(table.iter().all(|&e| e != maglev::NO_ENTRY), "Maglev table has empty slots");
    let ms: Vec<f64> = (0..builds)
        .map(|_| {
            let start = Instant::now();
            black_box(maglev::build(black_box(&members), SLOTS));
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    Ok(Row {
        case: "Maglev build, 65,536 slots × 1,000 weighted backends",
        method: format!("{builds} builds, `Instant`"),
        raw: Summary::of(&ms),
        net: None,
        target: Some(TARGET),
    })
}
