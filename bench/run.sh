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
#   6. deadline scan     `hpcstage report --all --scan DIR` vs `find DIR -printf ...`, dataset (c)
#   7. stage over SSH    `hpcstage stage ALIAS:SRC DEST --project bench` (small files
#                        through tar streams, bigger ones over SFTP; default
#                        `--ssh-sessions`) vs `rsync -a -e ssh ALIAS:SRC/ DEST2/` and vs
#                        `scp -r ALIAS:SRC DEST3`, dataset (b), fresh destinations; ALIAS is
#                        a private sshd the script starts on 127.0.0.1 (stopped on exit), so
#                        the data crosses loopback: encryption and per-file round trips are
#                        what is measured. hpcstage's copy is compared with the source once.
#   8. archive           `hpcstage archive DIR --to OUT` (chunks hashed as written, read back
#                        from storage and compared, index, manifest, README) vs
#                        `tar --format=posix -cf X.tar DIR && sha256sum X.tar`, datasets (a), (b)
#   9. restore one file  `hpcstage archive restore ARCHIVE --file f2b.bin` from a 4-chunk
#                        archive vs `tar -xf` of the chunk that holds it, at two archive sizes:
#                        (d) fillers of 64 MiB, (e) of 256 MiB, beside the same 16 MiB file
#                        sharing chunk 2 with a filler; target: hpcstage's restore time grows
#                        by at most 1.5x from (d) to (e) (GNU tar seeks over members in a
#                        file too; hpcstage also fsyncs the file and checks its sha256)
#  10. stage from S3     `hpcstage stage s3://BUCKET/bench/X DEST --project bench` (every object
#                        hashed and checked against the prefix's MANIFEST.sha256, the copy
#                        read back from storage) vs `rclone copy` and vs `aws s3 sync`, on the
#                        S3 test server (Ceph RadosGW on 127.0.0.1, tests/s3/up.sh, as root),
#                        dataset (b) and (l): 2 files of 128 MiB (16 MiB at scale small);
#                        fresh destinations; each tool with its default parallelism.
#                        Pull to S3: `hpcstage pull RUN` of a finished run (template convert,
#                        local executor, `cp` as converter: its outputs are the 2 files of (m),
#                        as large as (l)) to an s3:// nas_root (every object hashed, uploaded,
#                        read back with a GET; run.json, README.md, MANIFEST.sha256 last) vs
#                        `rclone copy` and `aws s3 sync` of the same run folder (without its
#                        intermediates and bookkeeping) to a fresh prefix
#  11. archive to S3     `hpcstage archive L --to s3://BUCKET/bench-arch` (a multipart upload
#                        per chunk, each read back with a GET and compared, then index,
#                        README and manifest) vs `tar --format=posix -cf - L | tee >(sha256sum)
#                        | aws s3 cp - s3://BUCKET/bench-tar/l.tar`, dataset (l), on the same
#                        S3 test server; the objects are removed before every run
#  12. scale             tiny files at 10^4, 10^5 and 10^6 (10^6 only when BENCH_SCALE_MAX
#                        allows): `hpcstage stage` fresh, no-op and after one source file
#                        was touched vs `rsync -a` the same, `hpcstage ingest` into a
#                        fresh NAS vs `rsync -a` fresh, then `hpcstage stage --dry-run`
#                        into a fresh folder, `hpcstage status` and `hpcstage report --all
#                        --scan` on the staged copy, `hpcstage pull` of a run (template
#                        convert, local executor) whose output is an OME-Zarr store of as
#                        many files, into a local NAS, and `hpcstage status RUN` of it,
#                        then `hpcstage clean --dry-run` and
#                        `hpcstage clean` of the staged copy (hpcstage alone); time and peak
#                        RSS of each, and RSS per file: memory must stay flat (< 64 MiB) as
#                        files grow
# on two generated datasets of random bytes:
#   (a) 4 files of 512 MiB (large sequential files: throughput of hashing and copying)
#   (b) 20,000 files of 16 KiB in 100 folders (many small files: per-file overhead)
# (6 uses a third one, (c): 200,000 tiny files in 400 folders with a stage marker)
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
# For 7, every side reaches the sshd through one generated client config under
# BENCH_DIR/ssh/home/.ssh (host alias, generated key, known_hosts; hpcstage runs with HOME
# there, ssh/rsync/scp get it with -F); SSH_AUTH_SOCK is unset, ciphers are the defaults.
#
# Environment:
#   BENCH_DIR    work folder for data, destinations, logs   (default /var/tmp/hpcstage-bench)
#   BENCH_RUNS   repetitions per measurement                 (default 3)
#   BENCH_SCALE  full | small (small: much smaller data, to check the script quickly)
#   BENCH_CACHE  auto | cold | warm                          (default auto)
#   BENCH_BIN    benchmark this hpcstage binary instead of building the release binary
#   BENCH_ONLY   run only these measurements, e.g. "7" or "1 2" (default: all; 4 and 5
#                need 3, which then runs too); for iterating, a report needs them all
#   BENCH_SCALE_MAX  largest tree of measurement 12, in files (default 100000: 10^4 and
#                10^5; 1000000 adds 10^6, about 4 GiB of disk and a million inodes per
#                copy, three copies at once)
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
BENCH_ONLY=${BENCH_ONLY:-}
BENCH_SCALE_MAX=${BENCH_SCALE_MAX:-100000}

die() {
    echo "bench: error: $*" >&2
    exit 1
}
say() { echo "bench: $*" >&2; }

# Things to undo on exit, however the script ends (see cleanup below).
SSHD_PID=
POLICY_RC_D_ADDED=
cleanup() {
    if [[ -n $SSHD_PID ]]; then stop_sshd; fi
    if [[ -n $POLICY_RC_D_ADDED ]]; then rm -f /usr/sbin/policy-rc.d; fi
    if [[ -n ${TRASH:-} ]]; then rm -rf "$TRASH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

[[ $BENCH_RUNS =~ ^[1-9][0-9]*$ ]] || die "BENCH_RUNS must be a positive integer (got '$BENCH_RUNS')"
case $BENCH_SCALE in
full)
    A_FILES=4 A_MIB=512
    B_FILES=20000 B_DIRS=100 B_KIB=16
    C_FILES=200000 C_DIRS=400
    D_MIB=64 E_MIB=256 TARGET_MIB=16
    ;;
small)
    A_FILES=4 A_MIB=16
    B_FILES=2000 B_DIRS=20 B_KIB=16
    C_FILES=20000 C_DIRS=40
    D_MIB=8 E_MIB=32 TARGET_MIB=2
    ;;
*) die "BENCH_SCALE must be 'full' or 'small' (got '$BENCH_SCALE')" ;;
esac
case $BENCH_CACHE in auto | cold | warm) ;; *) die "BENCH_CACHE must be auto, cold or warm" ;; esac
case $BENCH_DIR in /*) ;; *) die "BENCH_DIR must be an absolute path (got '$BENCH_DIR')" ;; esac
BENCH_ONLY=${BENCH_ONLY//,/ }
for m in $BENCH_ONLY; do
    [[ $m =~ ^([1-9]|1[0-2])$ ]] || die "BENCH_ONLY takes measurement numbers 1 to 12 (got '$BENCH_ONLY')"
done
[[ $BENCH_SCALE_MAX =~ ^[1-9][0-9]*$ ]] || die "BENCH_SCALE_MAX must be a number of files (got '$BENCH_SCALE_MAX')"
# The tree sizes of measurement 12: powers of ten from 10^4 up to BENCH_SCALE_MAX.
SCALE_SIZES=()
for n in 10000 100000 1000000; do
    if ((n <= BENCH_SCALE_MAX)); then SCALE_SIZES+=("$n"); fi
done
((${#SCALE_SIZES[@]})) || die "BENCH_SCALE_MAX=$BENCH_SCALE_MAX is below the smallest tree of measurement 12 (10000)"
# want N: measurement N is to run.
want() { [[ -z ${BENCH_ONLY// /} || " $BENCH_ONLY " == *" $1 "* ]]; }
if want 7; then
    # Paths go unquoted into sshd_config, ssh_config and rsync -e.
    [[ $BENCH_DIR != *[[:space:]\'\"\\]* ]] ||
        die "BENCH_DIR must not contain spaces, quotes or backslashes for measurement 7 (got '$BENCH_DIR')"
fi

# --------------------------------------------------------------------------- tools

ensure_tools() {
    local pkgs=()
    command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
    [[ -x /usr/bin/time ]] || pkgs+=(time)
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    command -v sha256sum >/dev/null 2>&1 || pkgs+=(coreutils)
    command -v xargs >/dev/null 2>&1 || pkgs+=(findutils)
    if want 10; then
        command -v rclone >/dev/null 2>&1 || pkgs+=(rclone)
    fi
    if want 7; then
        [[ -x /usr/sbin/sshd && -x $SFTP_SERVER ]] || pkgs+=(openssh-server openssh-sftp-server)
        { command -v ssh && command -v scp && command -v ssh-keygen; } >/dev/null 2>&1 ||
            pkgs+=(openssh-client)
    fi
    ((${#pkgs[@]})) || return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing tools (${pkgs[*]}); run as root on Debian to install them, or install them yourself"
    fi
    say "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Installing openssh-server must not start the machine's own sshd on port 22: services
    # are held back (policy-rc.d, exit 101) while apt runs, unless a policy is in place.
    if [[ " ${pkgs[*]} " == *" openssh-server "* && ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_D_ADDED=1
        printf '#!/bin/sh\n# written by hpcstage bench/run.sh while it installs packages\nexit 101\n' \
            >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    # Update the package lists once, only when there are none or the install fails.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    elif ! apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
    if [[ -n $POLICY_RC_D_ADDED ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_D_ADDED=
    fi
}
SFTP_SERVER=/usr/lib/openssh/sftp-server
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
# Every run starts with an empty ledger: `report --all` (6) reads every stage recorded in
# it, so stages left by earlier runs (or by hand, with this environment) would be timed too.
rm -rf "$ENV_DIR/state" "$ENV_DIR/xdg-state"
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

# Nothing from /etc, ~/.config or the caller's environment reaches hpcstage (nor, for 7,
# an ssh-agent: every SSH client authenticates with the generated key).
unset HPCSTAGE_CONFIG SCRATCH SSH_AUTH_SOCK
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

# Destinations of the many-file measurements (3 and 7 on (b)) are set aside before each
# timed run, renamed into TRASH, and deleted only when the script ends. Deleting them
# between runs would make the next run pay for it: on ext4 without a journal (as on this
# benchmark's machine) the inode allocator skips every inode freed in the last five
# minutes, checking each one, so 20,000 files created right after deleting 20,000 cost
# both tools seconds of system time that depend on how much was deleted and where, not on
# the tool (`perf`: ext4 `recently_deleted`, a quarter of all CPU of such a run). The
# destinations of (a), four files, are deleted as before (they hold 4 GiB a run).
TRASH=$BENCH_DIR/trash
set_aside() {
    local d
    for d in "$@"; do
        [[ -e $d ]] || continue
        mkdir -p "$TRASH"
        mv "$d" "$(mktemp -d "$TRASH/XXXXXX")/"
    done
}
export TRASH
export -f set_aside
if [[ -e $TRASH ]]; then
    say "deleting destinations an interrupted earlier run set aside ($TRASH)"
    rm -rf "$TRASH"
fi

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

# (scale-N): N tiny files (a few bytes each, numbered) in folders of 1,000, as an OME-Zarr
# plate stores its chunks, for measurement 12. SCALE_N is the count.
gen_scale() {
    python3 - "$1" "$SCALE_N" <<'EOF'
import os, shutil, sys
root, files = sys.argv[1], int(sys.argv[2])
shutil.rmtree(root, ignore_errors=True)
for i in range(files):
    d = os.path.join(root, "d%05d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "c%07d" % i), "wb") as f:
        f.write(b"%d\n" % i)
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
if want 1 || want 2 || want 3 || want 4 || want 5 || want 8; then
    ensure_dataset a "$DATA_A" "$A_FILES files of $A_MIB MiB"
fi
if want 1 || want 2 || want 3 || want 4 || want 5 || want 7 || want 8; then
    ensure_dataset b "$DATA_B" "$B_FILES files of $B_KIB KiB in $B_DIRS folders"
fi

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
    tar --version >/dev/null
    /usr/bin/time --version >/dev/null 2>&1 || true
    if [[ -n $SSHD_PID ]]; then
        # One login runs ssh, sshd, the remote shell, rsync and sftp-server once.
        ssh -V 2>/dev/null
        scp >/dev/null 2>&1 || true
        ssh -F "$SSH_CFG" -o BatchMode=yes "$SSH_ALIAS" \
            "rsync --version >/dev/null; $SFTP_SERVER -h >/dev/null 2>&1; true" </dev/null >/dev/null ||
            die "the warm-up login to $SSH_ALIAS failed (sshd log: $SSHD_LOG)"
    fi
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

# --------------------------------------------------------------------------- ssh (7)

# A private OpenSSH server on 127.0.0.1 for measurement 7, started just before it and
# stopped right after (and by the EXIT trap, whatever happens): generated ed25519 host and
# user keys and its own sshd_config under SSH_DIR, its log in LOG_DIR/sshd.log. The client
# side is SSH_HOME/.ssh (config with the host alias, the user key, known_hosts): hpcstage
# reads it with HOME=SSH_HOME, ssh/rsync/scp with -F.
SSH_DIR=$BENCH_DIR/ssh
SSH_HOME=$SSH_DIR/home
SSH_CFG=$SSH_HOME/.ssh/config
SSH_KNOWN=$SSH_HOME/.ssh/known_hosts
SSH_ALIAS=hpcstage-bench-nas
SSHD_LOG=$LOG_DIR/sshd.log
SSH_USER=$(id -un)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sshd_banner PORT: the first line the server on 127.0.0.1:PORT sends (empty if none in 2 s).
sshd_banner() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$1" 2>/dev/null || true
}

write_sshd_config() {
    cat >"$SSH_DIR/sshd_config" <<EOF
# Written by hpcstage bench/run.sh for measurement 7.
Port $1
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $SSH_DIR/host_ed25519
PidFile $SSH_DIR/sshd.pid
AuthorizedKeysFile $SSH_DIR/authorized_keys
AllowUsers $SSH_USER
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
PermitRootLogin prohibit-password
# hpcstage opens --ssh-sessions connections at once.
MaxStartups 100:30:200
MaxSessions 64
LoginGraceTime 30
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
Subsystem sftp $SFTP_SERVER
# DEBUG1 names each client's software and the cipher it negotiated (once per connection).
LogLevel DEBUG1
EOF
    # OpenSSH >= 9.8 penalizes a source address for refused or dropped connections.
    if /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" -o PerSourcePenalties=no >/dev/null 2>&1; then
        echo "PerSourcePenalties no" >>"$SSH_DIR/sshd_config"
    fi
}

# Sets SSHD_PID and SSH_PORT, writes the client side, checks that a login works.
start_sshd() {
    local port i banner seen
    rm -rf "$SSH_DIR"
    mkdir -p "$SSH_HOME/.ssh"
    chmod 700 "$SSH_DIR" "$SSH_HOME/.ssh"
    ssh-keygen -q -t ed25519 -N '' -C hpcstage-bench-host -f "$SSH_DIR/host_ed25519"
    ssh-keygen -q -t ed25519 -N '' -C hpcstage-bench-user -f "$SSH_HOME/.ssh/id_ed25519"
    cp "$SSH_HOME/.ssh/id_ed25519.pub" "$SSH_DIR/authorized_keys"
    if [[ $(id -u) -eq 0 ]]; then mkdir -p /run/sshd; fi
    : >>"$SSHD_LOG"
    SSH_PORT=
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        write_sshd_config "$port"
        seen=$(wc -l <"$SSHD_LOG")
        /usr/sbin/sshd -t -f "$SSH_DIR/sshd_config" >>"$SSHD_LOG" 2>&1 ||
            die "sshd rejects its configuration $SSH_DIR/sshd_config: $(tail -n 5 "$SSHD_LOG")"
        # -E: the server and its session processes log to the file, not to the clients
        # (what it prints before it opens the file is appended there too).
        # shellcheck disable=SC2094
        /usr/sbin/sshd -D -E "$SSHD_LOG" -f "$SSH_DIR/sshd_config" </dev/null >>"$SSHD_LOG" 2>&1 &
        SSHD_PID=$!
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SSHD_PID" 2>/dev/null || break
            banner=$(sshd_banner "$port")
            if [[ $banner == SSH-2.0-OpenSSH* ]]; then
                # It answers: make sure it is ours, not another server that took the port.
                sleep 0.1
                if kill -0 "$SSHD_PID" 2>/dev/null; then SSH_PORT=$port; fi
                break
            fi
            sleep 0.1
        done
        [[ -z $SSH_PORT ]] || break
        stop_sshd
        tail -n "+$((seen + 1))" "$SSHD_LOG" | grep -q 'Address already in use' ||
            die "sshd did not start on 127.0.0.1:$port: $(tail -n 5 "$SSHD_LOG")"
        say "port $port was taken before sshd bound it; trying another"
    done
    [[ -n $SSH_PORT ]] || die "sshd found no free port in 5 tries (log: $SSHD_LOG)"
    cat >"$SSH_CFG" <<EOF
# Written by hpcstage bench/run.sh: read by hpcstage (HOME=$SSH_HOME) and by ssh -F.
Host $SSH_ALIAS
    HostName 127.0.0.1
    Port $SSH_PORT
    User $SSH_USER
    IdentityFile $SSH_HOME/.ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $SSH_KNOWN
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes
    ControlMaster no
    ControlPath none
    ForwardAgent no
    ForwardX11 no
EOF
    chmod 600 "$SSH_CFG"
    echo "[127.0.0.1]:$SSH_PORT $(cut -d ' ' -f 1,2 "$SSH_DIR/host_ed25519.pub")" >"$SSH_KNOWN"
    ssh -F "$SSH_CFG" -o "UserKnownHostsFile=$SSH_KNOWN" -o BatchMode=yes "$SSH_ALIAS" true \
        </dev/null >"$LOG_DIR/ssh-login.log" 2>&1 ||
        die "cannot log in to the bench sshd: $(tail -n 5 "$LOG_DIR/ssh-login.log") (sshd log: $SSHD_LOG)"
}

# Stops the sshd and what it forked (connections left open by a run that failed).
stop_sshd() {
    local pid=$SSHD_PID stat line ppid
    SSHD_PID=
    [[ -n $pid ]] || return 0
    for stat in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$stat" || continue
        read -r _ ppid _ <<<"${line##*) }"
        if [[ $ppid == "$pid" ]]; then
            kill "${stat//[!0-9]/}" 2>/dev/null || true
        fi
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# The ciphers the clients negotiated, from the sshd log ("libssh2_1.11.0: aes128-ctr, ...").
ssh_ciphers() {
    awk '/remote software version / { sw = $0; sub(/.*remote software version /, "", sw); sub(/ .*/, "", sw) }
         /kex: client->server cipher: / { c = $0; sub(/.*cipher: /, "", c); sub(/ .*/, "", c)
                                          if (!((sw ": " c) in seen)) { seen[sw ": " c] = 1; out = out (out ? ", " : "") sw ": " c } }
         END { print out }' "$SSHD_LOG"
}

# same_tree SRC COPY TAG: COPY holds exactly SRC's files and bytes (hpcstage's .hpcstage
# folder and the manifests aside), or the script stops: the times would mean nothing.
same_tree() {
    local log=$LOG_DIR/$ROW-diff-$3.log
    diff -r --exclude=.hpcstage --exclude=MANIFEST.sha256 "$1" "$2" >"$log" 2>&1 ||
        die "the copy made by $3 differs from its source: diff -r $1 $2 (log: $log)"
    say "      checked: the copy made by $3 is the source (diff -r)"
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

# reference NAME PEER_MED CMD [TREES...]: what reading alone costs, no target. Runs CMD
# BENCH_RUNS times under the same cache policy as the rows and keeps the median, and the
# ratio PEER_MED / median: for a floor of the storage, the best ratio any tool that reads
# the same bytes could reach against that peer here.
REFS=()
reference() {
    local name=$1 peer_med=$2 cmd=$3 t=() i
    shift 3
    say "[ref] $name: $cmd"
    for ((i = 1; i <= BENCH_RUNS; i++)); do
        prepare_caches "$@"
        run_timed "$LOG_DIR/ref-${name//[^a-z0-9]/_}-$i.log" "$cmd"
        t+=("$SECS")
    done
    local med best
    med=$(median "${t[@]}")
    best=$(awk -v p="$peer_med" -v m="$med" 'BEGIN { if (m > 0) printf "%.2f", p / m; else print "inf" }')
    say "      median $med s; peer/reference: $best"
    REFS+=("$name|$med|$best")
}

# measure_alone NAME CMD [TREES...]: an hpcstage command without a peer (status, report),
# BENCH_RUNS times (ALONE_RUNS, when set) under the same cache policy, each after the
# untimed command ALONE_SETUP when set; sets HPC_MED and HPC_RSS_MAX_KB and adds a row
# whose target is the peak RSS (< 64 MiB).
measure_alone() {
    local name=$1 cmd=$2 t=() i runs=${ALONE_RUNS:-$BENCH_RUNS} setup=${ALONE_SETUP:-}
    shift 2
    ROW=$((ROW + 1))
    HPC_RSS_MAX_KB=0
    say "[$ROW] $name"
    say "      hpcstage: $cmd"
    for ((i = 1; i <= runs; i++)); do
        if [[ -n $setup ]]; then
            bash -o pipefail -c "$setup" >"$LOG_DIR/$ROW-hpc-$i.setup.log" 2>&1 ||
                die "setup failed: $setup (log: $LOG_DIR/$ROW-hpc-$i.setup.log)"
        fi
        prepare_caches "$@"
        run_timed "$LOG_DIR/$ROW-hpc-$i.log" "$cmd"
        t+=("$SECS")
        if ((RSS_KB > HPC_RSS_MAX_KB)); then HPC_RSS_MAX_KB=$RSS_KB; fi
        say "      run $i/$runs: hpcstage $SECS s, $((RSS_KB / 1024)) MiB"
    done
    HPC_MED=$(median "${t[@]}")
    local verdict
    verdict=$(awk -v k="$HPC_RSS_MAX_KB" 'BEGIN { print (k < 64 * 1024) ? "PASS" : "FAIL" }')
    RESULTS+=("$name|$HPC_MED|-|-|peak RSS < 64 MiB|$verdict")
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# --------------------------------------------------------------------------- run

say "run $RUN_ID: scale $BENCH_SCALE, $BENCH_RUNS runs, cache policy: $CACHE, logs in $LOG_DIR"
say "hpcstage: $("$HPC" --version) ($(sha256sum "$HPC" | cut -c1-12)), repo $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"

H='"$HPC" --scratch-root "$SCRATCH_ROOT"'
# The peer skips the tree's own MANIFEST.sha256, as hpcstage does, so both hash the same bytes.
FIND_SUM='find . -type f ! -name MANIFEST.sha256 -print0 | xargs -0 sha256sum'

# 1. manifest create
if want 1; then
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
        # How fast the bytes can be read at all, without hashing: (a) with direct reads,
        # two in flight per file (more did not go faster here); (b) with 32 cat processes
        # at a time, the most parallel read the standard tools offer.
        if [[ $ds == a ]]; then
            reference "read floor (a), dd direct" "$PEER_MED" \
                "for f in \"\$DATA_A\"/*.bin; do dd if=\"\$f\" of=/dev/null bs=8M count=$((A_MIB / 16)) iflag=direct status=none & dd if=\"\$f\" of=/dev/null bs=8M skip=$((A_MIB / 16)) iflag=direct status=none & done; wait" \
                "$DATA_A"
        else
            reference "parallel read (b), xargs -P32 cat" "$PEER_MED" \
                "cd \"\$DATA_B\" && find . -type f -print0 | xargs -0 -P 32 -n 64 cat > /dev/null" \
                "$DATA_B"
        fi
    done
fi

# 2. manifest verify
if want 2; then
    for ds in a b; do
        dir_var=DATA_${ds^^}
        measure "2 manifest verify ($ds)" ratio_ge 6 "sha256sum -c" \
            "" "$H manifest verify \"\$$dir_var\" --no-log" \
            "" "cd \"\$$dir_var\" && sha256sum -c MANIFEST.sha256" \
            "${!dir_var}"
    done
fi

# 3. stage, fresh destinations (4 and 5 use its destinations and timed runs)
if want 3 || want 4 || want 5; then
    measure "3 stage (a) vs cp+sync" time_le 1.5 "cp -a+sync" \
        'rm -rf "$SCRATCH_ROOT/bench/a"' "$H stage \"\$DATA_A\" \"\$SCRATCH_ROOT/bench/a\" --project bench" \
        'rm -rf "$PEER_DIR/cp-a"' 'cp -a "$DATA_A" "$PEER_DIR/cp-a" && sync' \
        "$DATA_A"
    rm -rf "$SCRATCH_ROOT/bench/a" "$PEER_DIR/cp-a"

    measure "3 stage (b) vs rsync" ratio_gt 1 "rsync -a" \
        'set_aside "$SCRATCH_ROOT/bench/b"' "$H stage \"\$DATA_B\" \"\$SCRATCH_ROOT/bench/b\" --project bench" \
        'set_aside "$PEER_DIR/rsync-b"' 'rsync -a "$DATA_B/" "$PEER_DIR/rsync-b/"' \
        "$DATA_B"
    STAGE_B_RSS_KB=$HPC_RSS_MAX_KB
    RSYNC_B_RSS_KB=$PEER_RSS_MAX_KB
fi

# 4. no-op: the destinations left by the last run of 3 (b) are complete and up to date.
if want 4; then
    measure "4 no-op re-stage (b)" ratio_ge 1 "rsync -a" \
        "" "$H stage \"\$DATA_B\" \"\$SCRATCH_ROOT/bench/b\" --project bench" \
        "" 'rsync -a "$DATA_B/" "$PEER_DIR/rsync-b/"' \
        "$DATA_B" "$SCRATCH_ROOT/bench/b" "$PEER_DIR/rsync-b"
    grep -q ' 0 copied' "$LOG_DIR/$ROW-hpc-$BENCH_RUNS.log" ||
        die "the no-op re-stage copied files (log: $LOG_DIR/$ROW-hpc-$BENCH_RUNS.log)"
fi
set_aside "$SCRATCH_ROOT/bench/b" "$PEER_DIR/rsync-b"

# 5. peak memory, from the timed runs of 3 (b)
if want 5; then
    mem_verdict=$(awk -v k="$STAGE_B_RSS_KB" 'BEGIN { print (k < 64 * 1024) ? "PASS" : "FAIL" }')
    RESULTS+=("5 stage (b) peak RSS|$(mib "$STAGE_B_RSS_KB")|$(mib "$RSYNC_B_RSS_KB") (rsync -a)|-|< 64 MiB|$mem_verdict")
fi

# 6. purge-deadline scan of a big scratch tree: `report --scan` against find's timestamp
# listing (what a hand-written purge check would run).
if want 6; then
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
fi

# 7. stage over SSH: dataset (b) pulled from the private sshd on 127.0.0.1 (section "ssh"
# above) by hpcstage (SFTP, default --ssh-sessions), by rsync over ssh and by scp -r (which
# speaks SFTP too since OpenSSH 9.0), every run into an empty destination. The same client
# config, key and default ciphers for all; the data crosses loopback, so encryption and
# per-file round trips are what is measured.
SSH_NOTE=
if want 7; then
    start_sshd
    export SSH_HOME SSH_CFG SSH_KNOWN SSH_ALIAS
    SSH_VERSION=$(ssh -V 2>&1)
    SSH_SESSIONS=$(HOME=$SSH_HOME "$HPC" --scratch-root "$SCRATCH_ROOT" config show --json |
        python3 -c 'import json, sys; print(next(r["value"] + " (" + r["source"] + ")" for r in json.load(sys.stdin) if r["key"] == "ssh.sessions"))') ||
        die "hpcstage config show --json did not give ssh.sessions"
    say "sshd on 127.0.0.1:$SSH_PORT ($SSH_VERSION), user $SSH_USER, alias $SSH_ALIAS in $SSH_CFG, log $SSHD_LOG"
    say "hpcstage SSH sessions: $SSH_SESSIONS"
    SSH_E='ssh -F $SSH_CFG -o UserKnownHostsFile=$SSH_KNOWN -o BatchMode=yes'
    measure "7 ssh stage (b) vs rsync" ratio_gt 1 "rsync -a -e ssh" \
        'set_aside "$SCRATCH_ROOT/bench/ssh-b"' "HOME=\"\$SSH_HOME\" $H stage \"\$SSH_ALIAS:\$DATA_B\" \"\$SCRATCH_ROOT/bench/ssh-b\" --project bench" \
        'set_aside "$PEER_DIR/ssh-rsync-b"' "rsync -a -e \"$SSH_E\" \"\$SSH_ALIAS:\$DATA_B/\" \"\$PEER_DIR/ssh-rsync-b/\"" \
        "$DATA_B"
    # Once, untimed: what was copied is the source (a run that copied nothing is fast too).
    same_tree "$DATA_B" "$SCRATCH_ROOT/bench/ssh-b" hpcstage
    same_tree "$DATA_B" "$PEER_DIR/ssh-rsync-b" rsync
    set_aside "$PEER_DIR/ssh-rsync-b"
    measure "7 ssh stage (b) vs scp -r" ratio_gt 1 "scp -r" \
        'set_aside "$SCRATCH_ROOT/bench/ssh-b"' "HOME=\"\$SSH_HOME\" $H stage \"\$SSH_ALIAS:\$DATA_B\" \"\$SCRATCH_ROOT/bench/ssh-b\" --project bench" \
        'set_aside "$PEER_DIR/ssh-scp-b"' 'scp -F "$SSH_CFG" -o "UserKnownHostsFile=$SSH_KNOWN" -o BatchMode=yes -r -q "$SSH_ALIAS:$DATA_B" "$PEER_DIR/ssh-scp-b"' \
        "$DATA_B"
    same_tree "$DATA_B" "$PEER_DIR/ssh-scp-b" scp
    SSH_NOTE="7: (b) over SSH from a private sshd on 127.0.0.1, $SSH_VERSION; hpcstage SSH sessions: $SSH_SESSIONS; ciphers negotiated: $(ssh_ciphers)"
    say "${SSH_NOTE#7: }"
    stop_sshd
    set_aside "$SCRATCH_ROOT/bench/ssh-b" "$PEER_DIR/ssh-scp-b"
fi

# 8. archive: hpcstage's chunks (hashed as written, each read back from storage and
# compared before it is renamed, then index, manifest and README) against one tar of the
# dataset and a sha256sum of it. Archives are write-protected: made writable to delete.
if want 8; then
    wipe='chmod -R u+w "$OUT_DIR/arch" "$PEER_DIR/tar" 2>/dev/null; rm -rf "$OUT_DIR/arch" "$PEER_DIR/tar"; mkdir -p "$PEER_DIR/tar"'
    for ds in a b; do
        dir_var=DATA_${ds^^}
        measure "8 archive ($ds) vs tar+sha256sum" time_le 1.2 "tar -cf+sha256sum" \
            "$wipe" "$H archive \"\$$dir_var\" --to \"\$OUT_DIR/arch\"" \
            "$wipe" "cd \"\$$dir_var/..\" && tar --format=posix -cf \"\$PEER_DIR/tar/$ds.tar\" $ds && sha256sum \"\$PEER_DIR/tar/$ds.tar\"" \
            "${!dir_var}"
    done
    bash -c "$wipe"
fi

# 9. one file out of a 4-chunk archive: hpcstage reads its bytes with a seek; tar reads the
# chunk that holds it up to the file. Two archives whose fillers differ 4-fold in size,
# the same 16 MiB file f2b.bin after a filler in chunk 2.
gen_fill() {
    local dir=$1 mib=$2 f
    rm -rf "$dir" && mkdir -p "$dir"
    for f in f1 f2 f3 f4; do head -c "$((mib << 20))" /dev/urandom >"$dir/$f.bin"; done
    head -c "$((TARGET_MIB << 20))" /dev/urandom >"$dir/f2b.bin"
}
gen_d() { gen_fill "$1" "$D_MIB"; }
gen_e() { gen_fill "$1" "$E_MIB"; }
if want 9; then
    declare -A RESTORE_HPC RESTORE_TAR
    for ds in d e; do
        mib_var=${ds^^}_MIB
        dir=$DATA/$ds
        ensure_dataset "$ds" "$dir" "4 fillers of ${!mib_var} MiB and f2b.bin of $TARGET_MIB MiB"
        arch=$OUT_DIR/arch-$ds
        chmod -R u+w "$arch" 2>/dev/null || true
        rm -rf "$arch"
        "$HPC" --scratch-root "$SCRATCH_ROOT" archive "$dir" --to "$arch" \
            --chunk-size "$((${!mib_var} + TARGET_MIB + 1))MiB" >"$LOG_DIR/archive-$ds.log" 2>&1 ||
            die "hpcstage archive $dir failed (log: $LOG_DIR/archive-$ds.log)"
        adir=$(echo "$arch"/*/)
        adir=${adir%/}
        nchunks=$(find "$adir" -name 'chunk-*.tar' | wc -l)
        [[ $nchunks == 4 ]] || die "the archive of ($ds) has $nchunks chunks, not 4: $adir"
        chunk=$(awk -F'\t' '$1 == "member" && $10 == "f2b.bin" { print $2 }' "$adir/ARCHIVE-INDEX.tsv")
        [[ $chunk == chunk-00002.tar ]] || die "f2b.bin is in '$chunk', not chunk 2: $adir"
        export ADIR=$adir CHUNK=$chunk DS=$ds
        measure "9 restore 1 file ($ds)" time_le 3 "tar -xf chunk" \
            'rm -rf "$OUT_DIR/restore"' "$H archive restore \"\$ADIR\" --file f2b.bin --to \"\$OUT_DIR/restore\"" \
            'rm -rf "$OUT_DIR/restore-tar"; mkdir -p "$OUT_DIR/restore-tar"' 'tar -xf "$ADIR/$CHUNK" -C "$OUT_DIR/restore-tar" "$DS/f2b.bin"' \
            "$adir"
        cmp -s "$OUT_DIR/restore/f2b.bin" "$dir/f2b.bin" || die "the restored f2b.bin of ($ds) differs"
        cmp -s "$OUT_DIR/restore-tar/$ds/f2b.bin" "$dir/f2b.bin" || die "tar's f2b.bin of ($ds) differs"
        chmod -R u+w "$arch" && rm -rf "$arch" "$OUT_DIR/restore" "$OUT_DIR/restore-tar"
        RESTORE_HPC[$ds]=$HPC_MED
        RESTORE_TAR[$ds]=$PEER_MED
    done
    # The target of the issue: the time of a one-file restore does not grow with the archive.
    grow() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "inf" }'; }
    g_hpc=$(grow "${RESTORE_HPC[d]}" "${RESTORE_HPC[e]}")
    g_tar=$(grow "${RESTORE_TAR[d]}" "${RESTORE_TAR[e]}")
    g_verdict=$(awk -v g="$g_hpc" 'BEGIN { print (g <= 1.5) ? "PASS" : "FAIL" }')
    RESULTS+=("9 restore time (e)/(d)|$g_hpc|$g_tar (tar -xf chunk)|-|hpc (e)/(d) <= 1.5|$g_verdict")
fi

# finished_run TAG NAS_ROOT INPUT PARAM...: a run of template convert on INPUT (local
# executor, no pull-back job, the given -p parameters), its results to go under NAS_ROOT,
# once its job has ended (waited for up to 30 minutes); its id in $OUT_DIR/TAG-run, its
# folder in $OUT_DIR/TAG-run-dir. For the pull rows of 10 and 12.
finished_run() {
    local tag=$1 nas=$2 input=$3 out id state i
    shift 3
    # The previous run of this tag has been measured: its folder goes (a full-scale
    # measurement 10 would otherwise leave about 11 GB of runs on scratch).
    if [[ -s $OUT_DIR/$tag-run-dir ]]; then
        rm -rf "$(cat "$OUT_DIR/$tag-run-dir")"
        rm -f "$OUT_DIR/$tag-run-dir"
    fi
    out=$("$HPC" --scratch-root "$SCRATCH_ROOT" --nas-root "$nas" -q stage-and-run \
        "$input" convert --project bench --executor local --no-pull --json \
        -p threads=1 -p mem=1G "$@") || return 1
    id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["run_id"])' <<<"$out")
    for ((i = 0; i < 9000; i++)); do
        state=$("$HPC" -q status "$id" --json | python3 -c 'import json, sys
v = json.load(sys.stdin)
print(((v["jobs"] or [{}])[0].get("facts") or {}).get("state", ""))')
        [[ $state == COMPLETED || $state == FAILED ]] && break
        sleep 0.2
    done
    [[ $state == COMPLETED ]] || { echo "run $id: job state $state"; return 1; }
    echo "$id" >"$OUT_DIR/$tag-run"
    python3 -c 'import json, sys; print(json.load(sys.stdin)["run_dir"])' <<<"$out" >"$OUT_DIR/$tag-run-dir"
}
export -f finished_run

# 10. stage from S3 (and pull to S3, below): datasets (b) and (l) uploaded once (untimed, with their manifests) to
# the plain bucket of the S3 test server, then fetched by hpcstage (verifying), rclone copy
# and aws s3 sync, every run into an empty destination.
S3_NOTE=
L_MIB=128
[[ $BENCH_SCALE == small ]] && L_MIB=16
gen_l() {
    local i
    rm -rf "$1" && mkdir -p "$1"
    for i in 1 2; do head -c "$((L_MIB << 20))" /dev/urandom >"$1/large$i.bin"; done
}
export DATA_L=$DATA/l
# The S3 test server (for 10 and 11), started once; its variables sourced.
s3_up() {
    [[ -z ${S3_BASE:-} ]] || return 0
    [[ $(id -u) -eq 0 ]] || die "measurements 10 and 11 start the S3 test server (tests/s3/up.sh) and need root"
    bash "$REPO/tests/s3/up.sh" >"$LOG_DIR/s3-up.log" 2>&1 ||
        die "the S3 test server did not start (log: $LOG_DIR/s3-up.log)"
    # shellcheck source=/dev/null
    source "$REPO/tests/s3/env.sh"
    export BENCH_SCALE S3_BASE="s3://$HPCSTAGE_S3_BUCKET/bench-$BENCH_SCALE"
    S3_NOTE="10, 11: Ceph RadosGW on $HPCSTAGE_S3_ENDPOINT (memstore OSD); $(rclone version 2>/dev/null | head -n 1); $("$HPCSTAGE_S3_AWS" --version 2>&1)"
}
if want 10; then
    s3_up
    ensure_dataset b "$DATA_B" "$B_FILES files of $B_KIB KiB in $B_DIRS folders"
    ensure_dataset l "$DATA_L" "2 files of $L_MIB MiB"
    for x in b l; do
        src=$DATA_B
        [[ $x == l ]] && src=$DATA_L
        "$HPCSTAGE_S3_AWS" s3 sync --quiet --delete --exclude '.hpcstage/*' "$src" "$S3_BASE/$x" \
            >"$LOG_DIR/s3-upload-$x.log" 2>&1 || die "upload of ($x) to $S3_BASE/$x failed (log: $LOG_DIR/s3-upload-$x.log)"
    done
    for x in b l; do
        src=$DATA_B
        [[ $x == l ]] && src=$DATA_L
        measure "10 s3 stage ($x) vs rclone" ratio_ge 1 "rclone copy" \
            "set_aside \"\$SCRATCH_ROOT/bench/s3-$x\"" "$H stage \"\$S3_BASE/$x\" \"\$SCRATCH_ROOT/bench/s3-$x\" --project bench" \
            "set_aside \"\$PEER_DIR/s3-rclone-$x\"" "rclone copy \"hpcs3:\$HPCSTAGE_S3_BUCKET/bench-\$BENCH_SCALE/$x\" \"\$PEER_DIR/s3-rclone-$x\""
        same_tree "$src" "$SCRATCH_ROOT/bench/s3-$x" hpcstage
        same_tree "$src" "$PEER_DIR/s3-rclone-$x" rclone
        set_aside "$PEER_DIR/s3-rclone-$x"
        measure "10 s3 stage ($x) vs aws s3 sync" ratio_ge 1 "aws s3 sync" \
            "set_aside \"\$SCRATCH_ROOT/bench/s3-$x\"" "$H stage \"\$S3_BASE/$x\" \"\$SCRATCH_ROOT/bench/s3-$x\" --project bench" \
            "set_aside \"\$PEER_DIR/s3-aws-$x\"" "\"\$HPCSTAGE_S3_AWS\" s3 sync --quiet \"\$S3_BASE/$x\" \"\$PEER_DIR/s3-aws-$x\""
        same_tree "$src" "$PEER_DIR/s3-aws-$x" "aws s3 sync"
        set_aside "$SCRATCH_ROOT/bench/s3-$x" "$PEER_DIR/s3-aws-$x"
    done
    # Pull to S3: a fresh run before each timed pull (untimed); each tool writes a fresh
    # prefix, emptied before the next run (the server keeps its objects in memory).
    gen_m() {
        local i
        rm -rf "$1" && mkdir -p "$1"
        for i in 1 2; do
            { printf 'II*\0'; head -c "$(((L_MIB << 20) - 4))" /dev/urandom; } >"$1/large$i.czi"
        done
    }
    export DATA_M=$DATA/m
    ensure_dataset m "$DATA_M" "2 files of $L_MIB MiB, TIFF magic, .czi"
    export S3_PULL="$S3_BASE/pull"
    # pull_run_prepare: the prefixes emptied, then a run of (m) whose job has ended; its id
    # in $OUT_DIR/pull-run, its folder in $OUT_DIR/pull-run-dir.
    pull_run_prepare() {
        "$HPCSTAGE_S3_AWS" s3 rm --recursive --quiet "$S3_PULL" >/dev/null 2>&1
        finished_run pull "$S3_PULL/nas" "$DATA_M" -p format=ome-tiff -p 'converter=cp {input} {output}'
    }
    export -f pull_run_prepare
    PEER_EXCLUDE_RCLONE="--exclude '.hpcstage/**' --exclude 'work/**' --exclude 'pull.sbatch'"
    measure "10 s3 pull (m) vs rclone" ratio_ge 1 "rclone copy" \
        "pull_run_prepare" "$H pull \"\$(cat \"\$OUT_DIR/pull-run\")\"" \
        "pull_run_prepare" "rclone copy $PEER_EXCLUDE_RCLONE \"\$(cat \"\$OUT_DIR/pull-run-dir\")\" \"hpcs3:\$HPCSTAGE_S3_BUCKET/bench-\$BENCH_SCALE/pull/rclone\""
    measure "10 s3 pull (m) vs aws s3 sync" ratio_ge 1 "aws s3 sync" \
        "pull_run_prepare" "$H pull \"\$(cat \"\$OUT_DIR/pull-run\")\"" \
        "pull_run_prepare" "\"\$HPCSTAGE_S3_AWS\" s3 sync --quiet --exclude '.hpcstage/*' --exclude 'work/*' --exclude pull.sbatch \"\$(cat \"\$OUT_DIR/pull-run-dir\")\" \"\$S3_PULL/aws\""
    # One more pull, checked: its manifest lists each output with the digest of its source.
    (pull_run_prepare && "$HPC" --scratch-root "$SCRATCH_ROOT" -q pull "$(cat "$OUT_DIR/pull-run")") \
        >"$LOG_DIR/pull-check.log" 2>&1 || die "the checked pull failed (log: $LOG_DIR/pull-check.log)"
    pulled_manifest=$OUT_DIR/pull-manifest.sha256
    "$HPCSTAGE_S3_AWS" s3 cp --quiet \
        "$S3_PULL/nas/bench/results/conversion/$(cat "$OUT_DIR/pull-run")/MANIFEST.sha256" "$pulled_manifest" ||
        die "the pulled results have no MANIFEST.sha256"
    for i in 1 2; do
        sum=$(sha256sum "$DATA_M/large$i.czi" | cut -c1-64)
        grep -qx "$sum  converted/large$i.ome.tif" "$pulled_manifest" ||
            die "the pulled manifest $pulled_manifest does not list large$i.ome.tif with the digest of its source"
    done
    say "      checked: the pulled manifest lists each output with its source's SHA-256"
    # The server keeps its objects in memory (memstore, about 4 GiB): they go again.
    "$HPCSTAGE_S3_AWS" s3 rm --recursive --quiet "$S3_BASE" >/dev/null 2>&1 ||
        say "could not remove $S3_BASE from the S3 test server"
fi

# 11. archive to S3: hpcstage's chunks (each a multipart upload read back with a GET and
# compared before it counts) against one tar streamed to the bucket with its sha256sum.
# Both write to the plain bucket (no Object Lock), emptied before every run. The server
# keeps objects in memory (memstore, 4 GiB) and frees deleted ones only when its garbage
# collector runs (after a minute or more): `gc process` frees them at once, else a few
# runs of (l) fill it and every later write fails.
s3_empty() {
    "$HPCSTAGE_S3_AWS" s3 rm --recursive --quiet "$1" >/dev/null 2>&1 || true
    timeout 120 radosgw-admin gc process --include-all >/dev/null 2>&1 ||
        say "radosgw-admin gc process failed: deleted objects are freed later"
}
export -f s3_empty say
if want 11; then
    s3_up
    ensure_dataset l "$DATA_L" "2 files of $L_MIB MiB"
    mkdir -p "$PEER_DIR/s3tar"
    measure "11 s3 archive (l)" time_le 2 "tar + aws s3 cp -" \
        's3_empty "$S3_BASE-arch"' "$H archive \"\$DATA_L\" --to \"\$S3_BASE-arch\"" \
        's3_empty "$S3_BASE-tar"' 'cd "$DATA_L/.." && tar --format=posix -cf - l | tee >(sha256sum >"$PEER_DIR/s3tar/l.tar.sha256") | "$HPCSTAGE_S3_AWS" s3 cp --quiet - "$S3_BASE-tar/l.tar"' \
        "$DATA_L"
    s3_empty "$S3_BASE-arch"
    s3_empty "$S3_BASE-tar"
fi

# 12. scale: the same tiny-file tree at 10^4, 10^5 (and 10^6) files. Stage fresh and
# no-op against rsync -a, then status and report --scan on the staged copy (no peer: rsync
# has no purge deadlines). Peak RSS per command and size goes to SCALE_RSS, printed as a
# table with the RSS per file: flat memory means the same MiB at every size.
SCALE_RSS=()   # rows: files|stage fresh KiB|no-op KiB|one touched KiB|dry-run KiB|ingest KiB|status KiB|report KiB|pull KiB|status RUN KiB|clean --dry-run KiB|clean KiB|rsync fresh KiB|rsync no-op KiB
# (scale-run): the input of the run of the pull row, one small .czi file; the job's output
# is a copy of the scale tree of the row's size, as an OME-Zarr store (with .zgroup): its
# n chunks, without the tree's own MANIFEST.sha256 (107 MB at 10^6, which would measure
# the fixed 32 MiB of blocks a file of 8 MiB or more takes while it is copied, not what
# the number of files costs).
gen_scalerun() {
    rm -rf "$1" && mkdir -p "$1"
    printf 'II*\0' >"$1/plate.czi"
}
scale_run_prepare() {
    rm -rf "$SCALE_PULL_NAS"
    if [[ -s $OUT_DIR/scale-run-dir ]]; then rm -rf "$(cat "$OUT_DIR/scale-run-dir")"; fi
    finished_run scale "$SCALE_PULL_NAS" "$SCALE_RUN_INPUT" -p format=ome-zarr \
        -p "converter=sh -c 'cp -r \"\$1\" \"\$2\" && rm \"\$2/MANIFEST.sha256\" && : >\"\$2/.zgroup\"' sh $SCALE_SRC {output}"
}
export -f scale_run_prepare
if want 12; then
    export SCALE_RUN_INPUT=$DATA/scale-run
    ensure_dataset scalerun "$SCALE_RUN_INPUT" "one .czi file"
    for n in "${SCALE_SIZES[@]}"; do
        p="10^$((${#n} - 1))" # the row's label: 10^4, 10^5, 10^6
        export SCALE_N=$n SCALE_SRC=$DATA/scale-$n
        ensure_dataset scale "$SCALE_SRC" "$n tiny files in folders of 1000"
        export SCALE_DEST=$SCRATCH_ROOT/bench/scale-$n SCALE_PEER=$PEER_DIR/rsync-scale-$n
        measure "12 $p stage" ratio_gt 1 "rsync -a" \
            'set_aside "$SCALE_DEST"' "$H stage \"\$SCALE_SRC\" \"\$SCALE_DEST\" --project bench" \
            'set_aside "$SCALE_PEER"' 'rsync -a "$SCALE_SRC/" "$SCALE_PEER/"' \
            "$SCALE_SRC"
        fresh_kb=$HPC_RSS_MAX_KB rsync_kb=$PEER_RSS_MAX_KB
        measure "12 $p no-op" ratio_ge 1 "rsync -a" \
            "" "$H stage \"\$SCALE_SRC\" \"\$SCALE_DEST\" --project bench" \
            "" 'rsync -a "$SCALE_SRC/" "$SCALE_PEER/"' \
            "$SCALE_SRC" "$SCALE_DEST" "$SCALE_PEER"
        grep -q ' 0 copied' "$LOG_DIR/$ROW-hpc-$BENCH_RUNS.log" ||
            die "the no-op re-stage of $n files copied files (log: $LOG_DIR/$ROW-hpc-$BENCH_RUNS.log)"
        noop_kb=$HPC_RSS_MAX_KB rsync_noop_kb=$PEER_RSS_MAX_KB
        # One source file touched (same bytes, new mtime): both copy it again.
        SCALE_ONE=$SCALE_SRC/d00000/c0000000
        export SCALE_ONE
        measure "12 $p one touched" ratio_ge 1 "rsync -a" \
            'touch "$SCALE_ONE"' "$H stage \"\$SCALE_SRC\" \"\$SCALE_DEST\" --project bench" \
            'touch "$SCALE_ONE"' 'rsync -a "$SCALE_SRC/" "$SCALE_PEER/"' \
            "$SCALE_SRC" "$SCALE_DEST" "$SCALE_PEER"
        grep -q ' 1 copied' "$LOG_DIR/$ROW-hpc-$BENCH_RUNS.log" ||
            die "the re-stage of $n files after one was touched did not copy exactly one (log: $LOG_DIR/$ROW-hpc-$BENCH_RUNS.log)"
        one_kb=$HPC_RSS_MAX_KB
        export SCALE_DRY=$SCRATCH_ROOT/bench/scale-dry-$n
        set_aside "$SCALE_DRY"
        measure_alone "12 $p stage --dry-run" \
            "$H stage \"\$SCALE_SRC\" \"\$SCALE_DRY\" --project bench --dry-run > /dev/null" "$SCALE_SRC"
        dry_kb=$HPC_RSS_MAX_KB
        export SCALE_NAS=$SCRATCH_ROOT/bench/scale-nas-$n
        measure "12 $p ingest" ratio_gt 0 "rsync -a" \
            'set_aside "$SCALE_NAS"' "$H --nas-root \"\$SCALE_NAS\" ingest \"\$SCALE_SRC\" --project bench --dataset scale" \
            'set_aside "$SCALE_PEER"' 'rsync -a "$SCALE_SRC/" "$SCALE_PEER/"' \
            "$SCALE_SRC"
        ingest_kb=$HPC_RSS_MAX_KB
        set_aside "$SCALE_NAS"
        measure_alone "12 $p status" "$H status > /dev/null" "$SCALE_DEST"
        status_kb=$HPC_RSS_MAX_KB
        measure_alone "12 $p report --scan" \
            "$H report --all --scan \"\$SCALE_DEST\" --format json > /dev/null" "$SCALE_DEST"
        report_kb=$HPC_RSS_MAX_KB
        # Pull of a run whose output is one OME-Zarr store of n files (a copy of the tree,
        # made by the job with cp -r): outputs checked, copied to a local NAS, verified,
        # manifest, README, run.json. A fresh run before each timed pull (untimed).
        export SCALE_PULL_NAS=$SCRATCH_ROOT/bench/scale-pull-nas-$n
        ALONE_RUNS=1 ALONE_SETUP='scale_run_prepare' measure_alone "12 $p pull" \
            "$H pull \"\$(cat \"\$OUT_DIR/scale-run\")\" > /dev/null"
        pull_kb=$HPC_RSS_MAX_KB
        measure_alone "12 $p status RUN" "$H status \"\$(cat \"\$OUT_DIR/scale-run\")\" > /dev/null"
        status_run_kb=$HPC_RSS_MAX_KB
        pulled=$SCALE_PULL_NAS/bench/results/conversion/$(cat "$OUT_DIR/scale-run")/MANIFEST.sha256
        (($(wc -l <"$pulled") > n)) || die "the pulled results of $n outputs list fewer files ($pulled)"
        # The run and its results go before the clean rows (a million files each).
        rm -rf "$SCALE_PULL_NAS" "$(cat "$OUT_DIR/scale-run-dir")"
        # Clean: the staged copy is safe (its source's manifest lists every file with the
        # same checksum), so a dry run decides to remove it and the real clean (timed once)
        # removes it.
        measure_alone "12 $p clean --dry-run" \
            "$H clean --dry-run bench/scale-$n > /dev/null" "$SCALE_DEST"
        clean_dry_kb=$HPC_RSS_MAX_KB
        ALONE_RUNS=1 measure_alone "12 $p clean" "$H clean bench/scale-$n > /dev/null" "$SCALE_DEST"
        clean_kb=$HPC_RSS_MAX_KB
        [[ ! -e $SCALE_DEST ]] || die "clean left the safe copy $SCALE_DEST"
        SCALE_RSS+=("$n|$fresh_kb|$noop_kb|$one_kb|$dry_kb|$ingest_kb|$status_kb|$report_kb|$pull_kb|$status_run_kb|$clean_dry_kb|$clean_kb|$rsync_kb|$rsync_noop_kb")
        # The trees of this size are deleted before the next one (untimed): at 10^6 each
        # holds a million inodes and about 4 GiB.
        rm -rf "$SCALE_PEER" "$TRASH"
    done
fi

# --------------------------------------------------------------------------- report

{
    echo
    echo "hpcstage benchmark, scale $BENCH_SCALE: (a) $A_FILES x $A_MIB MiB, (b) $B_FILES x $B_KIB KiB in $B_DIRS folders, (c) $C_FILES files in $C_DIRS folders"
    echo "median of $BENCH_RUNS runs; ratio = peer / hpcstage (> 1: hpcstage faster)"
    if [[ -n ${BENCH_ONLY// /} ]]; then echo "only measurements $BENCH_ONLY (BENCH_ONLY): not a full report"; fi
    if [[ $CACHE == cold ]]; then
        echo "cache policy: cold for both (sync; echo 3 > /proc/sys/vm/drop_caches before every timed run)"
    else
        echo "cache policy: WARM for both (caches could not be dropped here, or BENCH_CACHE=warm): input read once before every timed run"
    fi
    if [[ -n $SSH_NOTE ]]; then echo "$SSH_NOTE"; fi
    if [[ -n $S3_NOTE ]]; then echo "$S3_NOTE"; fi
    echo
    printf '%-26s %-16s %-26s %-7s %-24s %s\n' measurement "hpcstage med s" "peer med s" ratio target result
    for row in "${RESULTS[@]}"; do
        IFS='|' read -r n h p r t v <<<"$row"
        printf '%-26s %-16s %-26s %-7s %-24s %s\n' "$n" "$h" "$p" "$r" "$t" "$v"
    done
    if ((${#SCALE_RSS[@]})); then
        echo
        echo "12: peak RSS by tree size, MiB (bytes per file); flat memory: the same MiB at every size"
        printf '  %-8s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %s\n' files "stage fresh" "stage no-op" "stage one touched" "stage --dry-run" ingest status "report --scan" pull "status RUN" "clean --dry-run" clean "rsync -a fresh" "rsync -a no-op"
        for row in "${SCALE_RSS[@]}"; do
            IFS='|' read -r n cols <<<"$row"
            IFS='|' read -r -a kbs <<<"$cols"
            cells=()
            for kb in "${kbs[@]}"; do
                cells+=("$(awk -v k="$kb" -v n="$n" 'BEGIN { printf "%.1f (%.0f B/f)", k / 1024, k * 1024 / n }')")
            done
            printf '  %-8s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %-19s %s\n' "$n" "${cells[@]}"
        done
    fi
    if ((${#REFS[@]})); then
        echo
        echo "reference, no target: the same bytes read without hashing (median s), and the row's"
        echo "peer time over it; where the reference is the storage's floor, no tool that reads the"
        echo "bytes gets a better ratio than that"
        for row in "${REFS[@]}"; do
            IFS='|' read -r n m b <<<"$row"
            printf '  %-36s %-8s peer/ref %s\n' "$n" "$m" "$b"
        done
    fi
} | tee "$LOG_DIR/summary.txt"
fails=$(printf '%s\n' "${RESULTS[@]}" | grep -c '|FAIL$' || true)
echo
echo "$((${#RESULTS[@]} - fails)) of ${#RESULTS[@]} targets met; logs and summary in $LOG_DIR"
exit 0
