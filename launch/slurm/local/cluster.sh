#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian's slurm-wlm with munge), to try
# launch/slurm/pretrain.sbatch before booking a real one; the project's real-scheduler test
# (tests/test_slurm_real.py) runs on it.
#   launch/slurm/local/cluster.sh install   # root: apt-get install slurm-wlm munge
#   launch/slurm/local/cluster.sh start     # munged + slurmctld + slurmd; prints SLURM_CONF=...
#   launch/slurm/local/cluster.sh stop      # stops the three daemons by the PIDs start wrote
# Then: export SLURM_CONF=$STATE/slurm.conf; sbatch ...; squeue; scancel ...
# Environment: STATE (default /tmp/megadyt-slurm; config, spool, logs, PIDs),
# SLURMCTLD_PORT / SLURMD_PORT (6817 / 6818).
set -euo pipefail

state="${STATE:-/tmp/megadyt-slurm}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
conf="$state/slurm.conf"

die() { echo "cluster.sh: $*" >&2; exit 2; }

install() {
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "installing slurm-wlm and munge needs root"
    command -v apt-get >/dev/null || die "installing slurm-wlm and munge needs apt-get (Debian/Ubuntu)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >"$state-apt.log" 2>&1 ||
        { apt-get update -q >>"$state-apt.log" 2>&1 &&
          apt-get install -y -q slurm-wlm munge >>"$state-apt.log" 2>&1; } ||
        die "apt-get install slurm-wlm munge failed; see $state-apt.log"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [[ "$(id -u)" == 0 ]] || die "the local cluster runs its daemons as root"
    command -v slurmctld >/dev/null || die "slurm-wlm is not installed: run '$0 install' as root"
    if alive "$state/slurmctld.pid"; then
        echo "SLURM_CONF=$conf"
        return 0
    fi
    mkdir -p "$state/ctld" "$state/slurmd" "$state/munge"
    local host cpus memory_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    memory_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@CPUS@|$cpus|g" \
        -e "s|@MEMORY_MB@|$memory_mb|g" -e "s|@CTLD_PORT@|${SLURMCTLD_PORT:-6817}|g" \
        -e "s|@SLURMD_PORT@|${SLURMD_PORT:-6818}|g" "$here/slurm.conf.in" >"$conf"
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    if ! alive "$state/munged.pid"; then
        munged --force --pid-file="$state/munged.pid" --log-file="$state/munged.log"
    fi
    slurmctld -f "$conf"
    slurmd -f "$conf"
    export SLURM_CONF="$conf"
    local waited=0
    until sinfo -h -o %t 2>/dev/null | grep -qx idle; do
        ((waited++ < 60)) || die "the node did not come up in 60 s; see $state/*.log"
        sleep 1
    done
    echo "SLURM_CONF=$conf"
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        if alive "$state/$name.pid"; then
            pid="$(cat "$state/$name.pid")"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$state/$name.pid"
    done
}

case "${1:-}" in
    install) mkdir -p "$(dirname "$state")"; install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
