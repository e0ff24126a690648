#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm executor's tests and for trying
# `vlmix study --executor slurm` without a cluster:
#
#   scripts/slurm-local.sh start    # install slurm-wlm + munge if missing, configure, start, wait idle
#   scripts/slurm-local.sh stop     # stop the daemons this script started
#   scripts/slurm-local.sh status
#
# Debian's slurm-wlm (22.05 on bookworm) runs as root without systemd or cgroups: process tracking by
# /proc (proctrack/linuxproc), no task plugin, no accounting. The node is this host with all its CPUs
# and most of its memory. /etc/slurm/slurm.conf is written only when absent or written by this
# script, so a real cluster's config is never touched. Daemon state and logs: $VLMIX_SLURM_STATE
# (default /var/tmp/vlmix-slurm). Exits non-zero when the cluster cannot be brought up.
set -euo pipefail
STATE="${VLMIX_SLURM_STATE:-/var/tmp/vlmix-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by vlmix scripts/slurm-local.sh"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install() {
    local need=()
    for pkg in slurm-wlm munge; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if ((${#need[@]})); then
        echo "slurm-local: installing ${need[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

node_idle() {
    sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle\|mixed\|allocated'
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm-local: $CONF exists and was not written by this script; refusing to replace it" >&2
        exit 1
    fi
    local host cpus mem_mb
    host="$(hostname -s)"
    cpus="$(nproc)"
    # Most of the memory, leaving room for the daemons and the system.
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    as_root mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    as_root tee "$CONF" >/dev/null <<EOF
$MARK
ClusterName=vlmix-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    install
    if node_idle; then
        echo "slurm-local: already running"
        return 0
    fi
    write_conf
    # munged: a key (the package creates one) and its run directory.
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        as_root mkdir -p /run/munge
        as_root chown munge:munge /run/munge
        [ -f /etc/munge/munge.key ] || as_root mungekey --create
        if [ "$(id -u)" -eq 0 ]; then
            runuser -u munge -- /usr/sbin/munged
        else
            sudo -u munge /usr/sbin/munged
        fi
        touch "$STATE/started-munged"
    fi
    # A fresh controller state: jobs of an earlier cluster must not come back.
    as_root rm -rf "$STATE/ctld" "$STATE/d"
    as_root mkdir -p "$STATE/ctld" "$STATE/d"
    as_root slurmctld -i
    as_root slurmd
    for _ in $(seq 1 120); do
        if node_idle; then
            echo "slurm-local: node $(hostname -s) up ($(nproc) CPUs)"
            return 0
        fi
        # An unresponsive or down node after a restart: tell the controller it may take jobs.
        as_root scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    echo "slurm-local: the node did not come up; logs in $STATE" >&2
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    exit 1
}

stop_pid() {
    local file="$1"
    [ -f "$file" ] || return 0
    local pid
    pid="$(cat "$file")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

stop() {
    stop_pid "$STATE/slurmd.pid"
    stop_pid "$STATE/slurmctld.pid"
    if [ -f "$STATE/started-munged" ]; then
        stop_pid /run/munge/munged.pid
        rm -f "$STATE/started-munged"
    fi
    echo "slurm-local: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
