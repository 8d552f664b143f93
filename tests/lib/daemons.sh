# shellcheck shell=bash
# daemons.sh - what the test servers' scripts (tests/cluster/, tests/s3/) share:
# installing their Debian packages without starting them, recognising and
# stopping a daemon, and showing its logs when a bring-up fails. Sourced by
# each server's lib.sh, which defines `say` and its own `pid_of NAME PIDFILE`
# (how a process is known to be that server's).

# missing_packages PKG...: print the packages that are not installed, one per
# line (dpkg -s succeeds for removed-but-configured packages too, so check Status).
missing_packages() {
  local pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
      echo "$pkg"
    fi
  done
}

# apt_install_quietly PKG...: install PKGs without letting their maintainer
# scripts start services (the up.sh scripts start the daemons themselves): a
# policy-rc.d forbids service starts for the install, unless one already exists
# (Docker images ship one).
apt_install_quietly() {
  local policy=/usr/sbin/policy-rc.d created=0 rc=0
  export DEBIAN_FRONTEND=noninteractive
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=1
  fi
  { apt-get update -q &&
    apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "$@" </dev/null; } || rc=$?
  if [[ $created -eq 1 ]]; then
    rm -f "$policy"
  fi
  return "$rc"
}

# alive PID: true when PID exists and is not a zombie (an orphaned daemon may
# stay a zombie if PID 1 in a container does not reap it).
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
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

# stop_daemon NAME PIDFILE [SECONDS]: stop every process pid_of finds for NAME.
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

# tail_logs WHAT FILE...: the last 40 lines of each log, on stderr, after a
# banner saying WHAT failed.
tail_logs() {
  local what=$1 f
  shift
  echo "================ $what failed; daemon logs follow ================" >&2
  for f in "$@"; do
    if [[ -s $f ]]; then
      echo "---------------- last 40 lines of $f ----------------" >&2
      tail -n 40 "$f" >&2
    else
      echo "---------------- $f: missing or empty ----------------" >&2
    fi
  done
}
