# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# lib.sh - paths and helpers shared by up.sh and down.sh (sourced, not run).
#
# Why: both scripts must agree on where pid files and logs live and on how a
# daemon is recognised as running, so that bring-up and tear-down stay
# idempotent.

# shellcheck source=SCRIPTDIR/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

CLUSTER_DIR="$HPCSTAGE_CLUSTER_DIR"
CONF_DIR=/etc/slurm
ETC_DIR="$CLUSTER_DIR/etc"
RUN_DIR="$CLUSTER_DIR/run"
LOG_DIR="$CLUSTER_DIR/log"
STATE_DIR="$CLUSTER_DIR/state"
SPOOL_DIR="$CLUSTER_DIR/spool"
DEV_DIR="$CLUSTER_DIR/dev"
DB_DATA_DIR="$CLUSTER_DIR/mysql"
DB_RUN_DIR="$RUN_DIR/mysqld"
DB_SOCKET="$HPCSTAGE_CLUSTER_DB_SOCKET"
DB_PORT="$HPCSTAGE_CLUSTER_DB_PORT"
DB_CNF="$ETC_DIR/my.cnf"
DB_PID="$DB_RUN_DIR/mysqld.pid"
MUNGE_RUN_DIR=/run/munge
MUNGE_PID="$MUNGE_RUN_DIR/munged.pid"
MUNGE_LOG=/var/log/munge/munged.log
SLURMDBD_PID="$RUN_DIR/slurmdbd.pid"
SLURMCTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"

say() { printf '[cluster] %s\n' "$*"; }

# alive PID: true when PID exists and is not a zombie (an orphaned daemon may
# stay a zombie if PID 1 in a container does not reap it).
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

# pid_of NAME PIDFILE: print the pid of a live process called NAME, taken from
# PIDFILE, or else the oldest process whose command name is exactly NAME.
# Returns 1 when there is none.
pid_of() {
  local name=$1 pidfile=$2 pid=""
  if [[ -s $pidfile ]]; then
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -n $pid ]] && alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
      echo "$pid"
      return 0
    fi
  fi
  for pid in $(pgrep -x "$name" || true); do
    if alive "$pid"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# stop_pid NAME PID [SECONDS]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 wait_s=${3:-30} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < wait_s * 5; i++)); do
    alive "$pid" || return 0
    sleep 0.2
  done
  say "$name (pid $pid) ignored SIGTERM for ${wait_s}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
}

# stop_daemon NAME PIDFILE [SECONDS]: stop every process called NAME.
stop_daemon() {
  local name=$1 pidfile=$2 wait_s=${3:-30} pid tries=0
  while pid=$(pid_of "$name" "$pidfile"); do
    if ((tries++ >= 5)); then
      say "could not stop $name (pid $pid)" >&2
      return 1
    fi
    say "stopping $name (pid $pid)"
    stop_pid "$name" "$pid" "$wait_s"
  done
  rm -f "$pidfile"
}
