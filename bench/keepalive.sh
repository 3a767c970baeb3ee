#!/usr/bin/env bash
# bench/keepalive: failed requests during one swap as real clients see them (one keep-alive
# connection each, POSTs never resent: tests/src/clients.rs), for nginx with client
# keep-alive off (as shipped) and on (75 s, nginx's default), each switched by berth-swap
# (upstream file + reload), a reload-free switch by Docker DNS done by hand and by
# `berth-swap --proxy nginx-dns`, and HAProxy through its runtime API; GET-only
# and GET+POST (+ slow GETs). Several runs each, on one private demo stack (own project
# name and port, removed at the end). See tests/examples/bench_keepalive.rs.
#
# Usage: bench/keepalive.sh      (RUNS=3 SETUPS=reload-ka0,reload-ka75,dns-ka75,berth-dns-ka75,haproxy-api CLIENTS=8
#                                 PAUSE_MS=5; BERTH_BIN_DIR: where berth-swap is, default
#                                 target/release, built here when it is the default)
# Needs: scripts/setup.sh done (images, compose v2). Not part of the test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${BERTH_BIN_DIR:-}" ]; then
	cargo build --release -q -p berth-swap
	export BERTH_BIN_DIR="$root/target/release"
fi
cargo run -q -p berth-e2e --example bench_keepalive
