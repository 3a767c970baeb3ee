#!/usr/bin/env bash
# scripts/lib/verify-fixtures.sh -- prove the berth-fixture images built by
# scripts/setup.sh work, using throwaway containers on a throwaway network
# (removed on exit, with their volumes). Needs docker, curl, psql/pg_restore on the host.
# Usage: scripts/lib/verify-fixtures.sh
set -euo pipefail

ID=berthv$$
NET=$ID-net
TMP=$(mktemp -d)
CONTAINERS=()
REG_TAGS=()
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf 'verify: %s\n' "$*" >&2; }
fail() {
	printf 'verify: FAILED: %s\n' "$*" >&2
	exit 1
}
now_ms() { date +%s%3N; }
secs() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.2f s", (b - a) / 1000 }'; }

cleanup() {
	local c
	for c in "${CONTAINERS[@]}"; do
		docker rm -f -v "$c" >/dev/null 2>&1 || true
	done
	docker network rm "$NET" >/dev/null 2>&1 || true
	"$HERE/registry.sh" stop "$TMP/registry" 2>/dev/null || true
	docker rmi "${REG_TAGS[@]}" >/dev/null 2>&1 || true
	rm -rf "$TMP"
}
trap cleanup EXIT

run() { # run NAME docker-run-args...: start a detached throwaway container
	local name=$1
	shift
	CONTAINERS+=("$name")
	docker run -d --name "$name" --network "$NET" "$@" >/dev/null
}

host_port() { docker port "$1" "$2" | head -n 1 | sed 's/.*://'; }

# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds
wait_for() {
	local limit=$1
	shift
	local deadline=$(($(date +%s%3N) + limit * 1000))
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s%3N)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

docker network create "$NET" >/dev/null

# --- nginx ----------------------------------------------------------------------------
t=$(now_ms)
run "$ID-nginx-stock" berth-fixture/nginx:1
sleep 1
[ "$(docker inspect -f '{{.State.Running}}' "$ID-nginx-stock")" = true ] || fail "stock nginx exited"
# LISTEN sockets, minus Docker's embedded DNS on 127.0.0.11 (user-defined networks).
listeners=$(docker exec "$ID-nginx-stock" awk '$4 == "0A" && $2 !~ /^0B00007F:/' /proc/net/tcp /proc/net/tcp6 | wc -l)
[ "$listeners" = 0 ] || fail "stock nginx listens on $listeners sockets (expected none)"
say "nginx: stock config runs and listens on nothing"

mkdir -p "$TMP/nginx/berth"
cat >"$TMP/nginx/nginx.conf" <<'EOF'
events {}
http {
    include /etc/nginx/berth/*.conf;
}
EOF
cat >"$TMP/nginx/berth/site.conf" <<'EOF'
server {
    listen 80;
    location / { return 200 "fixture-nginx-ok\n"; }
}
EOF
run "$ID-nginx" -p 127.0.0.1::80 \
	-v "$TMP/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" -v "$TMP/nginx/berth:/etc/nginx/berth:ro" \
	berth-fixture/nginx:1
port=$(host_port "$ID-nginx" 80)
wait_for 10 curl -fsS "http://127.0.0.1:$port/" || fail "nginx did not answer on 127.0.0.1:$port"
[ "$(curl -fsS "http://127.0.0.1:$port/")" = fixture-nginx-ok ] || fail "nginx: wrong body"
docker exec "$ID-nginx" nginx -s reload
sleep 0.3
[ "$(curl -fsS "http://127.0.0.1:$port/")" = fixture-nginx-ok ] || fail "nginx: wrong body after reload"
t1=$(now_ms)
docker stop "$ID-nginx" >/dev/null
say "nginx: answers on 127.0.0.1:$port with a bind-mounted config, reloads; docker stop took $(secs "$t1") (total $(secs "$t"))"

# --- postgres -------------------------------------------------------------------------
t=$(now_ms)
PG=$ID-pg
run "$PG" -p 127.0.0.1::5432 -e POSTGRES_USER=berth -e POSTGRES_PASSWORD=s3cret -e POSTGRES_DB=app \
	berth-fixture/postgres:15
pg_ready() { docker exec "$PG" pg_isready -h 127.0.0.1 -U berth -d app; }
wait_for 60 pg_ready || {
	docker logs "$PG" >&2
	fail "postgres not ready"
}
say "postgres: first start (initdb) ready over TCP in $(secs "$t")"
port=$(host_port "$PG" 5432)
export PGPASSWORD=s3cret
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U berth -d app \
	-c 'CREATE TABLE t (id int PRIMARY KEY, v text)' -c "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g" ||
	fail "host psql with password"
if PGPASSWORD=wrong psql -X -h 127.0.0.1 -p "$port" -U berth -d app -c 'select 1' >/dev/null 2>&1; then
	fail "wrong password accepted"
fi
method=$(psql -X -At -h 127.0.0.1 -p "$port" -U berth -d app -c "SELECT rolpassword LIKE 'SCRAM-SHA-256%' FROM pg_authid WHERE rolname = 'berth'")
[ "$method" = t ] || fail "password not stored as SCRAM"
say "postgres: host psql via 127.0.0.1:$port with password OK, wrong password refused, SCRAM stored"

n=$(docker run --rm --network "$NET" -e PGPASSWORD=s3cret berth-fixture/postgres:15 \
	psql -X -At -h "$PG" -U berth -d app -c 'SELECT count(*) FROM t')
[ "$n" = 1000 ] || fail "psql from another container saw $n rows"
say "postgres: psql from another container on the network OK ($n rows)"

t1=$(now_ms)
docker stop "$PG" >/dev/null
stop_s=$(secs "$t1")
t1=$(now_ms)
docker start "$PG" >/dev/null
wait_for 60 pg_ready || fail "postgres not ready after restart"
start_s=$(secs "$t1")
n=$(psql -X -At -h 127.0.0.1 -p "$(host_port "$PG" 5432)" -U berth -d app -c 'SELECT count(*) FROM t')
[ "$n" = 1000 ] || fail "after stop/start saw $n rows"
grep -q 'database system was shut down at' <(docker logs "$PG" 2>&1) || fail "no clean shutdown in logs"
say "postgres: docker stop $stop_s (clean fast shutdown), start+ready $start_s, data intact ($n rows)"

docker exec "$PG" pg_dump -U berth -Fc app >"$TMP/app.dump" || fail "pg_dump -Fc"
pg_restore -l "$TMP/app.dump" | grep -q 'TABLE DATA public t ' || fail "dump lacks table t"
docker exec "$PG" createdb -U berth restored
docker exec -i "$PG" pg_restore -U berth -d restored --no-owner <"$TMP/app.dump" || fail "pg_restore"
n=$(docker exec "$PG" psql -X -At -U berth -d restored -c 'SELECT count(*) FROM t')
[ "$n" = 1000 ] || fail "restored db has $n rows"
say "postgres: docker exec pg_dump -Fc ($(stat -c %s "$TMP/app.dump") bytes), host pg_restore -l, docker exec -i pg_restore OK"

t1=$(now_ms)
docker exec "$PG" pgbench -i -s 1 -U berth app >"$TMP/pgbench-init.log" 2>&1 || {
	cat "$TMP/pgbench-init.log" >&2
	fail "pgbench -i"
}
docker exec "$PG" pgbench -T 3 -c 2 -U berth app >"$TMP/pgbench.log" 2>&1 || {
	cat "$TMP/pgbench.log" >&2
	fail "pgbench run"
}
say "postgres: pgbench -i -s 1 OK; pgbench -T 3 -c 2: $(grep -E '^tps' "$TMP/pgbench.log" | head -n 1) ($(secs "$t1"))"

# POSTGRES_PASSWORD_FILE, default user/db
printf 'fromfile\n' >"$TMP/pw"
chmod 0644 "$TMP/pw"
run "$ID-pg2" -e POSTGRES_PASSWORD_FILE=/run/pw -v "$TMP/pw:/run/pw:ro" berth-fixture/postgres:15
wait_for 60 docker exec "$ID-pg2" pg_isready -h 127.0.0.1 -U postgres || fail "pg2 not ready"
docker run --rm --network "$NET" -e PGPASSWORD=fromfile berth-fixture/postgres:15 \
	psql -X -At -h "$ID-pg2" -U postgres -d postgres -c 'select 1' >/dev/null || fail "POSTGRES_PASSWORD_FILE"
say "postgres: POSTGRES_PASSWORD_FILE + default user/db OK"
if docker run --rm berth-fixture/postgres:15 >/dev/null 2>&1; then
	fail "started without any password"
fi
say "postgres: refuses to initialize without a password"

# --- redis ----------------------------------------------------------------------------
t=$(now_ms)
R=$ID-redis
run "$R" -p 127.0.0.1::6379 berth-fixture/redis:7
wait_for 10 docker exec "$R" redis-cli ping || fail "redis not answering"
[ "$(docker exec "$R" redis-cli ping)" = PONG ] || fail "redis PING"
[ "$(docker run --rm --network "$NET" berth-fixture/redis:7 redis-cli -h "$R" ping)" = PONG ] || fail "redis from other container"
docker exec "$R" redis-cli set berth:key fixture >/dev/null
user=$(docker exec "$R" ps -o user= -C redis-server)
docker stop "$R" >/dev/null
docker start "$R" >/dev/null
wait_for 10 docker exec "$R" redis-cli ping || fail "redis not answering after restart"
[ "$(docker exec "$R" redis-cli get berth:key)" = fixture ] || fail "redis lost data over stop/start"
say "redis: PING -> PONG (docker exec and from another container), runs as $user, AOF keeps data over stop/start ($(secs "$t"))"

# --- private registry (scripts/lib/registry.sh) ---------------------------------------
t=$(now_ms)
pid=$("$HERE/registry.sh" start "$TMP/registry")
rport=$("$HERE/registry.sh" port "$TMP/registry")
say "registry: started pid $pid on 127.0.0.1:$rport ($(secs "$t"))"
mkdir -p "$TMP/tiny"
printf 'berth %s\n' "$ID" >"$TMP/tiny/hello"
ref=127.0.0.1:$rport/berth-verify/tiny:$ID
REG_TAGS+=("berth-verify/tiny:$ID" "$ref")
tar -C "$TMP/tiny" -c . | docker import - "berth-verify/tiny:$ID" >/dev/null
docker tag "berth-verify/tiny:$ID" "$ref"
t=$(now_ms)
docker push "$ref" >/dev/null || fail "docker push $ref"
push_s=$(secs "$t")
docker rmi "$ref" "berth-verify/tiny:$ID" >/dev/null
if docker image inspect "$ref" >/dev/null 2>&1; then fail "$ref still present locally"; fi
t=$(now_ms)
docker pull "$ref" >/dev/null || fail "docker pull $ref"
pull_s=$(secs "$t")
tags=$(curl -fsS "http://127.0.0.1:$rport/v2/berth-verify/tiny/tags/list")
[[ $tags == *"\"$ID\""* ]] || fail "tag list: $tags"
"$HERE/registry.sh" stop "$TMP/registry"
if curl -fsS --max-time 1 "http://127.0.0.1:$rport/v2/" >/dev/null 2>&1; then fail "registry still answering after stop"; fi
say "registry: push $push_s, local tag removed, pull $pull_s, stopped"

say "all fixture images OK"
