//! Engine throughput: decode + process, one thread, on the simulator's omnichannel mix with
//! `CXSTREAM_BENCH_PROFILES` customers (default 1,000,000) already known to the engine.
//!
//! Run: `cargo bench --bench engine` (see BENCHMARKS.md). Each measured iteration decodes and
//! ingests the next `BATCH` events of the stream, pre-encoded outside the timed section.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use cxstream::decode::{decode_json, decode_protobuf, to_json, to_proto};
use cxstream::event::Event;
use cxstream::sim::Simulator;
use prost::Message;

/// The allocator the binary ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 100_000;

fn profiles() -> u64 {
    std::env::var("CXSTREAM_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn encode_batch(sim: &mut Simulator, json: bool) -> Vec<Vec<u8>> {
    sim.take(BATCH)
        .map(|e| {
            if json {
                serde_json::to_vec(&to_json(&e)).expect("json")
            } else {
                to_proto(&e).encode_to_vec()
            }
        })
        .collect()
}

fn decode_all(batch: &[Vec<u8>], json: bool) -> Vec<Event> {
    batch
        .iter()
        .filter_map(|b| {
            if json {
                decode_json(b).ok()
            } else {
                decode_protobuf(b).ok()
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = profiles();
    let mut g = c.benchmark_group(format!("engine/{n}_profiles"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(10));
    // Decoding does not depend on the engine's state: the simulator's events from its start.
    let mut sim = Simulator::new(cxstream::sim::warmed_config(n));
    for (name, json) in [("protobuf", false), ("json", true)] {
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter_batched(
                || encode_batch(&mut sim, json),
                |batch| (decode_all(&batch, json), batch),
                BatchSize::PerIteration,
            )
        });
    }
    // Each benchmark that ingests starts from the same state: an engine warmed afresh and
    // the simulator where the warm-up left it. (Sharing one engine made each start where the
    // one before had left it, after millions of events more, and the decoding benchmarks'
    // events skipped: "decode + process" then measured another state than "process".)
    let mut out = Vec::with_capacity(1024);
    let (mut engine, mut sim) = cxstream::sim::warmed(n);
    g.bench_function("process", |b| {
        b.iter_batched(
            || decode_all(&encode_batch(&mut sim, false), false),
            |events| {
                for e in events {
                    engine.ingest(e, &mut out);
                    out.clear();
                }
            },
            BatchSize::PerIteration,
        )
    });
    report(&engine);
    for (name, json) in [("protobuf", false), ("json", true)] {
        // The state of a million profiles is dropped outside the measurement, before the
        // next is warmed.
        drop(engine);
        (engine, sim) = cxstream::sim::warmed(n);
        g.bench_function(format!("decode+process/{name}"), |b| {
            b.iter_batched(
                || encode_batch(&mut sim, json),
                |batch| {
                    for bytes in &batch {
                        let e = if json {
                            decode_json(bytes)
                        } else {
                            decode_protobuf(bytes)
                        };
                        if let Ok(e) = e {
                            engine.ingest(e, &mut out);
                        }
                        out.clear();
                    }
                    black_box(&engine);
                    batch
                },
                BatchSize::PerIteration,
            )
        });
        report(&engine);
    }
    g.finish();
}

fn report(engine: &cxstream::engine::Engine) {
    eprintln!(
        "engine state after the benchmark: {} profiles, {} open journeys, {} buffered events",
        engine.profile_count(),
        engine.open_journeys(),
        engine.buffered()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
