#!/usr/bin/env bash
# Calling berth's stages one by one from CI over SSH, with the deploy document saved in a
# file between them: each step's exit code is the stage's (see the README's table), and
# the document carries everything the next stage needs. Same result as scripts/deploy.sh.
#
# Usage: examples/ci/stages-over-ssh.sh TAG   (HOST and DIR from the environment)
#
# Every word goes to the server quoted (printf %q): the tag and the settings are data on
# the remote shell too, never code. The tag is checked by berth's own rule first.
set -uo pipefail
tag=${1:?usage: stages-over-ssh.sh TAG}
host=${HOST:-deploy@shop.example.com}
dir=${DIR:-/srv/shop}
doc=$(mktemp)
err=$(mktemp)
trap 'rm -f "$err" "$doc.next"' EXIT
on_server() { ssh "$host" "cd $(printf '%q' "$dir") && $(printf '%q ' "$@")"; }

on_server berth-swap --check-args --tag "$tag" </dev/null || exit 64

stage() {
	# NAME CMD...: stdin the document so far; stdout the document after the stage.
	local name=$1 code
	shift
	on_server "$@" <"$doc" >"$doc.next" 2>"$err"
	code=$?
	cat "$err" >&2
	if [ ! -s "$doc.next" ]; then
		# No document (the stage was killed, SSH dropped): record the failure, so the
		# rollback and the report still see it; if even that fails, fail the run.
		[ "$code" -ne 0 ] || code=1
		on_server berth-report record-failure --stage "$name" --exit "$code" \
			--message="$(grep -v '^[[:space:]]*$' "$err" | tail -n 1)" <"$doc" >"$doc.next"
		[ -s "$doc.next" ] || { echo "stage $name wrote no document (exit $code)" >&2; exit "$code"; }
	fi
	mv "$doc.next" "$doc"
	return "$code"
}

stage preflight berth-swap preflight --tag "$tag" web worker &&
	stage pull berth-swap pull web worker &&
	stage backup berth-backup pg --service db &&
	stage migrate berth-migrate web -- alembic upgrade head &&
	stage swap berth-swap --worker worker web worker &&
	stage smoke berth-healthwait --url https://shop.example.com/readyz --stage smoke --successes 3
# Whatever happened above, roll back if needed and report; the report's code is the outcome.
stage rollback berth-rollback --worker worker
stage report berth-report --notify telegram
code=$?
echo "deploy document: $doc (exit $code)"
exit $code
