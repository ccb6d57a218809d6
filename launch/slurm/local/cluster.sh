#!/usr/bin/env bash
# A SLURM cluster of NODES nodes on this machine (Debian's slurm-wlm with munge), to try
# launch/slurm/pretrain.sbatch, multi-node included, before booking a real one; the project's
# real-scheduler tests (tests/test_slurm_real.py) run on it. Node i is named megadyt-i, has the
# loopback address 127.0.0.(i+1) and its own slurmd (`slurmd -N megadyt-i`) on port
# SLURMD_PORT+i-1; all of them run on this machine.
#   launch/slurm/local/cluster.sh install   # root: apt-get install slurm-wlm munge
#   launch/slurm/local/cluster.sh start     # munged + slurmctld + a slurmd per node;
#                                           # prints SLURM_CONF=...
#   launch/slurm/local/cluster.sh stop      # stops the daemons by the PIDs they wrote
# Then: export SLURM_CONF=$STATE/slurm.conf; sbatch ...; squeue; scancel ...
# Environment: STATE (default /tmp/megadyt-slurm; config, spool, logs, PIDs), NODES (2),
# SLURMCTLD_PORT / SLURMD_PORT (6817 / 6818).
set -euo pipefail

state="${STATE:-/tmp/megadyt-slurm}"
nodes="${NODES:-2}"
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
    mkdir -p "$state/ctld" "$state/munge"
    local host cpus memory_mb slurmd_port i lines="" names=""
    host="$(hostname -s)"
    cpus="$(nproc)"
    memory_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    slurmd_port="${SLURMD_PORT:-6818}"
    for ((i = 1; i <= nodes; i++)); do
        lines+="NodeName=megadyt-$i NodeAddr=127.0.0.$((i + 1)) NodeHostname=$host"
        lines+=" Port=$((slurmd_port + i - 1)) CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN\n"
        names+="${names:+,}megadyt-$i"
    done
    sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" -e "s|@NODE_LINES@|${lines%\\n}|" \
        -e "s|@NODE_LIST@|$names|g" -e "s|@CTLD_PORT@|${SLURMCTLD_PORT:-6817}|g" \
        -e "s|@SLURMD_PORT@|$slurmd_port|g" "$here/slurm.conf.in" >"$conf"
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
    for ((i = 1; i <= nodes; i++)); do
        mkdir -p "$state/slurmd-megadyt-$i"
        slurmd -f "$conf" -N "megadyt-$i"
    done
    export SLURM_CONF="$conf"
    local waited=0
    until [[ "$(sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" == "$nodes" ]]; do
        ((waited++ < 60)) || die "the nodes did not come up in 60 s; see $state/*.log"
        sleep 1
    done
    echo "SLURM_CONF=$conf"
}

stop() {
    local file pid
    for file in "$state"/slurmd-*.pid "$state/slurmctld.pid" "$state/munged.pid"; do
        if alive "$file"; then
            pid="$(cat "$file")"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$file"
    done
}

case "${1:-}" in
    install) mkdir -p "$(dirname "$state")"; install ;;
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
