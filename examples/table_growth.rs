//! Ad-hoc profiling aid (not a benchmark of record; see benches/): how long a shard's growing
//! tables hold their caller when they grow. Inserts distinct well-spread 64-bit ids (as the
//! engine's hashes are) until the table has grown past each size given, and prints the
//! longest single insert and the total time.
//! `cargo run --release --example table_growth -- TABLE [IDS...]`
//! - `dedup`: the duplicate filter, 50 ids a millisecond of event time, all inside a 10 minute
//!   window (default sizes 196608 786432 3145728: where a table of 2^18, 2^20 and 2^22 slots
//!   grows).
//! - `index`: the identity index, key to profile slot (default sizes 229376 917504 3670016:
//!   where hashbrown's table of 2^18, 2^20 and 2^22 buckets grows, at seven eighths full).
use std::time::Instant;

use cxstream::dedup::Dedup;
use cxstream::identity::IdentityIndex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Inserts the `i`th id into a table.
type Insert = Box<dyn FnMut(u64, u64)>;

/// The table to grow, and the sizes it is grown past by default.
fn table(name: &str) -> Option<(Insert, [u64; 3])> {
    Some(match name {
        "dedup" => {
            let mut d = Dedup::new(600_000);
            (
                Box::new(move |i, id| assert!(d.insert((i / 50) as i64, id), "ids are distinct")),
                [196_608, 786_432, 3_145_728],
            )
        }
        "index" => {
            let mut index = IdentityIndex::default();
            (
                Box::new(move |i, id| index.set(id, i as u32)),
                [229_376, 917_504, 3_670_016],
            )
        }
        _ => return None,
    })
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some((_, defaults)) = table(&name) else {
        eprintln!("usage: table_growth dedup|index [IDS...]");
        std::process::exit(2);
    };
    let mut sizes: Vec<u64> = std::env::args()
        .skip(2)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = defaults.to_vec();
    }
    for n in sizes {
        let (mut insert, _) = table(&name).expect("a table checked above");
        let (mut longest, mut at) = (0.0f64, 0);
        // A fixed sequence of well-spread 64-bit ids.
        let mut id = 0x9E37_79B9_7F4A_7C15u64;
        let started = Instant::now();
        // Past the growth at `n`, and any move into the new table after it.
        for i in 0..n + n / 4 {
            id = id
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let t = Instant::now();
            insert(i, id);
            let took = t.elapsed().as_secs_f64() * 1e3;
            if took > longest {
                (longest, at) = (took, i);
            }
        }
        println!(
            "table_growth {name}: {n} ids: longest insert {longest:.2} ms (insert {at}), all {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}
