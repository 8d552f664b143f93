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
# One slurmd per node, all on this machine: slurm.conf names their files with %n.
slurmd_pidfile() { echo "$RUN_DIR/slurmd-$1.pid"; }
slurmd_log() { echo "$LOG_DIR/slurmd-$1.log"; }

say() { printf '[cluster] %s\n' "$*"; }

# shellcheck source=SCRIPTDIR/../lib/daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/daemons.sh"

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


# slurmd_pid NODE: the pid of the live `slurmd -N NODE`, from its pid file or,
# failing that, from the command lines of the running slurmd processes.
slurmd_pid() {
  local node=$1 pidfile pid
  pidfile=$(slurmd_pidfile "$node")
  for pid in $(tr -dc '0-9\n' 2>/dev/null <"$pidfile") $(pgrep -x slurmd || true); do
    if alive "$pid" && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *" -N $node "* ]]; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# stop_slurmd NODE: stop that node's slurmd (and only it).
stop_slurmd() {
  local node=$1 pid tries=0
  while pid=$(slurmd_pid "$node"); do
    if ((tries++ >= 5)); then
      say "could not stop slurmd -N $node (pid $pid)" >&2
      return 1
    fi
    say "stopping slurmd -N $node (pid $pid)"
    stop_pid slurmd "$pid" 30
  done
  rm -f "$(slurmd_pidfile "$node")"
}
