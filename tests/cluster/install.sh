#!/usr/bin/env bash
# install.sh - install the Debian packages a single-node SLURM test cluster needs.
#
# Why: integration tests run against a real slurmctld/slurmd/slurmdbd with
# MariaDB-backed accounting. CI machines start fresh, with no stdin, so every
# package must be installed by this script and nothing may prompt. Reruns are
# fast: apt is skipped entirely when `dpkg -s` says everything is present.
#
# Usage: tests/cluster/install.sh   (as root; Debian 12)
set -euo pipefail

PACKAGES=(
  slurmctld slurmd slurm-client slurmdbd
  munge
  mariadb-server mariadb-client
  procps            # pgrep/pkill/ps used by up.sh and down.sh
  util-linux        # runuser
  passwd            # useradd
  coreutils
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install.sh: must run as root" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg -s succeeds for removed-but-configured packages too, so check Status.
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install.sh: all packages already installed"
  exit 0
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# Package maintainer scripts would try to start munge/mariadb/slurm as system
# services; up.sh starts them itself. Block service starts for the duration of
# the install unless a policy already exists (Docker images ship one).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() {
  if [[ $created_policy -eq 1 ]]; then
    rm -f "$policy"
  fi
}
trap cleanup EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" </dev/null
echo "install.sh: done"
