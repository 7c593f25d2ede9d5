//! Ad-hoc profiling aid (not a benchmark of record; see benches/): how long the engine holds
//! its shard at a time. Warms an engine with CUSTOMERS simulated customers, then ingests N
//! further events in chunks of 1,000 and prints the distribution of the chunks' wall-clock
//! times and the longest ones. A pass over the whole state (eviction at `max_profiles`, expiry
//! of the dedup window, the idle-profile sweep) shows up as a chunk far above the median.
//! `cargo run --release --example pauses -- CUSTOMERS N`
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::arg;

fn main() {
    let (customers, n) = (arg(1, 1_000_000usize), arg(2, 3_000_000usize));
    let (mut engine, mut sim) = cxstream::sim::warmed(customers as u64);
    let events: Vec<_> = sim.by_ref().take(n).collect();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return;
    };
    println!(
        "pauses: {} events spanning {} s of event time, {} profiles at the start",
        events.len(),
        (last.occurred_at - first.occurred_at) / 1000,
        engine.profile_count()
    );
    let evicted = engine.stats().profiles_evicted;
    let mut out = Vec::new();
    let mut times = Vec::new();
    let start = Instant::now();
    for chunk in events.chunks(1000) {
        let t = Instant::now();
        for e in chunk {
            engine.ingest(e.clone(), &mut out);
        }
        out.clear();
        times.push(t.elapsed().as_micros());
    }
    let total = start.elapsed();
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    println!(
        "pauses: {} chunks in {total:.2?}, {} profiles evicted; chunk time p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        sorted.len(),
        engine.stats().profiles_evicted - evicted,
        q(0.5),
        q(0.99),
        q(0.999),
        sorted[sorted.len() - 1]
    );
    let mut longest: Vec<(u128, usize)> = times.iter().copied().zip(0..).collect();
    longest.sort_unstable_by(|a, b| b.cmp(a));
    for (us, i) in longest.iter().take(5) {
        println!("pauses:   chunk {i}: {us} us");
    }
}
