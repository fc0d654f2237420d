#!/usr/bin/env bash
# Stop the single-node SLURM cluster of scripts/slurm/start.sh: cancel every job, stop slurmd,
# slurmctld, slurmdbd, and the MariaDB server and munged if start.sh started them (not when they
# were running before). Idempotent: with nothing running it does nothing and exits 0.
#
#   bash scripts/slurm/stop.sh
#
# Configs (/etc/slurm), the accounting database and the fake GPU devices stay, so the next
# start.sh is quick; `bash scripts/slurm/stop.sh --purge` also removes those.
set -euo pipefail

MARKER="written by rethinking scripts/slurm/start.sh"
STATE=/run/rethinking-slurm
PURGE=0
die() { echo "stop.sh: error: $*" >&2; exit 1; }
say() { echo "stop.sh: $*"; }
case "${1:-}" in
    "") ;;
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
esac
[[ $(id -u) -eq 0 ]] || die "needs root"
if [[ -f /etc/slurm/slurm.conf ]] && ! grep -qF "$MARKER" /etc/slurm/slurm.conf; then
    die "/etc/slurm/slurm.conf was not written by start.sh: this machine's own SLURM is not stopped by this script"
fi

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pid() {  # name pidfile: TERM, wait up to 30 s, then KILL
    alive "$2" || return 0
    local pid; pid=$(cat "$2"); kill "$pid" 2>/dev/null || true
    for ((s = 0; s < 60; s++)); do kill -0 "$pid" 2>/dev/null || { say "$1 stopped"; return 0; }; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    say "$1 killed (did not stop in 30 s)"
}
started() { [[ -f $STATE/started ]] && grep -qx "$1" "$STATE/started"; }

# jobs first, while slurmctld and slurmd can still end them (and their job steps) cleanly
if alive /run/slurm/slurmctld.pid && command -v scancel >/dev/null; then
    if [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
        scancel --full "$(squeue -h -o %i | tr '\n' ',' | sed 's/,$//')" 2>/dev/null || true
        for ((s = 0; s < 60; s++)); do [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break; sleep 0.5; done
        say "jobs cancelled"
    fi
fi
stop_pid slurmd /run/slurm/slurmd.pid
# job step daemons of jobs that did not end with the cancel (slurmd gone: nothing else ends them)
for pid in $(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {print $1}'); do kill -9 "$pid" 2>/dev/null || true; done
stop_pid slurmctld /run/slurm/slurmctld.pid
stop_pid slurmdbd /run/slurm/slurmdbd.pid
if (( PURGE )) && command -v mysqladmin >/dev/null && mysqladmin ping >/dev/null 2>&1; then
    mariadb -u root -e "DROP DATABASE IF EXISTS slurm_acct_db; DROP USER IF EXISTS 'slurm'@'localhost';" || true
fi
if started mariadb && mysqladmin ping >/dev/null 2>&1; then
    /etc/init.d/mariadb stop >/dev/null 2>&1 || die "MariaDB did not stop"
    say "MariaDB stopped"
fi
if started munge; then stop_pid munged /run/munge/munged.pid; fi
rm -f "$STATE/started"

if (( PURGE )); then
    for f in slurm.conf gres.conf slurmdbd.conf; do
        if [[ -f /etc/slurm/$f ]] && grep -qF "$MARKER" "/etc/slurm/$f"; then rm -f "/etc/slurm/$f"; fi
    done
    for dev in /dev/fakegpu*; do
        [[ "$(stat -c '%F %t:%T' "$dev" 2>/dev/null)" == "character special file 1:3" ]] && rm -f "$dev"
    done
    rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
    say "purged configs, state, the accounting database and the fake GPUs"
fi
say "SLURM is stopped"
