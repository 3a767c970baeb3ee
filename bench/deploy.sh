#!/usr/bin/env bash
# bench/deploy.sh -- what does the whole deploy cost beyond its unavoidable parts?
#
# In one run, on two fresh copies of the demo stack at v1 (same machine, same images):
#   parts (stack A): pg_dump -Fc alone; the v2 migration command alone (compose run);
#                    a v2 web container's start to ready (compose up beside the old one
#                    until its own "ready" log event); the configured drain
#   deploy (stack B): scripts/deploy.sh v2 (preflight, pull, backup, migrate, swap of web
#                    and worker, smoke, report), wall time and each stage's duration
# and each berth command's start-up cost (`--version`, N runs) against /bin/true.
# Goal: start-up under 5 ms per command.
#
# Usage: bench/deploy.sh     (DRAIN=2s RUNS=200 by default; needs scripts/setup.sh done)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DRAIN=${DRAIN:-2s}
RUNS=${RUNS:-200}
bin=$root/target/release
for b in healthwait swap backup migrate rollback report; do
	[ -x "$bin/berth-$b" ] || (cd "$root" && cargo build --release -q --workspace --bins)
done
work=$(mktemp -d)
stacks=()
now_ms() { date +%s%3N; }
new_stack() { # DIR: a copy of the demo at v1, migrated and running
	local dir=$1 name port
	name=$(basename "$dir")
	mkdir -p "$dir"
	(cd "$root/examples/demo" && tar --exclude=./app --exclude=./.env --exclude=./.berth -cf - .) | tar -C "$dir" -xf -
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	sed "s/^DEMO_HTTP_PORT=.*/DEMO_HTTP_PORT=$port/" "$dir/.env.example" >"$dir/.env"
	(cd "$dir" && docker compose -p "$name" up -d --wait db redis >/dev/null 2>&1 &&
		docker compose -p "$name" run --rm --no-deps -T web migrate >/dev/null 2>&1 &&
		docker compose -p "$name" up -d --wait >/dev/null 2>&1)
}
cleanup() {
	for d in "${stacks[@]}"; do
		(cd "$d" && docker compose -p "$(basename "$d")" down -v --remove-orphans -t 1 >/dev/null 2>&1) || true
	done
	rm -rf "$work"
}
trap cleanup EXIT

echo "bench/deploy: starting two copies of the demo stack at v1" >&2
a=$work/bench-deploy-a-$$ b=$work/bench-deploy-b-$$
stacks=("$a" "$b")
new_stack "$a"
new_stack "$b"
pa=$(basename "$a") pb=$(basename "$b")
ca() { (cd "$a" && docker compose -p "$pa" "$@"); }

# --- the unavoidable parts, on stack A ---
t=$(now_ms); ca exec -T db pg_dump -U demo -Fc demo >/dev/null; dump=$(($(now_ms) - t))
t=$(now_ms); BERTH_TAG=v2 ca run --rm --no-deps -T web migrate >/dev/null; mig=$(($(now_ms) - t))
t=$(now_ms)
BERTH_TAG=v2 ca up -d --no-deps --no-recreate --scale web=2 web >/dev/null 2>&1
new=$(docker ps -q --filter "label=com.docker.compose.project=$pa" --filter label=com.docker.compose.service=web --filter ancestor=berth-demo/app:v2 | head -n 1)
until docker logs "$new" 2>/dev/null | grep -q '"event":"ready"'; do sleep 0.01; done
ready_unix=$(docker logs "$new" 2>/dev/null | grep '"event":"ready"' | head -n 1 | sed 's/.*"unix_ms":\([0-9]*\).*/\1/')
boot=$((ready_unix - t))
drain_ms=$(python3 -c "import sys; s='$DRAIN'; print(int(float(s[:-2]) if s.endswith('ms') else float(s[:-1])*1000 if s.endswith('s') else float(s)*1000))")
sum=$((dump + mig + boot + drain_ms))

# --- the whole deploy, on stack B ---
t=$(now_ms)
BERTH_BIN_DIR=$bin BERTH_PROJECT_DIR=$b BERTH_PROJECT_NAME=$pb BERTH_DRAIN=$DRAIN \
	DEPLOY_SERVICES="web worker" DEPLOY_WORKERS=worker DEPLOY_MIGRATE_CMD=migrate \
	DEPLOY_SMOKE_URL="http://127.0.0.1:$(sed -n 's/^DEMO_HTTP_PORT=//p' "$b/.env")/smoke" \
	DEPLOY_SMOKE_SUCCESSES=1 "$root/scripts/deploy.sh" v2 >/dev/null 2>"$work/deploy.err" || {
	echo "deploy failed:" >&2; cat "$work/deploy.err" >&2; exit 1; }
wall=$(($(now_ms) - t))
doc=$(ls "$b/.berth/deploys/"*.json | tail -n 1)

echo "whole deploy v1 -> v2 (web + worker), drain $DRAIN:"
printf '  %-34s %7d ms\n' "pg_dump -Fc alone" "$dump" "migration command alone" "$mig" \
	"new container start to ready" "$boot" "drain" "$drain_ms"
printf '  %-34s %7d ms\n' "sum of the unavoidable parts" "$sum" "scripts/deploy.sh wall time" "$wall"
awk -v w="$wall" -v s="$sum" 'BEGIN { printf "  %-34s %7.2fx (overhead %d ms)\n", "ratio wall / parts", w / s, w - s }'
echo "  stages of the deploy (from its document):"
python3 - "$doc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for s in d["stages"]:
    print(f"    {s['stage']:<12} {s['status']:<8} {s['duration_ms']:>7} ms")
    if s["stage"] == "swap":
        det = s["detail"]
        parts = ", ".join(f"{k[:-3]} {det[k]} ms" for k in ("ready_ms", "switch_ms", "drain_ms", "stop_ms") if k in det)
        print(f"    {'':<12} {'':<8} ({parts})")
PY

echo
echo "start-up cost per command (--version, $RUNS runs each, minus /bin/true):"
mean_us() {
	local t0 t1
	t0=$(date +%s%N)
	for _ in $(seq "$RUNS"); do "$@" >/dev/null 2>&1 </dev/null; done
	t1=$(date +%s%N)
	echo $(((t1 - t0) / RUNS / 1000))
}
base=$(mean_us /bin/true)
printf '  %-18s %6d us\n' /bin/true "$base"
for c in healthwait swap backup migrate rollback report; do
	m=$(mean_us "$bin/berth-$c" --version)
	printf '  %-18s %6d us  (+%d us = %.2f ms over /bin/true)\n' "berth-$c" "$m" $((m - base)) "$(awk -v x=$((m - base)) 'BEGIN{print x/1000}')"
done
