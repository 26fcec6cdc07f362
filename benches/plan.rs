//! `plan()` alone at fleet scale: 10 000 peers (30 000 kernel objects, plus
//! 10 000 nexthop objects), from empty and in sync, with and without
//! nexthop objects. Run: `cargo bench --bench plan`. Under `cargo test
//! --all-targets` each case runs once (criterion's test mode).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/bench/fleet.rs"]
mod fleet;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use netconverge::model::NexthopMode;
use netconverge::plan::plan;

const PEERS: u32 = 10_000;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan_10000_peers");
    g.sample_size(20);
    for (name, mode, nexthops) in [
        ("classic", NexthopMode::Off, false),
        ("nexthops", NexthopMode::Auto, true),
    ] {
        let d = fleet::desired(PEERS, false, mode);
        let synced = fleet::converged(&d, nexthops);
        let empty = fleet::empty(&d, nexthops);
        assert!(plan(&d, &synced).in_sync(), "{name}: fixture not in sync");
        let full = plan(&d, &empty).changes.len();
        assert_eq!(
            full,
            2 + 3 * PEERS as usize + if nexthops { PEERS as usize } else { 0 }
        );
        g.bench_function(format!("in_sync_{name}"), |b| {
            b.iter(|| plan(black_box(&d), black_box(&synced)))
        });
        g.bench_function(format!("from_empty_{name}"), |b| {
            b.iter(|| plan(black_box(&d), black_box(&empty)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
