#!/usr/bin/env bash
# smoke.sh - prove the cluster started by up.sh really runs and accounts jobs.
#
# Why: a green up.sh only says the node is idle. This submits one job to each
# partition (debug, gpu with --gres=gpu:1, transfer), plus one as a non-root
# user, waits for them, and checks sacct reports COMPLETED 0:0 and, for the GPU
# job, gres/gpu=1 in AllocTRES. Run it after up.sh (CI does, before the Rust
# integration tests) to fail early with a clear message.
#
# Usage (as root): tests/cluster/smoke.sh [USER]
#   USER: non-root user to submit as (default: first of HPCSTAGE_CLUSTER_USERS,
#         or hpcstage-smoke, which is created by calling up.sh for it).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/env.sh
. "$HERE/env.sh"

read -r -a _users <<<"${HPCSTAGE_CLUSTER_USERS:-}"
USER_NAME="${1:-${_users[0]:-hpcstage-smoke}}"
TIMEOUT="${HPCSTAGE_CLUSTER_TIMEOUT:-90}"
WORK=$(mktemp -d /tmp/hpcstage-smoke.XXXXXX)
chmod 1777 "$WORK"
trap 'rm -rf -- "$WORK"' EXIT

passed=0
failed=0

if ! id -u "$USER_NAME" >/dev/null 2>&1 ||
  ! sacctmgr -n -P list assoc where user="$USER_NAME" account="$HPCSTAGE_CLUSTER_ACCOUNT" format=user | grep -q .; then
  HPCSTAGE_CLUSTER_USERS="${HPCSTAGE_CLUSTER_USERS:-} $USER_NAME" "$HERE/up.sh" >/dev/null
fi

# sacct_line JOBID: wait until the job's allocation record is final in sacct.
sacct_line() {
  local id=$1 deadline=$((SECONDS + TIMEOUT)) line=""
  while ((SECONDS < deadline)); do
    line=$(sacct -X --parsable2 --noheader -j "$id" --format=JobID,State,ExitCode,AllocTRES 2>/dev/null | head -n 1)
    case $line in
      *'|PENDING|'* | *'|RUNNING|'* | *'|COMPLETING|'* | '') sleep 1 ;;
      *) break ;;
    esac
  done
  echo "$line"
}

# check NAME RUNAS EXPECT SBATCH-ARGS...: submit, wait, check sacct.
check() {
  local name=$1 runas=$2 expect=$3 id line
  shift 3
  local -a cmd=(sbatch --parsable --wait -D "$WORK" -o "$WORK/$name.out" "$@" --wrap hostname)
  if [[ $runas != root ]]; then
    cmd=(runuser -u "$runas" -- "${cmd[@]}")
  fi
  if ! id=$(cd "$WORK" && timeout "$TIMEOUT" "${cmd[@]}"); then
    echo "FAIL $name: sbatch failed or timed out: ${cmd[*]}"
    failed=$((failed + 1))
    return
  fi
  id=${id%%;*}
  line=$(sacct_line "$id")
  if [[ $line == "$id|COMPLETED|0:0|"* && $line == *"$expect"* ]]; then
    echo "ok   $name: $line"
    passed=$((passed + 1))
  else
    echo "FAIL $name: sacct says '$line' (want COMPLETED 0:0 and '$expect')"
    failed=$((failed + 1))
  fi
}

check debug root "cpu=" -p debug
check gpu root "gres/gpu=1" -p gpu --gres=gpu:1
check transfer root "cpu=" -p transfer
check "user-$USER_NAME" "$USER_NAME" "cpu=" -p debug
check "user-$USER_NAME-gpu" "$USER_NAME" "gres/gpu=1" -p gpu --gres=gpu:1

echo "smoke: $passed passed, $failed failed"
((failed == 0))
