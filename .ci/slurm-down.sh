#!/usr/bin/env bash
# slurm-down.sh — stop what slurm-up.sh started (slurmd, slurmctld, slurmdbd, mariadbd, and munged only if it
# started it), by the pids it recorded in $HSFM_SLURM_BASE/run, never by name; queued and running jobs are
# cancelled first. Packages, the munge key and slurm.conf stay (a next slurm-up.sh takes ~2 s).
set -uo pipefail
BASE=${HSFM_SLURM_BASE:-/tmp/hsfm-slurm}
log() { printf '[slurm-down %s] %s\n' "$(date +%T)" "$*" >&2; }
stop() {
    local f="$BASE/run/$1.pid" pid
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $1 (pid $pid)"; kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "$1 still alive: SIGKILL"; kill -9 "$pid"; }
    fi
    rm -f "$f"
}
if [ -s "$BASE/run/slurmctld.pid" ] && kill -0 "$(cat "$BASE/run/slurmctld.pid")" 2>/dev/null; then
    timeout 10 scancel --state=PENDING,RUNNING 2>/dev/null || true
fi
for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop "$daemon"; done
