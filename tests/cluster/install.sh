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

# shellcheck source=SCRIPTDIR/../lib/daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/daemons.sh"

mapfile -t missing < <(missing_packages "${PACKAGES[@]}")

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install.sh: all packages already installed"
  exit 0
fi

echo "install.sh: installing ${missing[*]}"
# Maintainer scripts would try to start munge/mariadb/slurm; up.sh starts them itself.
apt_install_quietly "${missing[@]}"
echo "install.sh: done"
