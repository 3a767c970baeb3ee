#!/usr/bin/env bash
# bench/swap: `docker compose up -d --wait` (recreate) against `berth-swap`, one run each,
# on the same demo stack (own project name and port, removed at the end) under the same
# load: 8 clients on /version through nginx. Prints failed requests, the longest gap
# between successful answers, p50/p99/max latency during the rollout against steady state,
# wall time; for berth also the time from the new container's own `ready` log event
# (boot_ms) to the switch.
#
# Usage: bench/swap.sh            (PAUSE_MS=5: each client's pause between requests)
# Needs: scripts/setup.sh done (images, compose v2). Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -q -p berth-swap
BERTH_BIN_DIR="$root/target/release" cargo run --release -q -p berth-e2e --example bench_swap
