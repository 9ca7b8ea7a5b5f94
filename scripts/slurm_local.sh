#!/usr/bin/env bash
# A single-node Slurm cluster on this machine: for the Slurm tests, and to try the Slurm launcher.
#
#   scripts/slurm_local.sh up        # installs slurm-wlm and munge if missing (apt, as root), starts the daemons
#   scripts/slurm_local.sh status    # sinfo and squeue
#   scripts/slurm_local.sh down      # stops only the daemons this script started (by pid), and waits for them
#
# Then point the Slurm commands (and submitit) at it:   export SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
#
# The node is this host (NodeName = SlurmctldHost = `hostname`), with SLURM_LOCAL_CPUS CPUs (default 8:
# more than the cores, so that a sweep's short CPU jobs run side by side; SlurmdParameters=config_overrides
# lets slurmd accept it) and one partition. Accounting is off. State, spool, pid and log files live in
# SLURM_LOCAL_DIR (default /tmp/ticketlab-slurm). Needs root (SlurmUser=root) and apt for the install.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/ticketlab-slurm}"
CONF="$DIR/slurm.conf"
CPUS="${SLURM_LOCAL_CPUS:-8}"
HOST="$(hostname)"

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (the local cluster runs slurmctld/slurmd as root)"; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and apt-get is not available"
    echo "installing slurm-wlm and munge (apt-get)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do
        if munge_ok; then
            # its pid, so that `down` stops this munged and no other (munged writes /run/munge/munged.pid)
            if [ -s /run/munge/munged.pid ]; then cp /run/munge/munged.pid "$DIR/munged.pid"
            else pgrep -n -x munged > "$DIR/munged.pid"; fi
            return
        fi
        sleep 0.1
    done
    die "munged did not start"
}

write_conf() {
    local mem
    mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat > "$CONF" <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on $HOST.
ClusterName=ticketlab
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
    need_root
    install
    mkdir -p "$DIR"
    if ! alive "$DIR/slurmctld.pid" && port_busy 6817; then
        die "another slurmctld already listens on port 6817 (a Slurm cluster runs here, not started from $DIR); stop it first"
    fi
    start_munge
    write_conf
    export SLURM_CONF="$CONF"
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 100); do
        if sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
            echo "Slurm is up on $HOST ($CPUS CPUs, partition 'local'). Use it with:"
            echo "  export SLURM_CONF=$CONF"
            return
        fi
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        sleep 0.2
    done
    die "the node did not come up; see $DIR/log/"
}

# Stops the daemon whose pid file is $DIR/$1.pid (if this script started it): SIGTERM, then up to
# 30 s for it to exit. Returns 1, naming it, if it is still running.
stop_daemon() {
    local pidfile="$DIR/$1.pid" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if alive "$pidfile"; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 300); do alive "$pidfile" || break; sleep 0.1; done
        if alive "$pidfile"; then
            echo "slurm_local.sh: $1 (pid $pid) is still running 30 s after SIGTERM; stop it with: kill -9 $pid" >&2
            return 1
        fi
    fi
    rm -f "$pidfile"
}

down() {
    export SLURM_CONF="$CONF"
    local failed=0
    for daemon in slurmd slurmctld munged; do   # munged.pid exists only when this script started munged
        stop_daemon "$daemon" || failed=1
    done
    [ "$failed" = 0 ] || die "Slurm on $HOST is not fully stopped (see above)"
    echo "Slurm on $HOST stopped: slurmd, slurmctld and the munged this script started (state kept in $DIR)."
}

status() {
    export SLURM_CONF="$CONF"
    alive "$DIR/slurmctld.pid" || { echo "not running (no slurmctld from $DIR)"; exit 1; }
    sinfo
    squeue
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
