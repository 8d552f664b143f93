#!/usr/bin/env bash
# bench/run.sh: hpcstage against the standard tools it replaces, measured side by side.
#
# What it measures (each measurement is repeated BENCH_RUNS times; the median is reported,
# plus the ratio peer/hpcstage, where a ratio > 1 means hpcstage is faster):
#   1. manifest create   `hpcstage manifest create DIR --force -o OUT`
#                        vs `find . -type f -print0 | xargs -0 sha256sum > OUT` (in DIR)
#   2. manifest verify   `hpcstage manifest verify DIR --no-log` vs `sha256sum -c MANIFEST.sha256`
#   3. stage             `hpcstage stage SRC DEST --project bench` (full verification: source
#                        checked against its manifest, destination read back from storage)
#                        vs `cp -a SRC DEST2 && sync` on dataset (a),
#                        vs `rsync -a SRC/ DEST3/` on dataset (b); every run starts from an
#                        empty destination
#   4. no-op re-stage    `hpcstage stage` on an already staged DEST vs `rsync -a` on an
#                        up-to-date DEST3, dataset (b)
#   5. peak memory       max RSS (`/usr/bin/time -f %M`) of `hpcstage stage` on dataset (b)
# on two generated datasets of random bytes:
#   (a) 4 files of 512 MiB (large sequential files: throughput of hashing and copying)
#   (b) 20,000 files of 16 KiB in 100 folders (many small files: per-file overhead)
#
# Why ratios: the benchmark machine is shared (other builds run in the same tree), so an
# absolute time says little. hpcstage and its peer are measured in the same run, in
# alternating order (A B, B A, ...), under the same cache policy, and only their ratio is
# judged against the targets.
#
# Cache policy (the same for hpcstage and peer): before every timed run the script runs
# `sync; echo 3 > /proc/sys/vm/drop_caches` (cold caches: data comes from storage), then
# runs each tool's `--version` so that executables and shared libraries are not what is
# timed. Where dropping caches is not permitted, caches are warm for both: the input tree
# is read once (`cat` of every file) before each timed run. The policy in force is printed.
# BENCH_CACHE=cold|warm forces one (cold fails if caches cannot be dropped).
#
# hpcstage runs with a configuration that cannot come from, or leak to, the machine:
# HPCSTAGE_STATE, XDG_CONFIG_HOME, XDG_STATE_HOME and HPCSTAGE_SITE_CONFIG point under
# BENCH_DIR, HPCSTAGE_CONFIG and SCRATCH are unset, and --scratch-root is always passed.
#
# Environment:
#   BENCH_DIR    work folder for data, destinations, logs   (default /var/tmp/hpcstage-bench)
#   BENCH_RUNS   repetitions per measurement                 (default 3)
#   BENCH_SCALE  full | small (small: much smaller data, to check the script quickly)
#   BENCH_CACHE  auto | cold | warm                          (default auto)
#   BENCH_BIN    benchmark this hpcstage binary instead of building the release binary
#
# Exit status: 0 when every command ran, whether or not the targets were met (it is a
# report); non-zero when a command failed, a tool is missing, or the tools disagree on
# a manifest (the numbers would then mean nothing).
# Command strings are expanded by the inner bash on purpose; gen_a/gen_b are called by name.
# shellcheck disable=SC2016,SC2317,SC2185
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/hpcstage-bench}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_SCALE=${BENCH_SCALE:-full}
BENCH_CACHE=${BENCH_CACHE:-auto}
BENCH_BIN=${BENCH_BIN:-}

die() {
    echo "bench: error: $*" >&2
    exit 1
}
say() { echo "bench: $*" >&2; }

[[ $BENCH_RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$BENCH_RUNS')"
case $BENCH_SCALE in
full)
    A_FILES=4 A_MIB=512
    B_FILES=20000 B_DIRS=100 B_KIB=16
    C_FILES=200000 C_DIRS=400
    ;;
small)
    A_FILES=4 A_MIB=16
    B_FILES=2000 B_DIRS=20 B_KIB=16
    C_FILES=20000 C_DIRS=40
    ;;
*) die "BENCH_SCALE must be 'full' or 'small' (got '$BENCH_SCALE')" ;;
esac
case $BENCH_CACHE in auto | cold | warm) ;; *) die "BENCH_CACHE must be auto, cold or warm" ;; esac
case $BENCH_DIR in /*) ;; *) die "BENCH_DIR must be an absolute path (got '$BENCH_DIR')" ;; esac

# --------------------------------------------------------------------------- tools

ensure_tools() {
    local pkgs=()
    command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
    command -v xargs >/dev/null 2>&1 || pkgs+=(findutils)
    ((${#pkgs[@]})) || return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing tools (${pkgs[*]}); run as root on Debian to install them, or install them yourself"
    fi
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists once, only when there are none or the install fails.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    elif ! apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
}
ensure_tools

# --------------------------------------------------------------------------- layout

DATA=$BENCH_DIR/data/$BENCH_SCALE
DATA_A=$DATA/a
DATA_B=$DATA/b
ENV_DIR=$BENCH_DIR/env
SCRATCH_ROOT=$BENCH_DIR/scratch
PEER_DIR=$BENCH_DIR/peer
OUT_DIR=$BENCH_DIR/out
RUN_ID=$(date +%Y%m%d-%H%M%S)
LOG_DIR=$BENCH_DIR/logs/$RUN_ID
mkdir -p "$DATA" "$ENV_DIR/state" "$ENV_DIR/xdg-config" "$ENV_DIR/xdg-state" \
    "$SCRATCH_ROOT" "$PEER_DIR" "$OUT_DIR" "$LOG_DIR" "$BENCH_DIR/bin"

# --------------------------------------------------------------------------- build

if [[ -n $BENCH_BIN ]]; then
    [[ -x $BENCH_BIN ]] || die "BENCH_BIN=$BENCH_BIN is not an executable"
    BUILT=$BENCH_BIN
else
    if ! command -v cargo >/dev/null 2>&1 && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
        PATH=${HOME:-/root}/.cargo/bin:$PATH
    fi
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found; install a Rust toolchain (rust-version in Cargo.toml) or set BENCH_BIN"
    say "building the release binary (cargo build --release; log: $LOG_DIR/build.log)"
    if ! (cd "$REPO" && cargo build --release) >"$LOG_DIR/build.log" 2>&1; then
        tail -n 30 "$LOG_DIR/build.log" >&2
        die "cargo build --release failed (full log: $LOG_DIR/build.log)"
    fi
    BUILT=$REPO/target/release/hpcstage
fi
# A private copy: a rebuild in the shared tree must not swap the binary mid-run.
HPC=$BENCH_DIR/bin/hpcstage
cp -f "$BUILT" "$HPC.tmp" && mv -f "$HPC.tmp" "$HPC"

# --------------------------------------------------------------------------- isolation

# Nothing from /etc, ~/.config or the caller's environment reaches hpcstage.
unset HPCSTAGE_CONFIG SCRATCH
export HPCSTAGE_STATE=$ENV_DIR/state
export XDG_CONFIG_HOME=$ENV_DIR/xdg-config
export XDG_STATE_HOME=$ENV_DIR/xdg-state
export HPCSTAGE_SITE_CONFIG=$ENV_DIR/site-config.toml
cat >"$HPCSTAGE_SITE_CONFIG" <<'EOF'
# Site config used by bench/run.sh only (a purge policy, so stage does not warn).
[purge]
basis = "mtime"
age = "30d"
warn = "7d"
whole_folder = false
EOF
export LC_ALL=C
export HPC SCRATCH_ROOT DATA_A DATA_B PEER_DIR OUT_DIR

"$HPC" --scratch-root "$SCRATCH_ROOT" config show >"$LOG_DIR/config-show.txt" 2>&1 ||
    die "hpcstage config show failed: $(cat "$LOG_DIR/config-show.txt")"

# --------------------------------------------------------------------------- datasets

gen_a() {
    local dir=$1 i
    rm -rf "$dir" && mkdir -p "$dir"
    for ((i = 1; i <= A_FILES; i++)); do
        head -c "$((A_MIB << 20))" /dev/urandom >"$dir/file$i.bin"
    done
}

gen_b() {
    python3 - "$1" "$B_FILES" "$B_DIRS" "$((B_KIB << 10))" <<'EOF'
import os, shutil, sys
root, files, dirs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
shutil.rmtree(root, ignore_errors=True)
for d in range(dirs):
    os.makedirs(os.path.join(root, "dir%03d" % d))
for i in range(files):
    with open(os.path.join(root, "dir%03d" % (i % dirs), "f%05d.dat" % i), "wb") as f:
        f.write(os.urandom(size))
EOF
}

# (c): a scratch tree of C_FILES small files in C_DIRS folders with a stage marker, as
# `hpcstage report --scan` finds staged folders, for the purge-deadline scan.
gen_c() {
    python3 - "$1" "$C_FILES" "$C_DIRS" <<'EOF'
import json, os, shutil, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shutil.rmtree(root, ignore_errors=True)
staged = os.path.join(root, "bench", "scan")
for d in range(dirs):
    os.makedirs(os.path.join(staged, "dir%03d" % d))
for i in range(files):
    with open(os.path.join(staged, "dir%03d" % (i % dirs), "f%06d.dat" % i), "wb") as f:
        f.write(b"x" * (i % 512))
os.makedirs(os.path.join(staged, ".hpcstage"))
now = "2026-01-01T00:00:00Z"
record = {
    "id": "bench/scan", "project": "bench", "dataset": "scan",
    "source": "/nonexistent/bench/raw/scan", "destination": staged,
    "files": files, "bytes": 0, "manifest_digest": "0" * 64,
    "source_manifest_digest": None, "staged_at": now, "owner": "bench", "host": "bench",
    "purge": {"basis": "mtime", "age": "30days", "whole_folder": False,
              "oldest": now, "deadline": now},
    "tool_version": "bench",
}
with open(os.path.join(staged, ".hpcstage", "stage.json"), "w") as f:
    json.dump(record, f)
EOF
}

# Generated once per scale and reused; a dataset carries its MANIFEST.sha256 (so that
# stage checks the source against it and `sha256sum -c` has something to check).
ensure_dataset() {
    local name=$1 dir=$2 desc=$3
    local stamp=$dir.ready
    if [[ -f $stamp && $(cat "$stamp") == "$desc" && -f $dir/MANIFEST.sha256 ]]; then
        say "dataset ($name) reused: $desc"
        return
    fi
    say "generating dataset ($name): $desc"
    rm -f "$stamp"
    "gen_$name" "$dir"
    "$HPC" --scratch-root "$SCRATCH_ROOT" -q manifest create "$dir" --force \
        >"$LOG_DIR/manifest-$name.log" 2>&1 ||
        die "hpcstage manifest create $dir failed: $(tail -n 5 "$LOG_DIR/manifest-$name.log")"
    sync
    echo "$desc" >"$stamp"
}
ensure_dataset a "$DATA_A" "$A_FILES files of $A_MIB MiB"
ensure_dataset b "$DATA_B" "$B_FILES files of $B_KIB KiB in $B_DIRS folders"

# --------------------------------------------------------------------------- caches

drop_caches() {
    sync
    (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null
}
case $BENCH_CACHE in
auto) if drop_caches; then CACHE=cold; else CACHE=warm; fi ;;
cold) drop_caches || die "BENCH_CACHE=cold but caches cannot be dropped here"; CACHE=cold ;;
warm) CACHE=warm ;;
esac

# Tools whose start-up is kept out of the timings (binaries and libraries stay cached).
warm_executables() {
    "$HPC" --version >/dev/null
    rsync --version >/dev/null
    sha256sum --version >/dev/null
    cp --version >/dev/null
    find --version >/dev/null
    xargs --version >/dev/null
    /usr/bin/time --version >/dev/null 2>&1 || true
}

# Puts the caches in the state the policy says; $@ are the trees the run will read.
prepare_caches() {
    if [[ $CACHE == cold ]]; then
        drop_caches || die "dropping caches stopped working"
    else
        sync
        local d
        for d in "$@"; do
            find "$d" -type f -exec cat {} + >/dev/null
        done
    fi
    warm_executables
}

# --------------------------------------------------------------------------- timing

median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1}
        END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2];
              else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# run_timed LOG CMD: runs CMD with bash (pipefail), sets SECS and RSS_KB; dies on failure.
run_timed() {
    local log=$1 cmd=$2 t0 t1 rc=0
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$log.rss" bash -o pipefail -c "$cmd" </dev/null >"$log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if ((rc != 0)); then
        echo "--- command: $cmd" >&2
        tail -n 20 "$log" >&2
        die "command failed with exit status $rc (log: $log)"
    fi
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    RSS_KB=$(tail -n 1 "$log.rss")
}

RESULTS=()   # rows: name|hpc|peer|ratio|target|verdict
ROW=0

# measure NAME TARGET_KIND TARGET_VALUE PEER_NAME HPC_SETUP HPC_CMD PEER_SETUP PEER_CMD [TREES...]
# Setup commands are untimed; both sides get the same cache preparation of TREES.
# Sets HPC_MED, PEER_MED, HPC_RSS_MAX_KB, PEER_RSS_MAX_KB.
measure() {
    local name=$1 kind=$2 value=$3 peer_name=$4
    local hpc_setup=$5 hpc_cmd=$6 peer_setup=$7 peer_cmd=$8
    shift 8
    local trees=("$@") hpc_t=() peer_t=() i side
    ROW=$((ROW + 1))
    HPC_RSS_MAX_KB=0 PEER_RSS_MAX_KB=0
    say "[$ROW] $name"
    say "      hpcstage: $hpc_cmd"
    say "      peer:     $peer_cmd"
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        local order=(hpc peer)
        ((i % 2)) || order=(peer hpc)
        for side in "${order[@]}"; do
            local setup=$hpc_setup cmd=$hpc_cmd
            [[ $side == peer ]] && setup=$peer_setup cmd=$peer_cmd
            if [[ -n $setup ]]; then
                bash -o pipefail -c "$setup" >"$LOG_DIR/$ROW-$side-$i.setup.log" 2>&1 ||
                    die "setup failed: $setup (log: $LOG_DIR/$ROW-$side-$i.setup.log)"
            fi
            prepare_caches "${trees[@]}"
            run_timed "$LOG_DIR/$ROW-$side-$i.log" "$cmd"
            if [[ $side == hpc ]]; then
                hpc_t+=("$SECS")
                if ((RSS_KB > HPC_RSS_MAX_KB)); then HPC_RSS_MAX_KB=$RSS_KB; fi
            else
                peer_t+=("$SECS")
                if ((RSS_KB > PEER_RSS_MAX_KB)); then PEER_RSS_MAX_KB=$RSS_KB; fi
            fi
        done
        say "      run $i/$BENCH_RUNS: hpcstage ${hpc_t[-1]} s, $peer_name ${peer_t[-1]} s"
    done
    HPC_MED=$(median "${hpc_t[@]}")
    PEER_MED=$(median "${peer_t[@]}")
    local ratio target verdict
    ratio=$(awk -v p="$PEER_MED" -v h="$HPC_MED" 'BEGIN { if (h > 0) printf "%.2f", p / h; else print "inf" }')
    case $kind in
    ratio_ge)
        target="ratio >= $value"
        verdict=$(awk -v r="$PEER_MED" -v h="$HPC_MED" -v v="$value" 'BEGIN { print (h == 0 || r / h >= v) ? "PASS" : "FAIL" }')
        ;;
    ratio_gt)
        target="ratio > $value"
        verdict=$(awk -v r="$PEER_MED" -v h="$HPC_MED" -v v="$value" 'BEGIN { print (h == 0 || r / h > v) ? "PASS" : "FAIL" }')
        ;;
    time_le)
        target="hpc <= ${value}x $peer_name"
        verdict=$(awk -v r="$PEER_MED" -v h="$HPC_MED" -v v="$value" 'BEGIN { print (h <= v * r) ? "PASS" : "FAIL" }')
        ;;
    *) die "unknown target kind $kind" ;;
    esac
    say "      median: hpcstage $HPC_MED s, $peer_name $PEER_MED s, ratio $ratio ($verdict)"
    RESULTS+=("$name|$HPC_MED|$PEER_MED ($peer_name)|$ratio|$target|$verdict")
}

# --------------------------------------------------------------------------- run

say "run $RUN_ID: scale $BENCH_SCALE, $BENCH_RUNS runs, cache policy: $CACHE, logs in $LOG_DIR"
say "hpcstage: $("$HPC" --version) ($(sha256sum "$HPC" | cut -c1-12)), repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"

H='"$HPC" --scratch-root "$SCRATCH_ROOT"'
# The peer skips the tree's own MANIFEST.sha256, as hpcstage does, so both hash the same bytes.
FIND_SUM='find . -type f ! -name MANIFEST.sha256 -print0 | xargs -0 sha256sum'

# 1. manifest create
for ds in a b; do
    dir_var=DATA_${ds^^}
    measure "1 manifest create ($ds)" ratio_ge 6 sha256sum \
        "" "$H manifest create \"\$$dir_var\" --force -o \"\$OUT_DIR/hpc-$ds.sha256\"" \
        "" "cd \"\$$dir_var\" && $FIND_SUM > \"\$OUT_DIR/peer-$ds.sha256\"" \
        "${!dir_var}"
    # Both tools must have produced the same manifest (peer: unsorted, with ./ prefixes).
    sed 's#^\([0-9a-f]\{64\}\)  \./#\1  #' "$OUT_DIR/peer-$ds.sha256" | sort -t $'\t' -k1.67 >"$OUT_DIR/peer-$ds.sorted"
    cmp -s "$OUT_DIR/hpc-$ds.sha256" "$OUT_DIR/peer-$ds.sorted" ||
        die "manifests of ($ds) differ: $OUT_DIR/hpc-$ds.sha256 vs $OUT_DIR/peer-$ds.sorted"
done

# 2. manifest verify
for ds in a b; do
    dir_var=DATA_${ds^^}
    measure "2 manifest verify ($ds)" ratio_ge 6 "sha256sum -c" \
        "" "$H manifest verify \"\$$dir_var\" --no-log" \
        "" "cd \"\$$dir_var\" && sha256sum -c MANIFEST.sha256" \
        "${!dir_var}"
done

# 3. stage, fresh destinations
measure "3 stage (a) vs cp+sync" time_le 1.5 "cp -a+sync" \
    'rm -rf "$SCRATCH_ROOT/bench/a"' "$H stage \"\$DATA_A\" \"\$SCRATCH_ROOT/bench/a\" --project bench" \
    'rm -rf "$PEER_DIR/cp-a"' 'cp -a "$DATA_A" "$PEER_DIR/cp-a" && sync' \
    "$DATA_A"
rm -rf "$SCRATCH_ROOT/bench/a" "$PEER_DIR/cp-a"

measure "3 stage (b) vs rsync" ratio_gt 1 "rsync -a" \
    'rm -rf "$SCRATCH_ROOT/bench/b"' "$H stage \"\$DATA_B\" \"\$SCRATCH_ROOT/bench/b\" --project bench" \
    'rm -rf "$PEER_DIR/rsync-b"' 'rsync -a "$DATA_B/" "$PEER_DIR/rsync-b/"' \
    "$DATA_B"
STAGE_B_RSS_KB=$HPC_RSS_MAX_KB
RSYNC_B_RSS_KB=$PEER_RSS_MAX_KB

# 4. no-op: the destinations left by the last run of 3 (b) are complete and up to date.
measure "4 no-op re-stage (b)" ratio_ge 1 "rsync -a" \
    "" "$H stage \"\$DATA_B\" \"\$SCRATCH_ROOT/bench/b\" --project bench" \
    "" 'rsync -a "$DATA_B/" "$PEER_DIR/rsync-b/"' \
    "$DATA_B" "$SCRATCH_ROOT/bench/b" "$PEER_DIR/rsync-b"
grep -q ' 0 copied' "$LOG_DIR/$ROW-hpc-$BENCH_RUNS.log" ||
    die "the no-op re-stage copied files (log: $LOG_DIR/$ROW-hpc-$BENCH_RUNS.log)"
rm -rf "$SCRATCH_ROOT/bench/b" "$PEER_DIR/rsync-b"

# 5. peak memory, from the timed runs of 3 (b)
mem_verdict=$(awk -v k="$STAGE_B_RSS_KB" 'BEGIN { print (k < 64 * 1024) ? "PASS" : "FAIL" }')
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
RESULTS+=("5 stage (b) peak RSS|$(mib "$STAGE_B_RSS_KB")|$(mib "$RSYNC_B_RSS_KB") (rsync -a)|-|< 64 MiB|$mem_verdict")

# 6. purge-deadline scan of a big scratch tree: `report --scan` against find's timestamp
# listing (what a hand-written purge check would run).
export DATA_C=$DATA/c
if [[ ! -f $DATA_C.ready || $(cat "$DATA_C.ready") != "$C_FILES/$C_DIRS" ]]; then
    say "generating dataset (c): $C_FILES files in $C_DIRS folders"
    gen_c "$DATA_C"
    echo "$C_FILES/$C_DIRS" >"$DATA_C.ready"
fi
measure "6 deadline scan (c)" time_le 1.5 "find -printf" \
    "" "$H report --all --scan \"\$DATA_C\" --format json > /dev/null" \
    "" "find \"\$DATA_C\" -printf '%A@ %T@ %s\\n' > /dev/null" \
    "$DATA_C"

# --------------------------------------------------------------------------- report

{
    echo
    echo "hpcstage benchmark, scale $BENCH_SCALE: (a) $A_FILES x $A_MIB MiB, (b) $B_FILES x $B_KIB KiB in $B_DIRS folders, (c) $C_FILES files in $C_DIRS folders"
    echo "median of $BENCH_RUNS runs; ratio = peer / hpcstage (> 1: hpcstage faster)"
    if [[ $CACHE == cold ]]; then
        echo "cache policy: cold for both (sync; echo 3 > /proc/sys/vm/drop_caches before every timed run)"
    else
        echo "cache policy: WARM for both (caches could not be dropped here, or BENCH_CACHE=warm): input read once before every timed run"
    fi
    echo
    printf '%-26s %-16s %-26s %-7s %-24s %s\n' measurement "hpcstage med s" "peer med s" ratio target result
    for row in "${RESULTS[@]}"; do
        IFS='|' read -r n h p r t v <<<"$row"
        printf '%-26s %-16s %-26s %-7s %-24s %s\n' "$n" "$h" "$p" "$r" "$t" "$v"
    done
} | tee "$LOG_DIR/summary.txt"
fails=$(printf '%s\n' "${RESULTS[@]}" | grep -c '|FAIL$' || true)
echo
echo "$((${#RESULTS[@]} - fails)) of ${#RESULTS[@]} targets met; logs and summary in $LOG_DIR"
exit 0
