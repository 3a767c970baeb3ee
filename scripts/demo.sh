#!/usr/bin/env bash
# scripts/demo.sh -- from nothing to a zero-downtime deploy, in one command:
#   1. set up this machine (scripts/setup.sh: Docker, Compose v2, images, binaries)
#   2. start the demo stack (examples/demo: nginx -> web, worker, PostgreSQL, Redis) at v1
#      and wait for it with berth-healthwait
#   3. deploy v2 with scripts/deploy.sh (preflight, pull, verified backup, the migration
#      that adds a column, swap of web and worker, smoke check, report) while a load
#      probe sends requests through nginx; print the report and the failed-request count
# Run it again and it deploys the other version (v2 -> v1 -> v2 ...).
#
# Environment: DEMO_HTTP_PORT (default 8080; the proxy's loopback port),
#              BERTH_DEMO_PROJECT (compose project name, default berth-demo),
#              BERTH_DEMO_DIR (the demo's copy of examples/demo, default target/demo/berth-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/setup.sh
cargo build --release -q -p berth-e2e --example loadprobe
bin=$root/target/release
probe=$root/target/release/examples/loadprobe
# The demo runs in its own copy of examples/demo (berth rewrites files in the project
# directory: .env, the nginx upstream file), kept between runs.
demo=${BERTH_DEMO_DIR:-$root/target/demo/berth-demo}
if [ ! -f "$demo/compose.yaml" ]; then
	mkdir -p "$demo"
	(cd "$root/examples/demo" && tar --exclude=./app --exclude=./.env --exclude=./.berth -cf - .) | tar -C "$demo" -xf -
fi
project=${BERTH_DEMO_PROJECT:-berth-demo}
say() { printf '\ndemo: %s\n' "$*" >&2; }

cd "$demo"
[ -f .env ] || cp .env.example .env
if [ -n "${DEMO_HTTP_PORT:-}" ]; then
	sed -i "s/^DEMO_HTTP_PORT=.*/DEMO_HTTP_PORT=$DEMO_HTTP_PORT/" .env
fi
port=$(sed -n 's/^DEMO_HTTP_PORT=//p' .env | tail -n 1)
port=${port:-8080}
compose=(docker compose -p "$project")

if ! "$bin/berth-healthwait" --url "http://127.0.0.1:$port/readyz" --timeout 1s </dev/null >/dev/null 2>&1; then
	say "starting the demo stack at v1 (project $project, http://127.0.0.1:$port)"
	sed -i "s/^BERTH_TAG=.*/BERTH_TAG=v1/" .env
	"${compose[@]}" up -d --wait db redis
	"${compose[@]}" run --rm --no-deps -T web migrate >&2
	"${compose[@]}" up -d
	say "waiting for it with berth-healthwait"
	"$bin/berth-healthwait" -p "$project" --url "http://127.0.0.1:$port/readyz" \
		--expect-json status=ok --timeout 120s </dev/null >/dev/null
fi
current=$(sed -n 's/^BERTH_TAG=//p' .env | tail -n 1)
next=v2
[ "$current" != v2 ] || next=v1
say "v$(curl -fsS "http://127.0.0.1:$port/" | tr -d 'v\n') is serving; deploying $next under load (8 clients through nginx)"

stop=$(mktemp -u)
"$probe" "http://127.0.0.1:$port/" 8 "$stop" 600 >"$stop.out" &
probe_pid=$!
sleep 1
set +e
BERTH_BIN_DIR=$bin BERTH_PROJECT_DIR=$demo BERTH_PROJECT_NAME=$project \
	DEPLOY_SMOKE_URL="http://127.0.0.1:$port/smoke" "$root/scripts/deploy.sh" --env production "$next"
code=$?
set -e
sleep 1
touch "$stop"
wait "$probe_pid" || true
say "$(cat "$stop.out")"
rm -f "$stop" "$stop.out"
say "deploy exit code $code; now serving: $(curl -fsS "http://127.0.0.1:$port/version")"
say "history: $bin/berth-report history -p $project --project-dir $demo"
say "the demo's project directory: $demo (its deploy documents, ledger and backups: $demo/.berth)"
say "stop the demo: (cd $demo && docker compose -p $project down -v)"
exit "$code"
