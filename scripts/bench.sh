#!/usr/bin/env bash
# Every benchmark in BENCHMARKS.md, in one run (release builds; ~25 minutes on 2 cores).
# Sizes can be lowered for a quick look, e.g. CXSTREAM_BENCH_PROFILES=100000.
# External broker for the Kafka benchmarks: CXSTREAM_BENCH_BROKERS=host:port.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cargo bench --bench engine
cargo bench --bench memory
CXSTREAM_BENCH_UUID_IDS=1 cargo bench --bench memory
CXSTREAM_BENCH_PROFILES=10000000 cargo bench --bench memory
CXSTREAM_BENCH_SCENARIO=traffic cargo bench --bench memory
cargo bench --bench restore
# Longest time the engine holds a shard at 1M profiles (eviction at the cap, dedup expiry,
# the idle-profile sweep).
cargo run --release --example pauses -- "${CXSTREAM_BENCH_PROFILES:-1000000}" 3000000
# Longest insert when the dedup table and the identity index grow.
cargo run --release --example table_growth -- dedup
cargo run --release --example table_growth -- index
# CPU of an idle service (no input) owning 16 partitions, per guarantee.
cargo run --release --example idle_cpu -- 16 exactly_once
cargo run --release --example idle_cpu -- 16 at_least_once
# End to end (and catch-up after a restart): three runs per guarantee, alternating, on all
# cores; then one worker thread.
for run in 1 2 3; do
    for guarantee in at_least_once exactly_once; do
        CXSTREAM_BENCH_GUARANTEE=$guarantee cargo bench --bench pipeline
    done
done
for guarantee in at_least_once exactly_once; do
    CXSTREAM_BENCH_WORKERS=1 CXSTREAM_BENCH_GUARANTEE=$guarantee cargo bench --bench pipeline
done
# Latency: about a twentieth and about half of the end-to-end maximum (~400,000 events/s
# with at_least_once in the sixteenth session's sitting), three runs each.
for rate in 20000 200000; do
    for run in 1 2 3; do
        CXSTREAM_BENCH_GUARANTEE=at_least_once CXSTREAM_BENCH_LATENESS=0s \
            CXSTREAM_BENCH_RATE=$rate CXSTREAM_BENCH_EVENTS=$((rate * 10)) cargo bench --bench latency
    done
done
CXSTREAM_BENCH_GUARANTEE=at_least_once CXSTREAM_BENCH_LATENESS=0s CXSTREAM_BENCH_LINGER_MS=1 \
    CXSTREAM_BENCH_RATE=20000 CXSTREAM_BENCH_EVENTS=200000 cargo bench --bench latency
CXSTREAM_BENCH_GUARANTEE=at_least_once CXSTREAM_BENCH_LATENESS=5s \
    CXSTREAM_BENCH_RATE=20000 CXSTREAM_BENCH_EVENTS=200000 cargo bench --bench latency
for lateness in 0s 5s; do
    CXSTREAM_BENCH_GUARANTEE=exactly_once CXSTREAM_BENCH_LATENESS=$lateness \
        CXSTREAM_BENCH_RATE=20000 CXSTREAM_BENCH_EVENTS=200000 cargo bench --bench latency
done
