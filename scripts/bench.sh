#!/usr/bin/env bash
# Every benchmark in BENCHMARKS.md, in one run (release builds; ~15 minutes on 2 cores).
# Sizes can be lowered for a quick look, e.g. CXSTREAM_BENCH_PROFILES=100000.
# External broker for the Kafka benchmarks: CXSTREAM_BENCH_BROKERS=host:port.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
cargo bench --bench engine
cargo bench --bench memory
cargo bench --bench restore
for guarantee in at_least_once exactly_once; do
    for lateness in 0s 5s; do
        CXSTREAM_BENCH_GUARANTEE=$guarantee CXSTREAM_BENCH_LATENESS=$lateness \
            CXSTREAM_BENCH_RATE=20000 CXSTREAM_BENCH_EVENTS=200000 cargo bench --bench latency
    done
done
for run in 1 2 3; do
    for guarantee in at_least_once exactly_once; do
        CXSTREAM_BENCH_GUARANTEE=$guarantee CXSTREAM_BENCH_EVENTS="${CXSTREAM_BENCH_EVENTS:-100000}" \
            cargo bench --bench pipeline
    done
done
