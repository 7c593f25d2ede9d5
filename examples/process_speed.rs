//! Ad-hoc profiling aid (not a benchmark of record; see benches/): warms an engine with
//! CUSTOMERS simulated customers, then times N pre-generated events, REPS times.
//! `cargo run --release --example process_speed -- CUSTOMERS N REPS`
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (customers, n, reps) = (arg(1, 100_000), arg(2, 200_000) as usize, arg(3, 1));
    let start = Instant::now();
    let (mut engine, mut sim) = cxstream::sim::warmed(customers);
    let mut out = Vec::new();
    let batches: Vec<Vec<_>> = (0..reps).map(|_| sim.by_ref().take(n).collect()).collect();
    eprintln!("warm after {:?}", start.elapsed());
    for batch in batches {
        let t = Instant::now();
        let mut outputs = 0;
        for e in batch {
            engine.ingest(e, &mut out);
            outputs += out.len();
            out.clear();
        }
        println!(
            "{:.0} ns/event, {outputs} outputs, {} profiles, {} open journeys, {} timers",
            t.elapsed().as_nanos() as f64 / n as f64,
            engine.profile_count(),
            engine.open_journeys(),
            engine.scheduled_timers()
        );
    }
}
