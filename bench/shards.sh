#!/usr/bin/env bash
# bench/shards.sh: what one shard of `hpcstage stage --shards N` copies per second, on the
# test cluster (tests/cluster/up.sh: transfer nodes xfer1..3, all on this machine, so the
# shards share its cores and disk).
#
# Usage (as root, cluster up):  bench/shards.sh SRC N [HPCSTAGE]
#   SRC       a local folder to stage (it needs no MANIFEST.sha256)
#   N         number of shards
#   HPCSTAGE  the binary (default: target/release/hpcstage)
#
# Stages SRC into a fresh folder with --shards N, waits for the final task, then prints one
# line per shard (node, files, bytes, seconds, MiB/s, files/s, from
# DEST/.hpcstage/shard-jobs/I.json), the final task's elapsed time (sacct) and the time
# from submission to a complete stage. The destination is removed afterwards.
set -euo pipefail

SRC=$(realpath "${1:?usage: bench/shards.sh SRC N [HPCSTAGE]}")
N=${2:?usage: bench/shards.sh SRC N [HPCSTAGE]}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN=$(realpath "${3:-$HERE/../target/release/hpcstage}")
# shellcheck source=SCRIPTDIR/../tests/cluster/env.sh
. "$HERE/../tests/cluster/env.sh"

WORK=$(mktemp -d /var/tmp/hpcstage-shards-bench.XXXXXX)
trap 'rm -rf -- "$WORK"' EXIT
DEST="$WORK/scratch/bench/$(basename "$SRC")"
export HPCSTAGE_STATE="$WORK/state" XDG_CONFIG_HOME="$WORK/config"

started=$(date +%s.%N)
out=$("$BIN" --scratch-root "$WORK/scratch" stage "$SRC" "$DEST" --project bench --shards "$N" --json 2>/dev/null)
last=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["final_job"])' <<<"$out")
while squeue -h -j "$last" 2>/dev/null | grep -q .; do sleep 1; done
ended=$(date +%s.%N)
sleep 2 # accounting lags a little

python3 - "$DEST/.hpcstage/shard-jobs" <<'PY'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1])
plan = json.loads((d / "plan.json").read_text())
for s in plan["shards"]:
    r = json.loads((d / f"{s['index']}.json").read_text())
    secs = max(r["elapsed_secs"], 1e-9)
    print(f"shard {r['index']}: {r['node']:6} {r['files']:>8} files {r['bytes'] / 2**20:>9.1f} MiB "
          f"{secs:>7.2f} s {r['bytes'] / 2**20 / secs:>8.1f} MiB/s {r['files'] / secs:>9.0f} files/s"
          f"{'' if r['ok'] else '  INCOMPLETE'}")
PY
echo "final task: $(sacct -X -n -P -j "$last" --format=State,Elapsed,NodeList)"
python3 -c "print(f'submission to complete stage: {$ended - $started:.1f} s')"
test -s "$DEST/.hpcstage/stage.json" || { echo "no stage record: the stage did not complete" >&2; exit 1; }
