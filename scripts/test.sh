#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests, plus a smoke run of the
# benchmarks at a tiny size so they never rot. Debug builds only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Benchmarks run once each (criterion's test mode) on a tiny data set.
export CXSTREAM_BENCH_PROFILES="${CXSTREAM_BENCH_PROFILES:-2000}"
cargo test --all-targets --locked
