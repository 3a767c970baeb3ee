#!/usr/bin/env bash
# scripts/deploy.sh -- deploy TAG of a compose project with zero downtime.
#
# Usage: scripts/deploy.sh [--env NAME] [--dry-run] TAG [SERVICE...]
#
# The thin glue of berth, stage by stage like build_and_deploy.sh, every stage a berth
# command reading and writing the deploy document:
#
#   preflight -> pull -> backup -> [maintenance on] -> [migrate] -> swap
#     -> [maintenance off] -> [smoke] -> rollback (acts only on a failure) -> report
#
# No image is built here: TAG (an immutable tag, usually the git SHA) must already be in
# the registry (or the local image store). The exit code is the deploy's outcome:
#   0 deployed; 1 preflight; 2 image unavailable; 3 swap failed (old version serves);
#   4 unhealthy after the switch, rolled back; 5 backup failed; 6 migration failed
#   (old version serves); 7 rollback failed: CRITICAL; 64 usage; 75 another deploy runs.
#
# Settings come from the environment, then from the env file of the environment
# (`--env production` reads <project dir>/deploy.production.env; DEPLOY_ENV works too);
# a variable already set in the environment wins over the file. The file is data, never
# code (berth-report env-file reads it): KEY=VALUE lines, the value taken literally
# (nothing expanded; one pair of surrounding quotes removed); blank lines and lines
# starting with # are comments, a # inside a value is part of it; CRLF endings are
# stripped with a warning; PATH, LD_*, BASH_*, IFS, ENV, DOCKER_*, BERTH_DOCKER and the
# like are refused, and so is an unknown DEPLOY_* or BERTH_* key (a typo is an error).
#
# Every setting is checked before anything changes: each stage's command runs first with
# --check-args and the exact arguments it will get, so a bad value (e.g.
# DEPLOY_SMOKE_TIMEOUT=60, no unit) exits 64 naming the setting, with nothing changed.
# Once the deploy runs, a stage that ends without writing its document (killed, crashed)
# is recorded as failed in the kept document, and rollback and report still run.
#
#   BERTH_PROJECT_DIR       the compose project (default: the current directory)
#   BERTH_PROJECT_NAME, BERTH_COMPOSE_FILE, BERTH_ENV_FILE, BERTH_STATE_DIR, BERTH_TAG_VAR
#                           as for every berth command (see the README)
#   BERTH_ENGINE=swarm      the same stages on a Docker Swarm manager, the project being the
#                           stack (e.g. in deploy.swarm.env, with BERTH_PROJECT_NAME)
#   DEPLOY_SERVICES         services to swap when none are named (default: every service
#                           whose image uses the tag variable)
#   DEPLOY_WORKERS          of those, the ones that take no traffic (e.g. "worker")
#   DEPLOY_TEST_CMD         a pre-deploy check run by preflight (e.g. "./smoke-config.sh";
#                           words split on spaces, no shell: put pipes in a script)
#   DEPLOY_DB_SERVICE       the PostgreSQL service to back up (default: db); DEPLOY_BACKUP=none skips
#   DEPLOY_BACKUP_VERIFY    none|read|restore (default: read)
#   DEPLOY_MIGRATE_CMD      the migration command, run in a one-off container of the new
#                           image (words split on spaces, no shell), e.g. "alembic upgrade head"
#   DEPLOY_MIGRATE_SERVICE  whose definition runs it (default: the first service)
#   DEPLOY_MAINTENANCE=1    maintenance page around migrate and swap (for migrations the
#                           running version cannot live with)
#   DEPLOY_SMOKE_URL        checked after the switch (e.g. https://shop.example.com/readyz);
#                           failing it rolls back
#   DEPLOY_SMOKE_TIMEOUT    (default 60s), DEPLOY_SMOKE_SUCCESSES (default 3)
#   DEPLOY_NOTIFY           telegram,webhook,slack (their secrets: see berth-report --help)
#   DEPLOY_LOCK_WAIT        wait this long for another deploy (default: fail at once, 75)
#   BERTH_BIN_DIR           where the berth binaries are (default: next to this script's
#                           target/release, else PATH)
set -uo pipefail

say() { printf 'deploy: %s\n' "$*" >&2; }
# --help: the comment block at the top of this file (from line 2 to the first line that
# is not a comment), without its "# ": never a line of code.
usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }
die() { printf 'deploy: error: %s\n' "$2" >&2; exit "$1"; }

env_name=${DEPLOY_ENV:-}
dry_run=()
while [ $# -gt 0 ]; do
	case "$1" in
	--env) [ $# -ge 2 ] || die 64 "--env needs a name"; env_name=$2; shift 2 ;;
	--env=*) env_name=${1#--env=}; shift ;;
	--dry-run) dry_run=(--dry-run); shift ;;
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	-*) die 64 "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || die 64 "usage: deploy.sh [--env NAME] TAG [SERVICE...] (see --help)"
tag=$1
shift

project_dir=${BERTH_PROJECT_DIR:-$PWD}
[ -d "$project_dir" ] || die 64 "project dir $project_dir does not exist"
project_dir=$(cd "$project_dir" && pwd)
export BERTH_PROJECT_DIR=$project_dir

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${BERTH_BIN_DIR:-}
if [ -z "$bin_dir" ] && [ -x "$here/../target/release/berth-swap" ]; then
	bin_dir=$here/../target/release
fi
# berth NAME ARGS: run berth-NAME, replacing the (sub)shell it runs in, so that a
# stage's last stderr line is its own, never the shell's "Killed" report.
berth_exec() {
	local name=berth-$1
	shift
	if [ -n "$bin_dir" ]; then exec "$bin_dir/$name" "$@"; else exec "$name" "$@"; fi
}
berth() { (berth_exec "$@"); }

tmp=$(mktemp -d) || die 1 "cannot create a temporary directory"
lock=
cleanup() {
	rm -rf "$tmp"
	# The kernel drops the lock when this script ends; clear the holder record too, so
	# that nobody reads it later as a lock left behind by a killed deploy.
	[ -z "$lock" ] || : >"$lock"
}
trap cleanup EXIT

# The settings: the environment's, then the env file's. berth-report env-file checks
# both (unknown DEPLOY_* keys, refused keys, the file's format) and prints the file's
# settings as NUL-separated KEY=VALUE: they are exported as they are, never evaluated.
env_args=()
[ -z "$env_name" ] || env_args=(--env "$env_name")
berth report env-file "${env_args[@]}" </dev/null >"$tmp/settings" || exit $?
lock_secs=
while IFS= read -r -d '' kv; do
	key=${kv%%=*}
	[[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die 64 "env-file printed a bad key"
	if [ "$key" = DEPLOY_LOCK_WAIT_SECS ]; then lock_secs=${kv#*=}; else export "$kv"; fi
done <"$tmp/settings"
[ -z "$env_name" ] || say "environment $env_name ($project_dir/deploy.$env_name.env)"

# A --check-args run failed (its stderr in $tmp/check): exit 64 naming the setting its
# error line points at: the variable the value came from when the line says so, else the
# first "text|SETTING" pair whose text the line contains, else $1.
bad_setting() {
	local fallback=$1 line pair
	shift
	line=$(sed -n '$s/^berth-[a-z]*: error: //p' "$tmp/check")
	[[ ! $line =~ \(from\ ([A-Z_]+)\) ]] || die 64 "${BASH_REMATCH[1]}: $line"
	for pair in "$@"; do
		[[ $line != *"${pair%%|*}"* ]] || die 64 "${pair#*|}: $line"
	done
	die 64 "$fallback: $line"
}

# The tag, checked by the binaries' own rule before it goes into any path or JSON.
berth swap --check-args --tag "$tag" </dev/null >/dev/null 2>"$tmp/check" || bad_setting TAG
export BERTH_TAG=$tag

state_dir=${BERTH_STATE_DIR:-$project_dir/.berth}
services=("$@")
services_from="the services named on the command line"
if [ ${#services[@]} -eq 0 ] && [ -n "${DEPLOY_SERVICES:-}" ]; then
	read -r -a services <<<"$DEPLOY_SERVICES"
	services_from=DEPLOY_SERVICES
fi
workers=()
[ -z "${DEPLOY_WORKERS:-}" ] || read -r -a workers <<<"$DEPLOY_WORKERS"
worker_flags=()
for w in "${workers[@]}"; do worker_flags+=(--worker "$w"); done
migrate_cmd=()
[ -z "${DEPLOY_MIGRATE_CMD:-}" ] || read -r -a migrate_cmd <<<"$DEPLOY_MIGRATE_CMD"
migrate_service=${DEPLOY_MIGRATE_SERVICE:-${services[0]:-}}
if [ ${#migrate_cmd[@]} -gt 0 ] && [ -z "$migrate_service" ]; then
	die 64 "DEPLOY_MIGRATE_CMD is set: name the service that runs it (DEPLOY_MIGRATE_SERVICE)"
fi
notify=()
[ -z "${DEPLOY_NOTIFY:-}" ] || notify=(--notify "$DEPLOY_NOTIFY")
case ${DEPLOY_BACKUP:-pg} in pg | none) ;; *) die 64 "DEPLOY_BACKUP=${DEPLOY_BACKUP}: use pg or none" ;; esac
case ${DEPLOY_MAINTENANCE:-0} in 0 | 1) ;; *) die 64 "DEPLOY_MAINTENANCE=${DEPLOY_MAINTENANCE}: use 1 or 0" ;; esac

# The stages, in order; each reads the document on stdin and writes it on stdout. For
# each: <stage>_cmd (the command's words), <stage>_args (its arguments) and
# <stage>_from ("what the error names|the setting it came from", to name the setting).
stages=(preflight pull)
[ "${DEPLOY_BACKUP:-pg}" = none ] || stages+=(backup)
[ "${DEPLOY_MAINTENANCE:-0}" != 1 ] || stages+=(maintenance_on)
[ ${#migrate_cmd[@]} -eq 0 ] || stages+=(migrate)
stages+=(swap)
[ "${DEPLOY_MAINTENANCE:-0}" != 1 ] || stages+=(maintenance_off)
[ -z "${DEPLOY_SMOKE_URL:-}" ] || stages+=(smoke)
stages+=(rollback report)

preflight_cmd=(swap preflight)
preflight_args=("${dry_run[@]}" "${services[@]}")
test_cmd=()
[ -z "${DEPLOY_TEST_CMD:-}" ] || read -r -a test_cmd <<<"$DEPLOY_TEST_CMD"
[ ${#test_cmd[@]} -eq 0 ] || preflight_args+=(-- "${test_cmd[@]}")
preflight_from=("SERVICE|$services_from")
pull_cmd=(swap pull)
pull_args=("${dry_run[@]}" "${services[@]}")
pull_from=("SERVICE|$services_from")
backup_cmd=(backup pg)
backup_args=("${dry_run[@]}" --service "${DEPLOY_DB_SERVICE:-db}" --verify "${DEPLOY_BACKUP_VERIFY:-read}")
backup_from=("--service|DEPLOY_DB_SERVICE" "--verify|DEPLOY_BACKUP_VERIFY")
maintenance_on_cmd=(swap maintenance on)
maintenance_on_args=("${dry_run[@]}")
maintenance_on_from=()
migrate_cmd_=(migrate)
migrate_args=("${dry_run[@]}" "$migrate_service" -- "${migrate_cmd[@]}")
migrate_from=("SERVICE|DEPLOY_MIGRATE_SERVICE" "migration command|DEPLOY_MIGRATE_CMD")
swap_cmd=(swap)
swap_args=("${dry_run[@]}" "${worker_flags[@]}" "${services[@]}")
swap_from=("--worker|DEPLOY_WORKERS" "SERVICE|$services_from")
maintenance_off_cmd=(swap maintenance off)
maintenance_off_args=("${dry_run[@]}")
maintenance_off_from=()
smoke_cmd=(healthwait)
smoke_args=(--url "${DEPLOY_SMOKE_URL:-}" --stage smoke
	--timeout "${DEPLOY_SMOKE_TIMEOUT:-60s}" --successes "${DEPLOY_SMOKE_SUCCESSES:-3}")
smoke_from=("--url|DEPLOY_SMOKE_URL" "--timeout|DEPLOY_SMOKE_TIMEOUT" "--successes|DEPLOY_SMOKE_SUCCESSES")
rollback_cmd=(rollback)
rollback_args=("${dry_run[@]}" "${worker_flags[@]}")
rollback_from=("--worker|DEPLOY_WORKERS")
report_cmd=(report)
report_args=("${notify[@]}" ${dry_run[@]:+--no-ledger})
report_from=("--notify|DEPLOY_NOTIFY")

words() { # the command words of a stage (migrate's would clash with migrate_cmd)
	if [ "$1" = migrate ]; then echo migrate_cmd_; else echo "$1_cmd"; fi
}

# Every stage's command parses its exact arguments now (--check-args: no stdin, no
# docker, nothing written), before the first stage changes anything. A failure exits 64
# naming the setting the bad value came from.
for s in "${stages[@]}"; do
	declare -n c=$(words "$s") a=${s}_args from=${s}_from
	berth "${c[@]}" --check-args "${a[@]}" </dev/null >/dev/null 2>"$tmp/check" ||
		bad_setting "the settings of stage $s" "${from[@]}"
	unset -n c a from
done

# One deploy at a time: hold the project's deploy lock for the whole pipeline; the
# stages see BERTH_LOCK_HELD and run under it.
# The state directory holds deploy documents with log tails and host names: private
# (0700, files 0600), like the backups. Only what berth creates here: the stages keep
# the default umask, so files nginx must read stay readable.
(umask 077 && mkdir -p "$state_dir/locks" "$state_dir/deploys") || die 1 "cannot create $state_dir/locks"
chmod 700 "$state_dir" || die 1 "cannot make $state_dir private (chmod 700)"
lock=$state_dir/locks/deploy.lock
exec 9>>"$lock"
wait_flag=(-n)
[ -z "$lock_secs" ] || wait_flag=(-w "$lock_secs")
if ! flock "${wait_flag[@]}" 9; then
	holder=$(tr -d '\n' <"$lock" 2>/dev/null)
	lock=
	die 75 "another deploy holds the lock $state_dir/locks/deploy.lock${holder:+: $holder}"
fi
printf '{"pid":%d,"program":"deploy.sh","deploy_id":"%s","since":"%s"}' \
	$$ "$tag" "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" >"$lock.tmp" 2>/dev/null && cat "$lock.tmp" >"$lock" && rm -f "$lock.tmp"
export BERTH_LOCK_HELD=$lock

# Stage by stage, the document kept in a file between stages (the same as piping them:
# each reads its predecessor's document). A failure passes through to rollback and
# report, so the report's exit code is the deploy's outcome. A stage that wrote no
# document at all (killed, crashed) is recorded as failed in the kept document, with its
# exit status and last stderr line (scrubbed), and the deploy goes on to rollback and
# report all the same.
doc=$state_dir/deploys/$(date -u +%Y%m%dT%H%M%SZ)-$tag.json
(umask 077 && : >"$doc") || die 1 "cannot create $doc"
say "deploying $tag in $project_dir (${services[*]:-services using the tag variable}): ${stages[*]}"
code=0
for s in "${stages[@]}"; do
	(umask 077 && : >"$doc.next") || die 1 "cannot create $doc.next"
	declare -n c=$(words "$s") a=${s}_args
	# stderr goes on to ours through tee, which keeps it for the last line.
	berth_exec "${c[@]}" "${a[@]}" <"$doc" 2>&1 >"$doc.next" | tee "$tmp/stderr" >&2
	code=${PIPESTATUS[0]}
	unset -n c a
	if [ ! -s "$doc.next" ]; then
		last=$(grep -v '^[[:space:]]*$' "$tmp/stderr" | tail -n 1)
		say "error: stage $s wrote no deploy document (exit $code); recording it as failed"
		[ "$code" -ne 0 ] || code=1
		name=$s
		case $s in maintenance_*) name=maintenance ;; esac
		if ! berth report record-failure --stage "$name" --exit "$code" --message="$last" \
			<"$doc" >"$doc.next" || [ ! -s "$doc.next" ]; then
			rm -f "$doc.next"
			die "$code" "could not record the failure of stage $s in $doc"
		fi
		[ "$s" != report ] || { mv -f "$doc.next" "$doc"; exit "$code"; }
	fi
	mv -f "$doc.next" "$doc"
done
say "finished with exit code $code; the deploy document: $doc"
exit "$code"
