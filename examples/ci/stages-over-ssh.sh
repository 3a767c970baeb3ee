#!/usr/bin/env bash
# Calling berth's stages one by one from CI over SSH, with the deploy document saved in a
# file between them: each step's exit code is the stage's (see the README's table), and
# the document carries everything the next stage needs. Same result as scripts/deploy.sh.
#
# Usage: examples/ci/stages-over-ssh.sh TAG   (HOST and DIR from the environment)
set -uo pipefail
tag=${1:?usage: stages-over-ssh.sh TAG}
host=${HOST:-deploy@shop.example.com}
dir=${DIR:-/srv/shop}
doc=$(mktemp)
on_server() { ssh "$host" "cd $dir && $*"; }

stage() {
	# stdin: the document so far; stdout: the document after the stage.
	on_server "$@" <"$doc" >"$doc.next"
	local code=$?
	[ -s "$doc.next" ] && mv "$doc.next" "$doc"
	return $code
}

stage berth-swap preflight --tag "$tag" web worker &&
	stage berth-swap pull web worker &&
	stage berth-backup pg --service db &&
	stage berth-migrate web -- alembic upgrade head &&
	stage berth-swap --worker worker web worker &&
	stage berth-healthwait --url https://shop.example.com/readyz --stage smoke --successes 3
# Whatever happened above, roll back if needed and report; the report's code is the outcome.
stage berth-rollback --worker worker
stage berth-report --notify telegram
code=$?
echo "deploy document: $doc (exit $code)"
exit $code
