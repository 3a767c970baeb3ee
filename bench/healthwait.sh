#!/usr/bin/env bash
# bench/healthwait.sh -- how soon does each waiter know the demo web app is ready?
#
# One stack, RUNS starts of the `web` service (the app boots for BOOT_MS before it
# listens). For each start, measured from the moment `docker compose up` begins:
#   app     the app's own "ready" log event (its first successful readiness check)
#   berth   berth-healthwait --url http://<container ip>:8080/readyz --interval 200ms returns
#   compose docker compose up -d --wait returns (the demo's compose healthcheck, interval 2s)
# and the lag of each behind the app. Goal: berth's lag <= one --interval (200 ms).
#
# Usage: bench/healthwait.sh            (RUNS=5 BOOT_MS=1500 by default)
# Needs: scripts/setup.sh done (images, compose v2), jq.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-5}
BOOT_MS=${BOOT_MS:-1500}
INTERVAL=200ms

bin=$root/target/release/berth-healthwait
[ -x "$bin" ] || (cd "$root" && cargo build --release -q -p berth-healthwait)

project=bench-hw-$$
work=$(mktemp -d)
dir=$work/$project
mkdir -p "$dir"
(cd "$root/examples/demo" && tar --exclude=./app --exclude=./.env --exclude=./.berth -cf - .) | tar -C "$dir" -xf -
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{ sed "s/^DEMO_HTTP_PORT=.*/DEMO_HTTP_PORT=$port/" "$dir/.env.example"; echo "DEMO_BOOT_DELAY_MS=$BOOT_MS"; } >"$dir/.env"
compose() { docker compose --project-directory "$dir" -p "$project" "$@"; }
cleanup() { compose down -v --remove-orphans -t 1 >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
now_ms() { date +%s%3N; }

echo "bench/healthwait: preparing $project (db, redis, migration)" >&2
compose up -d --wait db redis >/dev/null 2>&1
compose run --rm --no-deps -T web migrate >/dev/null 2>&1

printf '%-4s %9s %9s %9s %11s %12s %8s\n' run app_ms berth_ms compose_ms berth_lag compose_lag ratio
apps=() berths=() composes=()
for i in $(seq 1 "$RUNS"); do
	compose rm -sf web >/dev/null 2>&1
	t0=$(now_ms)
	(compose up -d --wait --no-deps web >/dev/null 2>&1; now_ms >"$work/compose_done") &
	cpid=$!
	cid=""
	until [ -n "$cid" ]; do
		cid=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter label=com.docker.compose.service=web)
		[ -n "$cid" ] || sleep 0.02
	done
	ip=""
	until [ -n "$ip" ]; do
		ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cid")
		[ -n "$ip" ] || sleep 0.02
	done
	"$bin" --url "http://$ip:8080/readyz" --interval "$INTERVAL" --timeout 120s </dev/null >/dev/null 2>&1
	tb=$(now_ms)
	wait "$cpid"
	tc=$(cat "$work/compose_done")
	ta=$(docker logs "$cid" 2>/dev/null | grep '"event":"ready"' | head -n 1 | jq -r .unix_ms)
	app=$((ta - t0)) berth=$((tb - t0)) comp=$((tc - t0))
	apps+=("$app") berths+=("$berth") composes+=("$comp")
	ratio=$(awk -v c="$comp" -v b="$berth" 'BEGIN { printf "%.2f", c / b }')
	printf '%-4s %9d %9d %9d %11d %12d %8s\n' "$i" "$app" "$berth" "$comp" $((berth - app)) $((comp - app)) "$ratio"
done

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ma=$(median "${apps[@]}") mb=$(median "${berths[@]}") mc=$(median "${composes[@]}")
echo
echo "median over $RUNS runs (boot delay ${BOOT_MS} ms, berth --interval $INTERVAL, compose healthcheck interval 2s):"
echo "  app ready after up:           ${ma} ms"
echo "  berth-healthwait knew after:  ${mb} ms  (lag $((mb - ma)) ms)"
echo "  compose up --wait knew after: ${mc} ms  (lag $((mc - ma)) ms)"
awk -v c="$mc" -v b="$mb" 'BEGIN { printf "  ratio compose/berth:          %.2fx\n", c / b }'
