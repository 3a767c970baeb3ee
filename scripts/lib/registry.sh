#!/usr/bin/env bash
# scripts/lib/registry.sh -- a private Docker registry (Distribution 2.8, Debian package
# docker-registry, installed by scripts/setup.sh) on a loopback port, for pull-by-tag tests.
#
#   registry.sh start DIR [PORT] [HTPASSWD]
#                                  start in the background; print its pid on stdout.
#                                  PORT omitted or 0: the kernel picks a free port.
#                                  HTPASSWD: a file of bcrypt entries (`htpasswd -B`,
#                                  apache2-utils) turns on basic auth, as on a real
#                                  private registry (`docker login` first).
#                                  Returns once GET /v2/ answers (at most 10 s).
#   registry.sh port DIR           print the port it listens on
#   registry.sh stop DIR           stop it (SIGTERM, then SIGKILL after 5 s); no-op if not running
#
# DIR holds everything: config.yml, data/ (the blobs), registry.pid, registry.port,
# registry.log. Remove DIR after stop to drop the pushed images.
#
# Docker treats 127.0.0.0/8 registries as insecure (plain HTTP) by default, so after
#   port=$(scripts/lib/registry.sh start "$dir" >/dev/null; scripts/lib/registry.sh port "$dir")
#   docker tag IMG 127.0.0.1:$port/app:TAG && docker push 127.0.0.1:$port/app:TAG
#   docker rmi 127.0.0.1:$port/app:TAG          # drop the local tag
#   docker pull 127.0.0.1:$port/app:TAG         # a real pull
# work with no daemon configuration. The daemon (not the container) connects, so the
# loopback address is the host's.
set -euo pipefail

REGISTRY_BIN=${BERTH_REGISTRY_BIN:-/usr/bin/docker-registry}

die() {
	printf 'registry.sh: %s\n' "$*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# pid_alive DIR: the pid in DIR/registry.pid is a running docker-registry serving DIR.
pid_alive() {
	local dir=$1 pid
	[ -s "$dir/registry.pid" ] || return 1
	pid=$(cat "$dir/registry.pid")
	[ -r "/proc/$pid/cmdline" ] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "serve $dir/config.yml"
}

cmd_start() {
	[ "$#" -ge 1 ] || usage
	[ -x "$REGISTRY_BIN" ] || die "$REGISTRY_BIN missing (run scripts/setup.sh --only packages)"
	mkdir -p "$1"
	local dir port=${2:-0} htpasswd=${3:-} auth=""
	dir=$(cd "$1" && pwd)
	[[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
	if [ -n "$htpasswd" ]; then
		[ -s "$htpasswd" ] || die "no htpasswd file at $htpasswd"
		htpasswd=$(cd "$(dirname "$htpasswd")" && pwd)/$(basename "$htpasswd")
		auth=$(printf 'auth:\n  htpasswd:\n    realm: berth-test\n    path: %s\n' "$htpasswd")
	fi
	if pid_alive "$dir"; then
		die "already running in $dir (pid $(cat "$dir/registry.pid"), port $(cat "$dir/registry.port" 2>/dev/null))"
	fi
	mkdir -p "$dir/data"
	rm -f "$dir/registry.port"
	cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: berth-test-registry
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
$auth
EOF
	# setsid: its own session, so the caller's terminal signals do not reach it.
	# Without job control a background job is no process-group leader, so setsid
	# execs in place and $! is the registry's pid.
	setsid "$REGISTRY_BIN" serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
	local pid=$!
	echo "$pid" >"$dir/registry.pid"

	local deadline=$(($(date +%s) + 10)) addr=""
	while :; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$dir/registry.log" >&2
			die "docker-registry exited (log: $dir/registry.log)"
		fi
		if [ -z "$addr" ]; then
			addr=$(grep -o 'msg="listening on [^"]*"' "$dir/registry.log" | head -n 1 |
				sed 's/msg="listening on \(.*\)"/\1/') || true
		fi
		# 200, or 401 with auth on: it answers.
		if [ -n "$addr" ] && curl -sS -o /dev/null --max-time 1 -w '%{http_code}' "http://$addr/v2/" 2>/dev/null | grep -qE '^(200|401)$'; then
			break
		fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			kill "$pid" 2>/dev/null || true
			die "docker-registry did not answer on ${addr:-127.0.0.1:$port}/v2/ within 10 s (log: $dir/registry.log)"
		fi
		sleep 0.05
	done
	echo "${addr##*:}" >"$dir/registry.port"
	echo "$pid"
}

cmd_port() {
	[ "$#" -eq 1 ] || usage
	[ -s "$1/registry.port" ] || die "no registry.port in $1 (not started?)"
	cat "$1/registry.port"
}

cmd_stop() {
	[ "$#" -eq 1 ] || usage
	[ -d "$1" ] || return 0
	local dir pid
	dir=$(cd "$1" && pwd)
	if pid_alive "$dir"; then
		pid=$(cat "$dir/registry.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			pid_alive "$dir" || break
			sleep 0.1
		done
		if pid_alive "$dir"; then
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.1
		fi
	fi
	rm -f "$dir/registry.pid" "$dir/registry.port"
}

case "${1:-}" in
start | stop | port)
	cmd=$1
	shift
	"cmd_$cmd" "$@"
	;;
-h | --help | help) usage ;;
*) usage ;;
esac
