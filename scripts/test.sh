#!/usr/bin/env bash
# scripts/test.sh -- the one test command (CI runs exactly this, through .ci/run).
#
#   1. scripts/setup.sh: Docker Engine, Compose v2, the fixture and demo images
#      (idempotent; seconds when all is there)
#   2. cargo fmt --check, cargo clippy -D warnings
#   3. unit and command-line tests of every crate
#   4. the end-to-end tests (tests/) against the real Docker Engine, Compose v2, nginx
#      and PostgreSQL, one at a time: they put real load on two cores and measure
#      failed requests, so they must not compete with each other.
#
# Options: --no-setup (skip step 1), --quick (skip step 4). Extra arguments after `--`
# go to the end-to-end test run (e.g. `scripts/test.sh -- swap` for tests named *swap*).
set -euo pipefail
cd "$(dirname "$0")/.."

setup=1 e2e=1 filter=()
while [ $# -gt 0 ]; do
	case "$1" in
	--no-setup) setup=0 ;;
	--quick) e2e=0 ;;
	--) shift; filter=("$@"); break ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "test.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
	esac
	shift
done

step() { printf '\n== %s\n' "$*" >&2; }
started=$(date +%s)

if [ "$setup" = 1 ]; then
	step "setup"
	scripts/setup.sh --no-build
fi

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked

step "unit and command-line tests"
cargo test --workspace --exclude berth-e2e --locked

if [ "$e2e" = 1 ]; then
	step "end-to-end tests (real Docker, Compose v2, nginx, PostgreSQL)"
	cargo test -p berth-e2e --locked -- --test-threads=1 "${filter[@]}"
fi

step "all passed in $(($(date +%s) - started)) s"
