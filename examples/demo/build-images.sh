#!/usr/bin/env bash
# Builds the demo app's images from one static binary:
#   berth-demo/app:v1          schema 1
#   berth-demo/app:v2          schema 2
#   berth-demo/app:broken      v2, exits 1 at start
#   berth-demo/app:unready     v2, /readyz never 200
#   berth-demo/app:sick        v2, ready but /smoke answers 500
#   berth-demo/app:badmigrate  v2 (schema 2), `migrate` fails and rolls back
# Idempotent: an image whose labels already match the binary and Dockerfile is kept.
# Prints one line per image. Needs cargo and a Docker daemon (legacy builder is enough).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target=x86_64-unknown-linux-gnu
repo=berth-demo/app

# Static, so that it runs in a FROM scratch image.
(cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --quiet --release -p berth-demo-app --target "$target")
target_dir="$(cd "$root" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="${target_dir:-$root/target}/$target/release/berth-demo-app"
[[ -x "$bin" ]] || { echo "build-images.sh: error: no binary at $bin" >&2; exit 1; }

bin_sha="$(sha256sum "$bin" | cut -d' ' -f1)"
dockerfile_sha="$(sha256sum "$here/app/Dockerfile" | cut -d' ' -f1)"

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/berth-demo-app"
cp "$here/app/Dockerfile" "$ctx/Dockerfile"

# tag version schema variant
images=(
    "v1 v1 1 ok"
    "v2 v2 2 ok"
    "broken v2 2 broken"
    "unready v2 2 unready"
    "sick v2 2 sick"
    "badmigrate v2 2 badmigrate"
)

for spec in "${images[@]}"; do
    read -r tag version schema variant <<<"$spec"
    image="$repo:$tag"
    want="$bin_sha $dockerfile_sha $version $schema $variant"
    have="$(docker image inspect --format \
        '{{index .Config.Labels "berth.demo.binary-sha256"}} {{index .Config.Labels "berth.demo.dockerfile-sha256"}} {{index .Config.Labels "berth.demo.version"}} {{index .Config.Labels "berth.demo.schema"}} {{index .Config.Labels "berth.demo.variant"}}' \
        "$image" 2>/dev/null || true)"
    if [[ "$have" == "$want" ]]; then
        echo "kept  $image (version $version, schema $schema, variant $variant, binary ${bin_sha:0:12})"
        continue
    fi
    if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet \
        --build-arg "DEMO_VERSION=$version" \
        --build-arg "DEMO_SCHEMA=$schema" \
        --build-arg "DEMO_VARIANT=$variant" \
        --build-arg "BINARY_SHA256=$bin_sha" \
        --build-arg "DOCKERFILE_SHA256=$dockerfile_sha" \
        --tag "$image" "$ctx" 2>&1)"; then
        echo "$out" >&2
        echo "build-images.sh: error: docker build of $image failed" >&2
        exit 1
    fi
    echo "built $image (version $version, schema $schema, variant $variant, binary ${bin_sha:0:12})"
done
