#!/usr/bin/env bash
# bench/swap: one rollout per row, side by side in one run under the same load (8 clients
# that behave like real ones, tests/src/clients.rs: keep-alive when the proxy allows it,
# every third request a POST, nothing resent): `docker compose up -d --wait` with the new
# tag (recreate, the baseline), berth-swap through nginx with client keep-alive off (as
# shipped) and on (75 s), berth-swap --proxy nginx-dns (examples/nginx-dns, keep-alive on;
# the first swap after `up` and the next), and berth-swap --proxy haproxy
# (examples/haproxy); then, on a 3-node Swarm test bed of its own, raw `docker service
# update` (start-first) against berth-swap --engine swarm on the same stack. Prints failed
# requests by method, requests, the longest gap, p99, the time until the new version first
# answers and the command's wall time, with ratios against each table's baseline (compose
# recreate; swarm update).
# Private stacks (own project names and ports) and test bed, removed at the end.
# See tests/examples/bench_swap.rs.
#
# Usage: bench/swap.sh      (CLIENTS=8 PAUSE_MS=5 POST_EVERY=3; BENCH_ROWS=compose|swarm
#                            for one table only; BERTH_BIN_DIR: where berth-swap is,
#                            default target/release, built here then)
# Needs: scripts/setup.sh done (images, compose v2, the swarm-node image). Not part of the
# test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${BERTH_BIN_DIR:-}" ]; then
	cargo build --release -q -p berth-swap
	export BERTH_BIN_DIR="$root/target/release"
fi
cargo run --release -q -p berth-e2e --example bench_swap
