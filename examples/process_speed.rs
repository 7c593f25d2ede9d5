//! Ad-hoc profiling aid (not a benchmark of record; see benches/): warms an engine with
//! CUSTOMERS simulated customers, then times N pre-generated events, REPS times, decoded from
//! protobuf (`MODE=pb`, the default), from JSON (`json`) or handed over decoded (`event`);
//! `pb-decode` and `json-decode` only decode.
//! `cargo run --release --example process_speed -- CUSTOMERS N REPS [MODE]`
//! It prints "measuring" on stderr when the timed part starts (for `perf record --delay`).
use std::time::Instant;

use cxstream::decode::{decode_json, decode_protobuf, to_json, to_proto};
use prost::Message;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::arg;

fn main() {
    let (customers, n, reps) = (arg(1, 100_000u64), arg(2, 200_000usize), arg(3, 1u64));
    let mode = std::env::args().nth(4).unwrap_or_else(|| "pb".into());
    // `pb-decode` / `json-decode`: decode only (what the engine would be handed).
    let decode_only = mode.ends_with("-decode");
    let mode = mode.trim_end_matches("-decode").to_string();
    let start = Instant::now();
    let (mut engine, mut sim) = cxstream::sim::warmed(customers);
    let mut out = Vec::new();
    let batches: Vec<Vec<_>> = (0..reps).map(|_| sim.by_ref().take(n).collect()).collect();
    let encoded: Vec<Vec<Vec<u8>>> = batches
        .iter()
        .map(|b| {
            b.iter()
                .map(|e| match mode.as_str() {
                    "json" => serde_json::to_vec(&to_json(e)).expect("json"),
                    _ => to_proto(e).encode_to_vec(),
                })
                .collect()
        })
        .collect();
    eprintln!("warm after {:?}; measuring", start.elapsed());
    // Called through an opaque pointer, so that decoding stays a function of its own
    // (`valgrind --toggle-collect='*decode_*'` counts it) whatever the optimiser inlines.
    let decode: fn(&[u8]) -> Result<cxstream::event::Event, cxstream::decode::Reject> =
        std::hint::black_box(if mode == "json" {
            decode_json
        } else {
            decode_protobuf
        });
    for (batch, bytes) in batches.into_iter().zip(&encoded) {
        // Decoding modes do not use the pre-generated events: dropped before timing.
        let batch = if mode == "event" { batch } else { Vec::new() };
        let t = Instant::now();
        let outputs = measured(
            &mut engine,
            &mut out,
            &mode,
            decode_only,
            decode,
            batch,
            bytes,
        );
        println!(
            "{:.0} ns/event, {outputs} outputs, {} profiles, {} open journeys, {} timers",
            t.elapsed().as_nanos() as f64 / n as f64,
            engine.profile_count(),
            engine.open_journeys(),
            engine.scheduled_timers()
        );
    }
    // The engine's teardown is not measured; skipping it keeps `perf record -p` on the
    // measured part alone.
    std::mem::forget(engine);
}

/// The timed part, a function of its own so that `valgrind --tool=callgrind
/// --toggle-collect='*measured*'` counts it and not the warm-up.
#[inline(never)]
fn measured(
    engine: &mut cxstream::engine::Engine,
    out: &mut Vec<cxstream::alert::Output>,
    mode: &str,
    decode_only: bool,
    decode: fn(&[u8]) -> Result<cxstream::event::Event, cxstream::decode::Reject>,
    batch: Vec<cxstream::event::Event>,
    bytes: &[Vec<u8>],
) -> usize {
    let mut outputs = 0;
    if mode == "event" {
        for e in batch {
            engine.ingest(e, out);
            outputs += out.len();
            out.clear();
        }
    } else {
        for b in bytes {
            if let Ok(e) = decode(b) {
                if decode_only {
                    std::hint::black_box(e);
                } else {
                    engine.ingest(e, out);
                }
            }
            outputs += out.len();
            out.clear();
        }
    }
    outputs
}
