#!/usr/bin/env bash
# bench/backup: berth-backup against a plain `pg_dump -Fc > file` on the same database in
# the same run, the extra cost of read and restore verification, and berth-backup's peak
# memory at two database sizes (it streams: the goal is flat, under 20 MB).
#
# Usage: bench/backup.sh [SCALE] [SMALL_SCALE]
#   SCALE        pgbench scale of the big database (default 70: about 1 GB)
#   SMALL_SCALE  pgbench scale of the small one, for the memory comparison (default 7)
#   RUNS=N       plain/berth pairs at the big scale (default 2; the best of each counts)
#
# Needs scripts/setup.sh (images, compose v2). Builds
# berth-backup in release mode. Everything runs in a private compose project that is
# removed at the end. Not part of the test suite.
set -euo pipefail

SCALE=${1:-70}
SMALL=${2:-7}
RUNS=${RUNS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

cargo build --release -q -p berth-backup --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/berth-backup

WORK=$(mktemp -d /tmp/berth-bench-backup.XXXXXX)
PROJECT=bench-backup-$$
DIR=$WORK/$PROJECT
mkdir -p "$DIR"
cp "$ROOT/examples/demo/compose.yaml" "$DIR/"
cp "$ROOT/examples/demo/.env.example" "$DIR/.env"
dc() { docker compose --project-directory "$DIR" -p "$PROJECT" "$@"; }
cleanup() { dc down -v -t 2 >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

dc up -d --wait db >/dev/null 2>&1

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

populate() {
	dc exec -T db pgbench -i -q -s "$1" -U demo demo >/dev/null 2>&1
	dc exec -T db psql -X -U demo -d demo -c 'VACUUM ANALYZE' >/dev/null
	dc exec -T db psql -X -U demo -d demo -Atc "SELECT pg_database_size('demo')"
}

# berth-backup, timed; its own peak RSS (VmHWM of its /proc entry, sampled until it exits:
# /usr/bin/time would report the docker CLI child's, which is larger). Prints
# "seconds peak_kb bytes".
berth() {
	local level=$1
	rm -rf "$WORK/b"
	local t0 t1 pid hwm=0 h
	t0=$(now)
	"$BIN" pg --service db --verify "$level" -q \
		--dir "$WORK/b" --project-dir "$DIR" -p "$PROJECT" </dev/null >/dev/null &
	pid=$!
	while [ -r "/proc/$pid/status" ]; do
		h=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
		[ -n "$h" ] && [ "$h" -gt "$hwm" ] && hwm=$h
		sleep 0.05
	done
	wait "$pid"
	t1=$(now)
	local bytes
	bytes=$(stat -c %s "$WORK"/b/*.dump)
	echo "$(secs "$t0" "$t1") $hwm $bytes"
}

# The plain way: pg_dump in the same container, redirected to a file on the host.
plain() {
	local t0 t1
	t0=$(now)
	dc exec -T db pg_dump -U demo -d demo -Fc >"$WORK/plain.dump"
	t1=$(now)
	echo "$(secs "$t0" "$t1") $(stat -c %s "$WORK/plain.dump")"
	rm -f "$WORK/plain.dump"
}

echo "== small database: pgbench scale $SMALL"
small_size=$(populate "$SMALL")
read -r s_secs s_rss s_bytes < <(berth none)
echo "database $((small_size / 1048576)) MiB, dump $((s_bytes / 1048576)) MiB, berth-backup --verify none ${s_secs}s, peak RSS ${s_rss} KB"

echo "== big database: pgbench scale $SCALE"
t0=$(now)
big_size=$(populate "$SCALE")
echo "database $((big_size / 1048576)) MiB (generated in $(secs "$t0" "$(now)")s)"

best_plain=999999
best_berth=999999
peak=0
for i in $(seq 1 "$RUNS"); do
	read -r p_secs p_bytes < <(plain)
	read -r b_secs b_rss b_bytes < <(berth none)
	echo "run $i: plain pg_dump -Fc ${p_secs}s (${p_bytes} B); berth-backup --verify none ${b_secs}s (${b_bytes} B, peak RSS ${b_rss} KB)"
	best_plain=$(awk -v a="$best_plain" -v b="$p_secs" 'BEGIN { print (b < a) ? b : a }')
	best_berth=$(awk -v a="$best_berth" -v b="$b_secs" 'BEGIN { print (b < a) ? b : a }')
	[ "$b_rss" -gt "$peak" ] && peak=$b_rss
done
read -r r_secs r_rss _ < <(berth read)
echo "berth-backup --verify read: ${r_secs}s (peak RSS ${r_rss} KB)"
read -r x_secs x_rss _ < <(berth restore)
echo "berth-backup --verify restore: ${x_secs}s (peak RSS ${x_rss} KB)"

echo
echo "== summary"
awk -v p="$best_plain" -v b="$best_berth" -v r="$r_secs" -v x="$x_secs" -v size="$big_size" \
	-v sr="$s_rss" -v br="$peak" -v ss="$small_size" 'BEGIN {
	printf "throughput ratio (plain time / berth time, best of runs): %.3f (goal >= 0.95)\n", p / b
	printf "plain pg_dump: %.1f MiB/s of database; berth-backup --verify none: %.1f MiB/s\n", size / 1048576 / p, size / 1048576 / b
	printf "extra cost of read verification: +%.2fs (+%.0f%%); of restore verification: +%.2fs (+%.0f%%)\n", r - b, (r - b) / b * 100, x - b, (x - b) / b * 100
	printf "peak RSS: %d KB at %d MiB, %d KB at %d MiB (goal: flat, under 20 MB)\n", sr, ss / 1048576, br, size / 1048576
}'
