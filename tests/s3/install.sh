#!/usr/bin/env bash
# install.sh - install what the S3 test server (Ceph RadosGW) and its checks need.
#
# Why: the S3 backend is tested against a real S3 server: Ceph RadosGW 16 from
# Debian's own packages, with one monitor and one in-memory OSD. CI machines
# start fresh, with no stdin, so every package must be installed by this script
# and nothing may prompt. The checks and the benchmark also need two S3 clients:
# `rclone` (Debian) and the AWS CLI (`awscli` from PyPI, in a virtualenv under a
# fixed folder, with a pinned version so that a new botocore cannot change what
# the tests see). Reruns are fast: apt and pip are skipped when all is present.
#
# Usage: tests/s3/install.sh   (as root; Debian 12)
#
# Environment:
#   HPCSTAGE_S3_TOOLS_DIR  where the AWS CLI virtualenv lives (default /opt/hpcstage-s3-tools)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/env.sh
. "$HERE/env.sh"

# Installed with --no-install-recommends (the recommends pull in the dashboard,
# the mds and more, none of which a single-node RGW needs).
PACKAGES=(
  radosgw ceph-mon ceph-osd # pulls ceph-common (ceph, ceph-authtool, monmaptool, radosgw-admin)
  rclone                    # S3 peer for the benchmark
  python3-venv              # the AWS CLI's virtualenv
  curl                      # up.sh's readiness probe
  procps                    # pgrep/ps used by up.sh and down.sh
  util-linux                # flock
  coreutils
)
# Pinned: botocore's defaults change between releases (since 1.36 it sends
# CRC32 checksums on every upload unless told not to; see README.md).
AWSCLI_VERSION=1.46.2

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi

# shellcheck source=SCRIPTDIR/../lib/daemons.sh
. "$HERE/../lib/daemons.sh"

mapfile -t missing < <(missing_packages "${PACKAGES[@]}")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install.sh: installing ${missing[*]}"
  # Maintainer scripts would try to start ceph services; up.sh starts the daemons itself.
  apt_install_quietly "${missing[@]}"
fi

venv="$HPCSTAGE_S3_TOOLS_DIR/awscli"
if [[ $("$venv/bin/aws" --version 2>&1) != "aws-cli/$AWSCLI_VERSION "* ]]; then
  echo "install.sh: installing awscli==$AWSCLI_VERSION into $venv"
  rm -rf -- "$venv"
  mkdir -p "$HPCSTAGE_S3_TOOLS_DIR"
  # Debian's python, not whatever python3 is first on PATH: the venv must not
  # depend on a per-user interpreter.
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "awscli==$AWSCLI_VERSION"
  "$venv/bin/aws" --version
fi
# Only `aws` goes on PATH (env.sh adds this folder), not the venv's python or pip.
mkdir -p "$HPCSTAGE_S3_TOOLS_DIR/bin"
ln -sfn ../awscli/bin/aws "$HPCSTAGE_S3_TOOLS_DIR/bin/aws"
echo "install.sh: all packages installed"
