//! Ad-hoc profiling aid (not a benchmark of record; see benches/): how long the duplicate
//! filter holds its caller when its table grows. Inserts distinct ids (50 a millisecond of
//! event time, all inside a 10 minute window) until the table has grown past each size given,
//! and prints the longest single insert and the total time.
//! `cargo run --release --example dedup_growth -- [IDS...]` (default 196608 786432 3145728:
//! the fills at which a table of 2^18, 2^20 and 2^22 slots grows).
use std::time::Instant;

use cxstream::dedup::Dedup;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![196_608, 786_432, 3_145_728];
    }
    for n in sizes {
        let mut d = Dedup::new(600_000);
        let (mut longest, mut at) = (0.0f64, 0);
        // A fixed sequence of well-spread 64-bit ids, as the engine's id hashes are.
        let mut id = 0x9E37_79B9_7F4A_7C15u64;
        let started = Instant::now();
        // Past the growth at `n`, and the move into the new table after it.
        for i in 0..n + n / 4 {
            id = id
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let t = Instant::now();
            assert!(d.insert((i / 50) as i64, id), "ids are distinct");
            let took = t.elapsed().as_secs_f64() * 1e3;
            if took > longest {
                (longest, at) = (took, i);
            }
        }
        println!(
            "dedup_growth: {n} ids: longest insert {longest:.2} ms (insert {at}), all {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
