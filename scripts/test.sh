#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests, the operations tests (metrics,
# alert rules with promtool, a real Prometheus server), plus a smoke run of the benchmarks at a
# tiny size so they never rot; then the Kafka integration suite again against
# a real broker process (tansu, installed once with cargo and started here on a free loopback
# port). Debug builds only.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Benchmarks run once each (criterion's test mode) on a tiny data set.
export CXSTREAM_BENCH_PROFILES="${CXSTREAM_BENCH_PROFILES:-2000}"
export CXSTREAM_BENCH_EVENTS="${CXSTREAM_BENCH_EVENTS:-3000}"
log=$(mktemp)
broker_log=$(mktemp)
broker_pid=""
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
    rm -f "$log" "$broker_log"
}
trap cleanup EXIT
status=0

# promtool and a Prometheus server for the operations tests (tests/ops.rs).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    echo "installing prometheus (promtool + server) from Debian"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export CXSTREAM_REQUIRE_TOOLS=1

# 1. Everything, with the Kafka tests on librdkafka's in-process mock cluster.
cargo test --all-targets --locked 2>&1 | tee -a "$log" || status=$?

# 2. The Kafka integration suite against a real broker.
TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "installing tansu $TANSU_VERSION (a Kafka-compatible broker; takes ~12 minutes once)"
    cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$broker_log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.2
done
echo "tansu broker on 127.0.0.1:$port"
CXSTREAM_TEST_BROKERS="127.0.0.1:$port" cargo test --test kafka --locked 2>&1 | tee -a "$log" || {
    status=$?
    echo "--- tansu broker log (tail) ---"
    tail -n 40 "$broker_log"
}

# One closing line with the totals over every test binary and both broker runs.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
