//! Ad-hoc profiling aid (not a benchmark of record; see benches/): the cost of turning engine
//! outputs into the records the service produces (JSON payload, key and headers).
//! `cargo run --release --example output_speed`: the outputs of 100,000 simulated events
//! after a warm-up of 20,000 customers, encoded once each; then the same outputs counted in a
//! shard's metrics (the Prometheus recorder installed, as in the service).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cxstream::config::OutputFormat;
use cxstream::service::records::output_record;

fn main() {
    let (mut engine, mut sim) = cxstream::sim::warmed(20_000);
    let mut out = Vec::new();
    for e in sim.by_ref().take(100_000) {
        engine.ingest(e, &mut out);
    }
    let t = std::time::Instant::now();
    let bytes = encode_all(&out);
    println!(
        "{} outputs: {:.0} ns/output, {} payload bytes/output",
        out.len(),
        t.elapsed().as_nanos() as f64 / out.len() as f64,
        bytes / out.len()
    );
    let _prometheus = cxstream::telemetry::prometheus();
    let mut metrics = cxstream::telemetry::ShardMetrics::new(
        "events",
        0,
        cxstream::telemetry::Labels::new(&[], &engine.rules().catalog),
    );
    metrics.outputs(&out); // the series registered
    let t = std::time::Instant::now();
    for _ in 0..10 {
        metrics.outputs(&out);
    }
    println!(
        "metrics: {:.0} ns/output",
        t.elapsed().as_nanos() as f64 / (10 * out.len()) as f64
    );
}

/// The encoding, a function of its own so that `valgrind --tool=callgrind
/// --toggle-collect='*encode_all*'` counts it alone.
#[inline(never)]
fn encode_all(out: &[cxstream::alert::Output]) -> usize {
    let mut bytes = 0;
    for o in out {
        bytes += std::hint::black_box(output_record(o, OutputFormat::Json))
            .payload
            .len();
    }
    bytes
}
