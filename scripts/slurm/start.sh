#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian 12, as root), for the
# integration test of workflow/profiles/slurm (tests/test_slurm.py) and for trying the profile:
#
#   bash scripts/slurm/start.sh            # install (apt) if needed, configure, start; idempotent
#   bash scripts/slurm/start.sh --gpus 4   # four fake GPUs instead of two
#   bash scripts/slurm/stop.sh             # cancel jobs, stop every daemon started here
#
# What runs: munged, MariaDB (Debian's mariadb-server) + slurmdbd (accounting: sacct, sacctmgr),
# slurmctld and slurmd, one node "localhost" in partitions "cpu" (default) and "gpu" with all
# CPUs, the memory less 1 GiB, and N fake GPUs: character devices /dev/fakegpuN (mknod c 1 3, i.e. /dev/null) listed
# in gres.conf, so `sbatch --gpus=1` is scheduled, counted and gets CUDA_VISIBLE_DEVICES as on a
# GPU node (nothing can compute on them). Account "rethinking" holds user root.
#
# Configs go to /etc/slurm (slurm.conf, gres.conf, slurmdbd.conf) from the templates beside this
# script; a file there that this script did not write is never overwritten (the script stops).
# Daemons are started directly (no systemd). Logs: /var/log/slurm/.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
MARKER="written by rethinking scripts/slurm/start.sh"
CONF_DIR=/etc/slurm
STATE=/run/rethinking-slurm          # what this script started (stop.sh reads it)
GPUS=2
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

die() { echo "start.sh: error: $*" >&2; exit 1; }
say() { echo "start.sh: $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpus) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]?$ ]] || die "--gpus takes a count from 1 to 99, got '${2:-}'"
                GPUS="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $(id -u) -eq 0 ]] || die "needs root (it installs packages, writes /etc/slurm and starts daemons)"
if [[ -n "${SLURM_JOB_ID:-}" ]]; then die "running inside SLURM job $SLURM_JOB_ID: start the cluster from outside"; fi

# --- 1. packages -------------------------------------------------------------------------------
missing=()
for cmd in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if (( ${#missing[@]} )); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install ${PACKAGES[*]} (Debian names)"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${PACKAGES[@]}" >/tmp/rethinking-slurm-apt.log 2>&1; then
        apt-get update -q >>/tmp/rethinking-slurm-apt.log 2>&1 || true
        apt-get install -y -q "${PACKAGES[@]}" >>/tmp/rethinking-slurm-apt.log 2>&1 \
            || { tail -20 /tmp/rethinking-slurm-apt.log >&2; die "apt-get install ${PACKAGES[*]} failed (log: /tmp/rethinking-slurm-apt.log)"; }
    fi
    # Debian's postinst may have started daemons with its own (missing) config: ours start below
fi
id slurm >/dev/null 2>&1 || die "no user 'slurm' (Debian's slurm packages create it)"
id munge >/dev/null 2>&1 || die "no user 'munge' (Debian's munge package creates it)"

# --- 2. configuration ------------------------------------------------------------------------
mkdir -p "$CONF_DIR" "$STATE" /run/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
chown slurm:slurm /run/slurm /var/log/slurm /var/lib/slurm /var/lib/slurm/slurmctld
for f in slurm.conf gres.conf slurmdbd.conf; do
    if [[ -e "$CONF_DIR/$f" ]] && ! grep -qF "$MARKER" "$CONF_DIR/$f"; then
        die "$CONF_DIR/$f exists and was not written by this script: this machine has its own SLURM; not touching it"
    fi
done

read -r CPUS BOARDS SOCKETS CORES THREADS MEMORY < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\) Boards=\([0-9]*\) SocketsPerBoard=\([0-9]*\) CoresPerSocket=\([0-9]*\) ThreadsPerCore=\([0-9]*\) RealMemory=\([0-9]*\).*/\1 \2 \3 \4 \5 \6/p')
[[ -n "${MEMORY:-}" ]] || die "could not read this machine's CPUs and memory from 'slurmd -C': $(slurmd -C 2>&1 | head -2)"
MEMORY=$(( MEMORY > 2048 ? MEMORY - 1024 : MEMORY ))   # leave the OS some room

for ((i = 0; i < GPUS; i++)); do
    dev=/dev/fakegpu$i
    if [[ ! -e $dev ]]; then
        mknod "$dev" c 1 3 || die "mknod $dev c 1 3 failed (needs a machine or container that allows mknod)"
        chmod 666 "$dev"
    elif [[ "$(stat -c '%F %t:%T' "$dev")" != "character special file 1:3" ]]; then
        die "$dev exists and is not the fake GPU this script makes (a character device 1,3)"
    fi
done
FILES=/dev/fakegpu0; (( GPUS > 1 )) && FILES="/dev/fakegpu[0-$((GPUS - 1))]"

DBPASS=""
[[ -f $CONF_DIR/slurmdbd.conf ]] && DBPASS=$(sed -n 's/^StoragePass=//p' "$CONF_DIR/slurmdbd.conf")
[[ -n "$DBPASS" ]] || DBPASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

render() {  # template -> stdout
    sed -e "s|@MARKER@|$MARKER|" -e "s|@CPUS@|$CPUS|" -e "s|@BOARDS@|$BOARDS|" -e "s|@SOCKETS@|$SOCKETS|" \
        -e "s|@CORES@|$CORES|" -e "s|@THREADS@|$THREADS|" -e "s|@MEMORY@|$MEMORY|" -e "s|@GPUS@|$GPUS|" \
        -e "s|@FILES@|$FILES|" -e "s|@DBPASS@|$DBPASS|" "$HERE/$1.in"
}
changed=0
for f in slurm.conf gres.conf slurmdbd.conf; do
    new=$(render "$f")
    if [[ ! -f $CONF_DIR/$f ]] || [[ "$new" != "$(cat "$CONF_DIR/$f")" ]]; then
        printf '%s\n' "$new" >"$CONF_DIR/$f"
        changed=1
        say "wrote $CONF_DIR/$f"
    fi
done
chown slurm:slurm "$CONF_DIR/slurmdbd.conf"; chmod 600 "$CONF_DIR/slurmdbd.conf"   # slurmdbd insists

# --- 3. daemons ------------------------------------------------------------------------------
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }     # pidfile -> running?
wait_for() {  # seconds, description, command...
    local t=$1 what=$2; shift 2
    for ((s = 0; s < t * 2; s++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    return 1
}
stop_pid() {  # pidfile
    if alive "$1"; then
        local pid; pid=$(cat "$1"); kill "$pid"
        for ((s = 0; s < 60; s++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
    fi
}

if (( changed )); then   # new node or GRES definitions need a restart of both daemons
    stop_pid /run/slurm/slurmd.pid
    stop_pid /run/slurm/slurmctld.pid
fi

# munge
mkdir -p /run/munge && chown munge:munge /run/munge
[[ -s /etc/munge/munge.key ]] || { runuser -u munge -- mungekey --create >/dev/null; say "made /etc/munge/munge.key"; }
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged || die "munged did not start"
    echo munge >>"$STATE/started"
    wait_for 10 munge sh -c 'munge -n </dev/null | unmunge' || die "munge does not answer"
    say "munged started"
fi

# MariaDB + the accounting database
if ! mysqladmin ping >/dev/null 2>&1; then
    /etc/init.d/mariadb start >/tmp/rethinking-slurm-mariadb.log 2>&1 \
        || { cat /tmp/rethinking-slurm-mariadb.log >&2; die "MariaDB did not start"; }
    echo mariadb >>"$STATE/started"
    wait_for 30 mariadb mysqladmin ping || die "MariaDB does not answer"
    say "MariaDB started"
fi
mariadb -u root <<SQL || die "could not create the accounting database in MariaDB"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# slurmdbd
if (( changed )); then stop_pid /run/slurm/slurmdbd.pid; fi
if ! alive /run/slurm/slurmdbd.pid; then
    slurmdbd || die "slurmdbd did not start (log: /var/log/slurm/slurmdbd.log)"
    echo slurmdbd >>"$STATE/started"
    wait_for 60 slurmdbd sacctmgr -n list cluster || { tail -20 /var/log/slurm/slurmdbd.log >&2; die "slurmdbd does not answer"; }
    say "slurmdbd started"
fi
if [[ -z "$(sacctmgr -n -P list cluster where name=rethinking format=cluster)" ]]; then
    sacctmgr -i add cluster rethinking >/dev/null
fi
if [[ -z "$(sacctmgr -n -P list account where name=rethinking format=account)" ]]; then
    sacctmgr -i add account rethinking description="rethinking tests" organization=rethinking >/dev/null
fi
if [[ -z "$(sacctmgr -n -P show assoc where cluster=rethinking account=rethinking user=root format=user)" ]]; then
    sacctmgr -i add user root account=rethinking >/dev/null
fi

# slurmctld + slurmd
if ! alive /run/slurm/slurmctld.pid; then
    slurmctld || die "slurmctld did not start (log: /var/log/slurm/slurmctld.log)"
    echo slurmctld >>"$STATE/started"
    wait_for 60 slurmctld scontrol ping || { tail -20 /var/log/slurm/slurmctld.log >&2; die "slurmctld does not answer"; }
    say "slurmctld started"
fi
if ! alive /run/slurm/slurmd.pid; then
    slurmd -N localhost || die "slurmd did not start (log: /var/log/slurm/slurmd.log)"
    echo slurmd >>"$STATE/started"
    say "slurmd started"
fi

node_state() { sinfo -h -n localhost -o %T 2>/dev/null | head -1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }
if ! wait_for 60 node node_ready; then
    # a node drained by an earlier run (e.g. a stop with jobs on it) comes back with resume
    scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    if ! wait_for 30 node node_ready; then
        scontrol show node localhost >&2 || true
        tail -20 /var/log/slurm/slurmd.log >&2 || true
        die "node localhost is '$(node_state)', not idle (see above)"
    fi
fi
say "SLURM is up: partitions cpu and gpu, node localhost, $CPUS CPUs, ${MEMORY} MB, $GPUS GPUs ($FILES), account rethinking"
sinfo -o '%P %D %T %C %G'
