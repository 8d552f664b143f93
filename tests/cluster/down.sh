#!/usr/bin/env bash
# down.sh - stop the SLURM test cluster started by up.sh (every node's slurmd).
#
# Why: tests and developers need a clean way to stop every daemon up.sh
# started (slurmd, slurmctld, slurmdbd, MariaDB, munged), in reverse order,
# without systemd. Idempotent: stopping a cluster that is not running is a
# no-op. State, logs and the accounting database under HPCSTAGE_CLUSTER_DIR
# are kept; pass --purge to delete that folder too (a full reset).
#
# Usage (as root): tests/cluster/down.sh [--purge]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
. "$HERE/lib.sh"

PURGE=0
case "${1:-}" in
  "") ;;
  --purge) PURGE=1 ;;
  *)
    echo "usage: $0 [--purge]" >&2
    exit 2
    ;;
esac

if [[ $(id -u) -ne 0 ]]; then
  echo "down.sh: must run as root" >&2
  exit 1
fi

for node in $HPCSTAGE_CLUSTER_NODES; do
  stop_slurmd "$node"
done
# Any other slurmd (one of an older layout, with pid file slurmd.pid).
stop_daemon slurmd "$RUN_DIR/slurmd.pid" 30
stop_daemon slurmctld "$SLURMCTLD_PID" 30
stop_daemon slurmdbd "$SLURMDBD_PID" 30

# MariaDB: a clean shutdown of the server makes its mysqld_safe supervisor exit
# too (mysqld_safe ignores SIGTERM; it only restarts a server that crashed).
if pid_of mariadbd "$DB_PID" >/dev/null && [[ -S $DB_SOCKET ]]; then
  say "shutting down mariadb"
  timeout 60 mariadb-admin --defaults-file="$DB_CNF" -uroot shutdown || true
fi
stop_daemon mariadbd "$DB_PID" 60
stop_daemon mysqld_safe /nonexistent 5

stop_daemon munged "$MUNGE_PID" 10

if ((PURGE)); then
  say "removing $CLUSTER_DIR"
  rm -rf -- "$CLUSTER_DIR"
fi
say "cluster stopped"
