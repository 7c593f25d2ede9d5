#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests, plus a smoke run of the
# benchmarks at a tiny size so they never rot. Debug builds only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Benchmarks run once each (criterion's test mode) on a tiny data set.
export CXSTREAM_BENCH_PROFILES="${CXSTREAM_BENCH_PROFILES:-2000}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --all-targets --locked 2>&1 | tee "$log" || status=$?
# One closing line with the totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
