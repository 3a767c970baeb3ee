#!/usr/bin/env bash
# bench/offsite: the cost of berth-backup's off-site copy against a plain `restic backup`
# of the same files (archive + manifest) in the same run, into fresh local repositories,
# and berth-backup's own peak memory (restic does the streaming: berth's stays flat).
#
# Usage: bench/offsite.sh [MB]      MB: size of the archive (default 256, incompressible)
#   RUNS=N   plain/berth pairs (default 5, alternating which goes first; medians count)
#
# Needs restic (scripts/setup.sh installs it). Builds berth-backup in release mode. Not
# part of the test suite.
set -euo pipefail

MB=${1:-256}
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p berth-backup --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/berth-backup

WORK=$(mktemp -d /tmp/berth-bench-offsite.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/project/backups"
printf 'services:\n  app:\n    image: berth-fixture/base:12\n' >"$WORK/project/compose.yaml"
FILE=$WORK/project/backups/bench-app-20261206T000000Z.dump
head -c "${MB}M" /dev/urandom >"$FILE"
SHA=$(sha256sum "$FILE" | cut -d' ' -f1)
cat >"$FILE.json" <<JSON
{"format":"berth-backup/1","kind":"pg","file":"$(basename "$FILE")","bytes":$((MB * 1048576)),
 "sha256":"$SHA","created_at":"2026-12-06T00:00:00.000Z","project":"bench","target":"app",
 "source":"bench","verification":"read","duration_ms":1}
JSON
echo pw >"$WORK/pw"
export RESTIC_PASSWORD_FILE=$WORK/pw

now() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
plain() {
	local t0
	t0=$(now)
	restic --no-cache -q -r "$1" backup "$FILE" "$FILE.json" >/dev/null
	ms "$t0" "$(now)"
}
# berth-backup's own peak (VmHWM), polled from /proc while it runs: GNU time's maxrss
# would report restic's (a child's) peak instead.
berth() {
	local t0 pid hwm=0 v
	t0=$(now)
	"$BIN" copy "$FILE" --copy-to "restic:$1" --quiet --project-dir "$WORK/project" -p bench \
		>/dev/null &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
		[ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
		sleep 0.02
	done
	wait "$pid"
	echo "$hwm" >"$WORK/rss"
	ms "$t0" "$(now)"
}

printf '%-4s %10s %10s %8s %10s\n' run plain_ms berth_ms ratio berth_rss
plains=() berths=() rss=()
for i in $(seq 1 "$RUNS"); do
	for r in a b; do restic --no-cache -q -r "$WORK/repo-$i-$r" init >/dev/null; done
	if [ $((i % 2)) = 1 ]; then
		p=$(plain "$WORK/repo-$i-a"); b=$(berth "$WORK/repo-$i-b")
	else
		b=$(berth "$WORK/repo-$i-b"); p=$(plain "$WORK/repo-$i-a")
	fi
	kb=$(cat "$WORK/rss")
	plains+=("$p") berths+=("$b") rss+=("$kb")
	printf '%-4s %10s %10s %8s %8s KB\n' "$i" "$p" "$b" "$(awk -v p="$p" -v b="$b" 'BEGIN{printf "%.3f", p/b}')" "$kb"
	rm -rf "$WORK/repo-$i-a" "$WORK/repo-$i-b"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mp=$(median "${plains[@]}") mb=$(median "${berths[@]}") mr=$(median "${rss[@]}")
echo
echo "median over $RUNS runs, ${MB} MB archive + manifest, fresh local restic repositories:"
echo "  plain restic backup:          $mp ms"
echo "  berth-backup copy (restic):   $mb ms"
echo "  ratio plain/berth:            $(awk -v p="$mp" -v b="$mb" 'BEGIN{printf "%.3f", p/b}')  (goal >= 0.9)"
echo "  berth-backup peak RSS:        $((mr / 1024)) MB ($mr KB; goal < 20 MB)"
