//! Ad-hoc profiling aid (not a benchmark of record; see benches/): the cost of a checkpoint,
//! the changelog records of every profile changed since the last one.
//! `cargo run --release --example checkpoint_speed`: 1,000,000 simulated events over 50,000
//! customers (the latency benchmark's mix), a checkpoint every 25,000 events (one shard's
//! second at 100,000 events/s over four partitions); the time of the checkpoints alone.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use cxstream::engine::snapshot::InputPosition;
use cxstream::sim::{SimConfig, Simulator};

fn main() {
    let mut engine = cxstream::engine::Engine::from_config(&cxstream::config::Config::example());
    engine.track_changes();
    let sim = Simulator::new(SimConfig {
        seed: 11,
        customers: 50_000,
        ..SimConfig::default()
    });
    let mut out = Vec::new();
    let (mut took, mut records, mut bytes) = (Duration::ZERO, 0, 0);
    for (i, e) in sim.take(1_000_000).enumerate() {
        engine.ingest(e, &mut out);
        out.clear();
        if i % 25_000 == 24_999 {
            let t = Instant::now();
            let r = std::hint::black_box(engine.checkpoint(InputPosition::default()));
            took += t.elapsed();
            records += r.len();
            bytes += r
                .iter()
                .filter_map(|r| r.value.as_ref())
                .map(Vec::len)
                .sum::<usize>();
        }
    }
    println!(
        "{records} records, {} bytes/record: {:.2} µs/record ({took:.2?} in all)",
        bytes / records,
        took.as_secs_f64() * 1e6 / records as f64
    );
}
