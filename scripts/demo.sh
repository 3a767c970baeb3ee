#!/usr/bin/env bash
# scripts/demo.sh -- set up this machine and bring up the demo stack at v1, waiting for
# it with berth-healthwait. Idempotent: run it again and it converges.
#
# Environment: DEMO_HTTP_PORT (default 8080; the proxy's loopback port),
#              BERTH_DEMO_PROJECT (compose project name, default berth-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh
bin=$root/target/release
demo=$root/examples/demo
project=${BERTH_DEMO_PROJECT:-berth-demo}
say() { printf 'demo: %s\n' "$*" >&2; }

cd "$demo"
[ -f .env ] || cp .env.example .env
if [ -n "${DEMO_HTTP_PORT:-}" ]; then
	sed -i "s/^DEMO_HTTP_PORT=.*/DEMO_HTTP_PORT=$DEMO_HTTP_PORT/" .env
fi
port=$(sed -n 's/^DEMO_HTTP_PORT=//p' .env | tail -n 1)
port=${port:-8080}
compose=(docker compose -p "$project")

say "starting db and redis"
"${compose[@]}" up -d --wait db redis
say "migrating the database to v1's schema"
"${compose[@]}" run --rm --no-deps -T web migrate >&2
say "starting web, worker and the proxy"
"${compose[@]}" up -d
say "waiting with berth-healthwait for http://127.0.0.1:$port/readyz"
"$bin/berth-healthwait" -p "$project" --url "http://127.0.0.1:$port/readyz" \
	--expect-json status=ok --timeout 120s </dev/null >/dev/null
say "the demo answers: $(curl -fsS "http://127.0.0.1:$port/version")"
say "stop it with: (cd examples/demo && docker compose -p $project down -v)"
