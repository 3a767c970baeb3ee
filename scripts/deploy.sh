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
# a variable already set in the environment wins over the file. The file is read as
# KEY=VALUE lines, never executed.
#
#   BERTH_PROJECT_DIR       the compose project (default: the current directory)
#   BERTH_PROJECT_NAME, BERTH_COMPOSE_FILE, BERTH_STATE_DIR, BERTH_TAG_VAR
#                           as for every berth command (see the README)
#   DEPLOY_SERVICES         services to swap when none are named (default: every service
#                           whose image uses the tag variable)
#   DEPLOY_WORKERS          of those, the ones that take no traffic (e.g. "worker")
#   DEPLOY_TEST_CMD         a pre-deploy check run by preflight (e.g. "./smoke-config.sh")
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
die() { printf 'deploy: error: %s\n' "$2" >&2; exit "$1"; }

env_name=${DEPLOY_ENV:-}
dry_run=()
while [ $# -gt 0 ]; do
	case "$1" in
	--env) [ $# -ge 2 ] || die 64 "--env needs a name"; env_name=$2; shift 2 ;;
	--env=*) env_name=${1#--env=}; shift ;;
	--dry-run) dry_run=(--dry-run); shift ;;
	-h | --help) sed -n '2,49p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	--) shift; break ;;
	-*) die 64 "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
[ $# -ge 1 ] || die 64 "usage: deploy.sh [--env NAME] TAG [SERVICE...] (see --help)"
tag=$1
shift
case "$tag" in
[A-Za-z0-9_]*) ;;
*) die 64 "TAG $tag is not a valid image tag" ;;
esac

project_dir=${BERTH_PROJECT_DIR:-$PWD}
[ -d "$project_dir" ] || die 64 "project dir $project_dir does not exist"
project_dir=$(cd "$project_dir" && pwd)
export BERTH_PROJECT_DIR=$project_dir

# The environment's file: KEY=VALUE lines; what the environment already sets wins.
if [ -n "$env_name" ]; then
	env_file=$project_dir/deploy.$env_name.env
	[ -f "$env_file" ] || die 64 "no env file $env_file for --env $env_name"
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in '' | '#'*) continue ;; esac
		key=${line%%=*}
		value=${line#*=}
		[[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die 64 "$env_file: not KEY=VALUE: ${key:0:40}"
		case "$value" in \"*\") value=${value:1:-1} ;; \'*\') value=${value:1:-1} ;; esac
		[ -n "${!key+set}" ] || export "$key=$value"
	done <"$env_file"
	say "environment $env_name ($env_file)"
fi

here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${BERTH_BIN_DIR:-}
if [ -z "$bin_dir" ] && [ -x "$here/../target/release/berth-swap" ]; then
	bin_dir=$here/../target/release
fi
berth() {
	local name=berth-$1
	shift
	if [ -n "$bin_dir" ]; then "$bin_dir/$name" "$@"; else "$name" "$@"; fi
}

export BERTH_TAG=$tag
state_dir=${BERTH_STATE_DIR:-$project_dir/.berth}
services=("$@")
if [ ${#services[@]} -eq 0 ] && [ -n "${DEPLOY_SERVICES:-}" ]; then
	read -r -a services <<<"$DEPLOY_SERVICES"
fi
workers=()
[ -z "${DEPLOY_WORKERS:-}" ] || read -r -a workers <<<"$DEPLOY_WORKERS"
worker_flags=()
for w in "${workers[@]}"; do worker_flags+=(--worker "$w"); done
migrate_cmd=()
[ -z "${DEPLOY_MIGRATE_CMD:-}" ] || read -r -a migrate_cmd <<<"$DEPLOY_MIGRATE_CMD"
db_service=${DEPLOY_DB_SERVICE:-db}
if [ ${#migrate_cmd[@]} -gt 0 ] && [ -z "${DEPLOY_MIGRATE_SERVICE:-}" ] && [ ${#services[@]} -eq 0 ]; then
	die 64 "DEPLOY_MIGRATE_CMD is set: name the service that runs it (DEPLOY_MIGRATE_SERVICE)"
fi
notify=()
[ -z "${DEPLOY_NOTIFY:-}" ] || notify=(--notify "$DEPLOY_NOTIFY")

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
if [ -n "${DEPLOY_LOCK_WAIT:-}" ]; then
	case "$DEPLOY_LOCK_WAIT" in
	*[0-9]m) secs=$((${DEPLOY_LOCK_WAIT%m} * 60)) ;;
	*[0-9]s) secs=${DEPLOY_LOCK_WAIT%s} ;;
	*[0-9]) secs=$DEPLOY_LOCK_WAIT ;;
	*) die 64 "DEPLOY_LOCK_WAIT=$DEPLOY_LOCK_WAIT: use seconds or e.g. 90s, 5m" ;;
	esac
	wait_flag=(-w "$secs")
fi
if ! flock "${wait_flag[@]}" 9; then
	holder=$(tr -d '\n' <"$lock" 2>/dev/null)
	die 75 "another deploy holds the lock $lock${holder:+: $holder}"
fi
printf '{"pid":%d,"program":"deploy.sh","deploy_id":"%s","since":"%s"}' \
	$$ "$tag" "$(date -u +%Y-%m-%dT%H:%M:%S.000Z)" >"$lock.tmp" 2>/dev/null && cat "$lock.tmp" >"$lock" && rm -f "$lock.tmp"
export BERTH_LOCK_HELD=$lock
# The kernel drops the lock when this script ends; clear the holder record too, so that
# nobody reads it later as a lock left behind by a killed deploy.
trap ': >"$lock"' EXIT

# The stages, in order; each reads the document on stdin and writes it on stdout.
stages=(preflight pull)
[ "${DEPLOY_BACKUP:-pg}" = none ] || stages+=(backup)
[ "${DEPLOY_MAINTENANCE:-0}" != 1 ] || stages+=(maintenance_on)
[ ${#migrate_cmd[@]} -eq 0 ] || stages+=(migrate)
stages+=(swap)
[ "${DEPLOY_MAINTENANCE:-0}" != 1 ] || stages+=(maintenance_off)
[ -z "${DEPLOY_SMOKE_URL:-}" ] || stages+=(smoke)
stages+=(rollback report)

stage() {
	case "$1" in
	preflight)
		if [ -n "${DEPLOY_TEST_CMD:-}" ]; then
			berth swap preflight "${dry_run[@]}" "${services[@]}" -- sh -c "$DEPLOY_TEST_CMD"
		else
			berth swap preflight "${dry_run[@]}" "${services[@]}"
		fi
		;;
	pull) berth swap pull "${dry_run[@]}" "${services[@]}" ;;
	backup) berth backup pg "${dry_run[@]}" --service "$db_service" --verify "${DEPLOY_BACKUP_VERIFY:-read}" ;;
	maintenance_on) berth swap maintenance on "${dry_run[@]}" ;;
	migrate)
		local svc=${DEPLOY_MIGRATE_SERVICE:-${services[0]:-}}
		[ -n "$svc" ] || { echo "deploy: error: set DEPLOY_MIGRATE_SERVICE" >&2; return 64; }
		berth migrate "${dry_run[@]}" "$svc" -- "${migrate_cmd[@]}"
		;;
	swap) berth swap "${dry_run[@]}" "${worker_flags[@]}" "${services[@]}" ;;
	maintenance_off) berth swap maintenance off "${dry_run[@]}" ;;
	smoke)
		berth healthwait --url "$DEPLOY_SMOKE_URL" --stage smoke \
			--timeout "${DEPLOY_SMOKE_TIMEOUT:-60s}" --successes "${DEPLOY_SMOKE_SUCCESSES:-3}"
		;;
	rollback) berth rollback "${dry_run[@]}" "${worker_flags[@]}" ;;
	report) berth report "${notify[@]}" ${dry_run[@]:+--no-ledger} ;;
	esac
}

# Stage by stage, the document kept in a file between stages (the same as piping them:
# each reads its predecessor's document). A failure passes through to rollback and
# report, so the report's exit code is the deploy's outcome. A stage that could not
# write a document at all (a crash, a usage error) stops the deploy with its own code.
doc=$state_dir/deploys/$(date -u +%Y%m%dT%H%M%SZ)-$tag.json
(umask 077 && : >"$doc") || die 1 "cannot create $doc"
say "deploying $tag to $(basename "$project_dir") (${services[*]:-services using the tag variable}): ${stages[*]}"
code=0
for s in "${stages[@]}"; do
	(umask 077 && : >"$doc.next") || die 1 "cannot create $doc.next"
	stage "$s" <"$doc" >"$doc.next"
	code=$?
	if [ ! -s "$doc.next" ]; then
		rm -f "$doc.next"
		say "error: stage $s wrote no deploy document (exit $code); stopping here"
		[ "$code" -ne 0 ] || code=1
		exit "$code"
	fi
	mv -f "$doc.next" "$doc"
done
say "finished with exit code $code; the deploy document: $doc"
exit "$code"
