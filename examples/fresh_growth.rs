//! Ad-hoc profiling aid (not a benchmark of record; see benches/): where a fresh shard stalls
//! while its tables grow. Feeds an empty engine (lateness 0, as the latency benchmark runs
//! it) one shard's share of the simulator's events, with event times 5 µs apart overall, as
//! at 200,000 events/s, in chunks of 1,000; prints the median chunk and every chunk over four
//! times it, with its minor page faults (Linux's `/proc/self/stat`).
//! `cargo run --release --example fresh_growth -- [CUSTOMERS] [EVENTS] [SHARDS]`
//! (default 100000 2000000 4: the latency benchmark at 200,000 events/s, one of its shards).
//! `MIMALLOC_ALLOW_THP=0` in the environment counts 4 KB pages rather than 2 MB ones.
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::arg;

/// Minor page faults of this process so far.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses): minflt is the eighth.
    stat.rfind(')')
        .and_then(|at| stat[at + 2..].split(' ').nth(7)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let (customers, n, shards) = (
        arg(1, 100_000u64),
        arg(2, 2_000_000u64),
        arg(3, 4u64).max(1),
    );
    let mut config = cxstream::config::Config::example();
    config.engine.allowed_lateness = std::time::Duration::ZERO;
    let mut engine = cxstream::engine::Engine::from_config(&config);
    let sim = cxstream::sim::Simulator::new(cxstream::sim::SimConfig {
        seed: 11,
        customers,
        ..Default::default()
    });
    let start = cxstream::clock::now_millis();
    let events: Vec<_> = sim
        .take(n as usize)
        .enumerate()
        .filter(|(i, _)| *i as u64 % shards == 0)
        .map(|(i, mut e)| {
            e.occurred_at = start + i as i64 / 200;
            e
        })
        .collect();
    let mut out = Vec::new();
    let mut chunks = Vec::new();
    for chunk in events.chunks(1000) {
        let (t, faults) = (Instant::now(), minor_faults());
        for e in chunk {
            // Cloned, not taken: the clone stands for the service's decoding, which allocates
            // each event as the engine frees the ones before. Events made before timing and
            // only freed during it gave a recurring 6.6 ms chunk (~1,680 faults) at 191k
            // events, from an allocation pattern (frees with no allocations) that the
            // service, decoding as it applies, does not follow.
            engine.ingest(e.clone(), &mut out);
        }
        out.clear();
        chunks.push((t.elapsed().as_micros(), minor_faults() - faults));
    }
    let mut sorted: Vec<u128> = chunks.iter().map(|c| c.0).collect();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2];
    println!(
        "fresh_growth: {} events, median chunk {median} µs",
        events.len()
    );
    for (i, (took, faults)) in chunks.iter().enumerate() {
        if *took > median * 4 {
            println!(
                "fresh_growth: chunk {i} (events {}k): {took} µs, {faults} page faults",
                i
            );
        }
    }
}
