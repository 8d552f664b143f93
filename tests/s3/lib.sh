# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# lib.sh - paths and helpers shared by up.sh, down.sh and smoke.sh (sourced, not run).
#
# Why: the scripts must agree on where the config, keyrings, pid files and logs
# live and on how a daemon is recognised as running, so that bring-up and
# tear-down stay idempotent.

# shellcheck source=SCRIPTDIR/env.sh
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"

S3_DIR="$HPCSTAGE_S3_DIR"
ETC_DIR="$S3_DIR/etc"
RUN_DIR="$S3_DIR/run"
LOG_DIR="$S3_DIR/log"
DATA_DIR="$S3_DIR/data"
CONF="$CEPH_CONF"
FSID_FILE="$ETC_DIR/fsid"
ADMIN_KEYRING="$ETC_DIR/ceph.client.admin.keyring"
MON_KEYRING="$ETC_DIR/ceph.mon.keyring"
RGW_KEYRING="$ETC_DIR/ceph.client.rgw.keyring"
MON_ID=a
OSD_ID=0
RGW_NAME=client.rgw.hpcstage
MON_DATA="$DATA_DIR/mon-$MON_ID"
OSD_DATA="$DATA_DIR/osd-$OSD_ID"
MON_PID="$RUN_DIR/mon.$MON_ID.pid"
OSD_PID="$RUN_DIR/osd.$OSD_ID.pid"
RGW_PID="$RUN_DIR/$RGW_NAME.pid"
MON_LOG="$LOG_DIR/mon.$MON_ID.log"
OSD_LOG="$LOG_DIR/osd.$OSD_ID.log"
RGW_LOG="$LOG_DIR/$RGW_NAME.log"
# memstore keeps the objects in memory and writes them to OSD_DATA only when the
# OSD stops cleanly; this file says that happened (see stop_osd).
OSD_CLEAN="$OSD_DATA/.stopped-cleanly"

say() { printf '[s3] %s\n' "$*"; }

# shellcheck source=SCRIPTDIR/../lib/daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/daemons.sh"

# ceph_cli ARGS...: the ceph CLI as client.admin, never hanging for long.
ceph_cli() { timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"; }
rgw_admin() { timeout 60 radosgw-admin -c "$CONF" "$@"; }

# pid_of NAME PIDFILE: print the pid from PIDFILE if that process is alive and
# called NAME, or else the pid of a live NAME process whose command line names
# this server's ceph.conf (so a Ceph of someone else is never touched).
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
    if alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}


# stop_osd: stop the OSD so that memstore writes its objects to disk, and mark
# the data as complete. An OSD that had to be killed (or crashed, or was killed
# by someone else) lost its objects: then there is no mark and up.sh starts a
# new cluster.
stop_osd() {
  local pid i
  pid=$(pid_of ceph-osd "$OSD_PID") || return 0
  say "stopping ceph-osd (pid $pid); memstore writes its objects to $OSD_DATA"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 120 * 5; i++)); do
    if ! alive "$pid"; then
      touch "$OSD_CLEAN"
      rm -f "$OSD_PID"
      return 0
    fi
    sleep 0.2
  done
  say "ceph-osd (pid $pid) did not stop within 120s; killing it (its objects are lost)"
  stop_daemon ceph-osd "$OSD_PID" 5
}
