#!/usr/bin/env bash
# Start or stop a single-node slurm (Debian's slurmctld, slurmd, munge) for the slurm test tier.
#
#   deploy/ci/slurm.sh start    # installs the packages if missing, starts munged, slurmctld, slurmd
#   deploy/ci/slurm.sh stop
#
# Config, state, logs and pid files live under $HYPERFLEET_CI_STATE/slurm (default
# /var/tmp/hyperfleet-ci/slurm); SLURM_CONF points there, so no system slurm is touched. The node
# declares $HYPERFLEET_CI_GPUS (default 2) *fake* GPUs (gres files /dev/null-like ttys): slurm
# allocates and binds them and sets CUDA_VISIBLE_DEVICES like for real GPUs; nothing runs on them.
# On failure the last line on stderr says why; the tests print it as their skip reason.
set -euo pipefail

STATE=${HYPERFLEET_CI_STATE:-/var/tmp/hyperfleet-ci}/slurm
CONF=$STATE/slurm.conf
NGPUS=${HYPERFLEET_CI_GPUS:-2}
NODE=$(hostname -s)
die() { echo "slurm.sh: $*" >&2; exit 1; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "slurm is not installed and we are not root"
    mkdir -p "$STATE"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$STATE/apt.log" 2>&1 \
        || die "apt-get install slurmctld slurmd slurm-client munge failed; see $STATE/apt.log"
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    mkdir -p "$STATE"/{spool,ctld,log,run}
    cat >"$CONF" <<CONF
ClusterName=hyperfleet-ci
SlurmctldHost=$NODE
SlurmctldPort=${HYPERFLEET_CI_SLURMCTLD_PORT:-26817}
SlurmdPort=${HYPERFLEET_CI_SLURMD_PORT:-26818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
KillWait=30
SchedulerType=sched/backfill
NodeName=$NODE CPUs=$cpus RealMemory=$mem Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    # fake GPUs: gres needs one device file per GPU; slurm only records and binds them
    : >"$STATE/gres.conf"
    for i in $(seq 0 $((NGPUS - 1))); do
        echo "NodeName=$NODE Name=gpu File=/dev/tty$((i + 20))" >>"$STATE/gres.conf"
    done
    echo "AutoDetect=off" >>"$STATE/gres.conf"
}

running() { [ -f "$STATE/run/$1.pid" ] && kill -0 "$(cat "$STATE/run/$1.pid")" 2>/dev/null; }

start() {
    [ "$(id -u)" = 0 ] || die "starting slurm needs root (this is $(id -un))"
    install
    write_conf
    export SLURM_CONF=$CONF
    # munge: a key of our own and a daemon of our own socket
    if ! running munged; then
        [ -s "$STATE/munge.key" ] || { dd if=/dev/urandom of="$STATE/munge.key" bs=1024 count=1 status=none; }
        chmod 400 "$STATE/munge.key"
        munged --key-file="$STATE/munge.key" --socket="$STATE/run/munge.socket" \
            --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
            --seed-file="$STATE/run/munge.seed" --force \
            || die "munged did not start; see $STATE/log/munged.log"
    fi
    # slurm finds munge's socket through the auth plugin's option
    grep -q '^AuthInfo=' "$CONF" || echo "AuthInfo=socket=$STATE/run/munge.socket" >>"$CONF"
    running slurmctld || slurmctld -f "$CONF" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
    running slurmd || slurmd -f "$CONF" || die "slurmd did not start; see $STATE/log/slurmd.log"
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "SLURM_CONF=$CONF"; return 0
        fi
        sleep 0.5
    done
    die "the node did not become idle within 30 s: $(sinfo -h -o '%T %E' 2>&1 | head -n1); see $STATE/log"
}

stop() {
    export SLURM_CONF=$CONF
    [ -f "$CONF" ] && scancel --quiet -u root 2>/dev/null || true
    local d
    for d in slurmd slurmctld munged; do
        if running "$d"; then
            local pid; pid=$(cat "$STATE/run/$d.pid")
            kill "$pid"
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
        rm -f "$STATE/run/$d.pid"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
