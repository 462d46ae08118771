#!/usr/bin/env bash
# Start or stop a private Docker engine for the docker test tier (CI runs as root on Debian 12).
#
#   deploy/ci/dockerd.sh start   # installs docker.io if missing, starts dockerd, prints DOCKER_HOST
#   deploy/ci/dockerd.sh stop    # stops it and removes what the tier left (containers, networks)
#   deploy/ci/dockerd.sh env     # prints DOCKER_HOST=... for a running engine
#
# It never touches a system Docker: its own socket, data root and pid file live under
# $HYPERFLEET_CI_STATE (default /var/tmp/hyperfleet-ci). Storage: overlay2, else vfs (works
# anywhere, but copies the whole filesystem per layer: a build takes ~10x longer). No iptables and
# no default bridge: the tests create their own networks.
# Images stay in the data root between runs, so the test image is built once.
# On failure the last line on stderr says why; the tests print it as their skip reason.
set -euo pipefail

STATE=${HYPERFLEET_CI_STATE:-/var/tmp/hyperfleet-ci}
DIR=$STATE/docker
SOCK=$DIR/docker.sock
PIDFILE=$DIR/dockerd.pid
LOG=$DIR/dockerd.log
HOST=unix://$SOCK

die() { echo "dockerd.sh: $*" >&2; exit 1; }

ping_engine() { DOCKER_HOST=$HOST docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install() {
    command -v dockerd >/dev/null && command -v docker >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "dockerd is not installed and we are not root: apt-get install docker.io"
    command -v apt-get >/dev/null || die "dockerd is not installed and there is no apt-get"
    echo "installing docker.io ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io \
        >"$STATE/apt-docker.log" 2>&1 || die "apt-get install docker.io failed; see $STATE/apt-docker.log"
}

start() {
    mkdir -p "$DIR"
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && ping_engine; then
        echo "DOCKER_HOST=$HOST"; return 0
    fi
    [ "$(id -u)" = 0 ] || die "starting dockerd needs root (this is $(id -un))"
    install
    local driver
    for driver in ${HYPERFLEET_DOCKER_STORAGE:-overlay2 vfs}; do
        if launch "$driver"; then echo "DOCKER_HOST=$HOST"; return 0; fi
        echo "dockerd.sh: dockerd with $driver storage failed: $REASON" >&2
    done
    die "$REASON"
}

REASON=""
launch() {
    local driver=$1 pid
    rm -f "$SOCK" "$PIDFILE"
    # setsid: the engine must not die with the shell (or pytest) that started it
    setsid dockerd \
        --host "$HOST" \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$PIDFILE" \
        --storage-driver "$driver" \
        --iptables=false --ip-masq=false --bridge=none \
        --containerd-namespace hyperfleet-ci --containerd-plugins-namespace hyperfleet-ci-plugins \
        >"$LOG" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 1 120); do
        if ping_engine; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            REASON="dockerd exited at start: $(grep -iE 'level=(error|fatal)|failed' "$LOG" | tail -n1 | cut -c1-300)"
            return 1
        fi
        sleep 0.5
    done
    kill "$pid" 2>/dev/null || true
    REASON="dockerd did not answer within 60 s; see $LOG"
    return 1
}

stop() {
    [ -f "$PIDFILE" ] || return 0
    local pid; pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        # whatever the tier left behind (this engine is ours alone): containers, then networks
        local ids
        ids=$(DOCKER_HOST=$HOST docker ps -aq 2>/dev/null || true)
        [ -z "$ids" ] || DOCKER_HOST=$HOST docker rm -f $ids >/dev/null 2>&1 || true
        DOCKER_HOST=$HOST docker network prune -f >/dev/null 2>&1 || true
        kill "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$PIDFILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) ping_engine || die "no engine answers on $HOST"; echo "DOCKER_HOST=$HOST" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
