#!/usr/bin/env bash
# down.sh - stop the S3 test server (radosgw, ceph-osd, ceph-mon) started by up.sh.
#
# Why: tests and developers need a clean way to stop every daemon up.sh started,
# in reverse order, without systemd, and to give back the memory the in-memory
# OSD holds. Idempotent: stopping a server that is not running is a no-op. The
# OSD is stopped cleanly, so memstore writes its objects under HPCSTAGE_S3_DIR
# and the next up.sh finds the same users, buckets and objects. Pass --purge to
# delete that folder too (a full reset; the next up.sh creates a new cluster).
#
# Usage (as root): tests/s3/down.sh [--purge]
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

# Wait for a running up.sh, so that nothing is started behind our back.
if [[ -d $S3_DIR ]]; then
  exec 9>"$S3_DIR/.lock"
  flock -w 600 9 || say "another up.sh holds $S3_DIR/.lock; stopping anyway"
fi

stop_daemon radosgw "$RGW_PID" 30
stop_osd
stop_daemon ceph-mon "$MON_PID" 30

if ((PURGE)); then
  say "removing $S3_DIR"
  rm -rf -- "$S3_DIR"
fi
say "S3 server stopped"
