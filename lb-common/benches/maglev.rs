//! Maglev table build: 65,537 slots for 1,000 weighted backends (target ≤ 2 ms).
//! `cargo bench -p lb-common --features user --bench maglev`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lb_common::maglev::{build, Member};

const SLOTS: u32 = 65_536;
const BACKENDS: u32 = 1_000;

/// Backend keys as the agent makes them: 16 address bytes, IPv4 first.
fn keys() -> Vec<[u8; 16]> {
    (0..BACKENDS)
        .map(|i| {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
            k
        })
        .collect()
}

fn maglev_build(c: &mut Criterion) {
    let keys = keys();
    // Weights 1..=10, spread over the backends.
    let members: Vec<Member<'_>> =
        keys.iter().enumerate().map(|(i, k)| Member { key: k, weight: 1 + (i as u32 * 7) % 10 }).collect();
    c.bench_function("maglev build 65537 slots x 1000 weighted backends", |b| {
        b.iter(|| build(black_box(&members), black_box(SLOTS)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = maglev_build
}
criterion_main!(benches);
