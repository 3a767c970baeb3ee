#!/usr/bin/env bash
# End-to-end smoke check of the demo stack, in a throwaway copy of this directory under
# its own compose project and loopback port; always removed again (`down -v`).
#
#   examples/demo/check.sh [PROJECT]
#
# Needs the images (scripts/setup.sh, or ./build-images.sh once the fixture images
# exist), docker compose v2 and curl; uses wrk for the load step when it is installed.
# Checks: readiness before/after migrate, X-Demo-Version, draining on SIGTERM, the
# worker losing no job across a stop, the v2 migration and v1 on schema 2, the broken,
# unready, sick and badmigrate images, and a short load through nginx with no errors.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="${1:-berthdemo-check-$$}"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
dir="$(mktemp -d)"
cp -r "$here/." "$dir/"
rm -rf "$dir/app" "$dir/.env"
cp "$dir/.env.example" "$dir/.env"
sed -i "s/^DEMO_HTTP_PORT=.*/DEMO_HTTP_PORT=$port/" "$dir/.env"
url="http://127.0.0.1:$port"

dc() { timeout 180 docker compose --project-directory "$dir" -p "$project" "$@"; }
cleanup() {
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    for c in "$project-unready" "$project-sick"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "check: FAIL: $*" >&2
    exit 1
}
ok() { echo "check: ok: $*"; }
redis() { dc exec -T redis redis-cli "$@"; }
psql() { dc exec -T db psql -U demo -d demo -Atc "$1"; }
processing_left() {
    local k n=0
    for k in $(redis --scan --pattern 'demo:processing:*'); do n=$((n + $(redis llen "$k"))); done
    echo "$n"
}
container() { docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1" | head -n1; }
wait_healthy() {
    local c=$1 i s=""
    for i in $(seq 1 120); do
        s="$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null || true)"
        [[ "$s" == healthy ]] && return 0
        sleep 0.25
    done
    fail "container $c not healthy after 30 s (status: $s)"
}

echo "check: project $project, port $port, dir $dir"

# 1. Before the migration the app runs but is not ready.
dc up -d --wait db redis >/dev/null 2>&1 || fail "db and redis did not become healthy"
dc up -d --no-deps web >/dev/null 2>&1
sleep 1
out="$(dc exec -T web /app healthcheck /readyz || true)"
[[ "$out" == "503 "*"not migrated"* ]] || fail "/readyz before migrate: $out"
ok "/readyz is 503 before migrate ($out)"

# 2. Migrate (twice: the second run does nothing).
dc run --rm --no-deps -T web migrate | sed 's/^/    /'
again="$(dc run --rm --no-deps -T web migrate)"
[[ "$again" == *"nothing to do"* ]] || fail "second migrate: $again"
ok "migrate is idempotent"

# 3. Everything up; through nginx.
dc up -d --wait >/dev/null 2>&1 || fail "stack did not become healthy after migrate"
body="$(curl -fsS "$url/")"
[[ "$body" == v1 ]] || fail "GET / answered '$body'"
curl -fsS -D - -o /dev/null "$url/" | grep -qi '^X-Demo-Version: v1' || fail "no X-Demo-Version: v1"
ready="$(curl -fsS "$url/readyz")" || fail "/readyz not 200 after migrate"
ok "GET / = v1 with X-Demo-Version: v1, /readyz = $ready"

# 4. SIGTERM lets the request in flight finish.
web="$(container web)"
curl -sS -o /dev/null -w '%{http_code}' "$url/slow?ms=3000" >"$dir/slow.code" &
slow=$!
sleep 0.5
docker stop "$web" >/dev/null
wait "$slow" || true
[[ "$(cat "$dir/slow.code")" == 200 ]] || fail "in-flight /slow during docker stop got $(cat "$dir/slow.code")"
[[ "$(docker inspect -f '{{.State.ExitCode}}' "$web")" == 0 ]] || fail "web did not exit 0 on SIGTERM"
ok "a 3 s request in flight during docker stop got 200; exit code 0"
docker start "$web" >/dev/null
wait_healthy "$web"

# 5. Worker: no job lost or doubled across a stop.
redis del demo:done >/dev/null
dc exec -T worker /app enqueue 200 check >/dev/null
sleep 2
dc stop worker >/dev/null 2>&1
mid="$(redis llen demo:done)"
dc start worker >/dev/null 2>&1
for _ in $(seq 1 120); do
    [[ "$(redis llen demo:jobs)" == 0 && "$(processing_left)" == 0 ]] && break
    sleep 0.25
done
sleep 1
done_n="$(redis llen demo:done)"
uniq_n="$(redis lrange demo:done 0 -1 | sort -u | wc -l)"
[[ "$done_n" == 200 && "$uniq_n" == 200 ]] || fail "worker: $done_n done ($uniq_n unique), want 200"
ok "worker stopped after $mid jobs, restarted: 200 of 200 done exactly once"

# 6. Schema 2: the v2 migration adds a column; v1 stays ready on it.
BERTH_TAG=badmigrate dc run --rm --no-deps -T web migrate >/dev/null 2>&1 && fail "badmigrate migrate succeeded"
[[ "$(psql 'SELECT max(version) FROM schema_version')" == 1 ]] || fail "badmigrate changed the schema"
ok "badmigrate: migrate exits non-zero, schema still 1"
BERTH_TAG=v2 dc run --rm --no-deps -T web migrate >/dev/null
[[ "$(psql "SELECT count(*) FROM information_schema.columns WHERE table_name='items' AND column_name='note'")" == 1 ]] ||
    fail "v2 migration did not add items.note"
sleep 0.5
ready="$(curl -fsS "$url/readyz")" || fail "v1 not ready on schema 2"
[[ "$ready" == *'"db_schema":2'* ]] || fail "v1 /readyz on schema 2: $ready"
ok "v2 migrate added items.note; v1 /readyz on schema 2: $ready"

# 7. The broken, unready and sick images.
start=$(date +%s%N)
BERTH_TAG=broken dc run --rm --no-deps -T web >/dev/null 2>&1 && fail "broken image did not fail"
ok "broken exits non-zero at start ($(( ($(date +%s%N) - start) / 1000000 )) ms including compose run)"
BERTH_TAG=unready dc run -d --no-deps --name "$project-unready" web >/dev/null
BERTH_TAG=sick dc run -d --no-deps --name "$project-sick" web >/dev/null
sleep 4
out="$(docker exec "$project-unready" /app healthcheck /readyz || true)"
[[ "$out" == "503 "* ]] || fail "unready: /readyz $out"
out="$(docker exec "$project-sick" /app healthcheck /readyz || true)"
[[ "$out" == "200 "* ]] || fail "sick: /readyz $out"
out="$(docker exec "$project-sick" /app healthcheck /smoke || true)"
[[ "$out" == "500 "* ]] || fail "sick: /smoke $out"
ok "unready: /readyz 503 after 4 s; sick: /readyz 200 but /smoke 500"
docker rm -f "$project-unready" "$project-sick" >/dev/null

# 8. A short load through nginx: no errors.
if command -v wrk >/dev/null; then
    res="$(wrk -t2 -c16 -d5s "$url/" 2>&1)"
    total="$(awk '/requests in/ {print $1}' <<<"$res")"
    rate="$(awk '/Requests\/sec/ {print $2}' <<<"$res")"
    if grep -qE 'Non-2xx|Socket errors' <<<"$res"; then fail "load: $res"; fi
    ok "load: $total requests in 5 s (${rate} req/s, 16 clients, wrk) through nginx, 0 errors"
else
    for i in $(seq 1 8); do
        (
            n=0
            end=$((SECONDS + 5))
            while ((SECONDS < end)); do
                code="$(curl -s -o /dev/null -w '%{http_code}' "$url/")"
                [[ "$code" == 200 ]] || echo "error $code"
                n=$((n + 1))
            done
            echo "sent $n"
        ) >"$dir/load.$i" &
    done
    wait
    errors="$(cat "$dir"/load.* | grep -c '^error' || true)"
    total="$(cat "$dir"/load.* | awk '/^sent/ {s += $2} END {print s}')"
    [[ "$errors" == 0 ]] || fail "load: $errors errors of $total"
    ok "load: $total requests in 5 s (8 curl loops) through nginx, 0 errors"
fi

echo "check: all passed"
