# shellcheck shell=bash
# env.sh - source this to talk to the test cluster started by up.sh.
#
# Why: integration tests (and up.sh/down.sh themselves) need one place that
# names the cluster's config and state paths. Sourcing it does not start
# anything and does not change the caller's shell options.
#
#   . tests/cluster/env.sh
#   sbatch -p gpu --gres=gpu:1 --wrap hostname
#
# Exports:
#   SLURM_CONF                   /etc/slurm/slurm.conf (the generated config; the
#                                daemons and client tools also find it there by
#                                default, so exporting it is belt and braces)
#   HPCSTAGE_CLUSTER_DIR         private state folder (default /var/tmp/hpcstage-cluster)
#   HPCSTAGE_CLUSTER_NAME        Slurm ClusterName (hpcstage)
#   HPCSTAGE_CLUSTER_NODE        the compute node (localhost): partitions debug, gpu
#   HPCSTAGE_CLUSTER_TRANSFER_NODES  the transfer nodes, "xfer1 xfer2 xfer3": partition
#                                transfer; each its own slurmd on this machine (own port)
#   HPCSTAGE_CLUSTER_NODES       every node: "localhost xfer1 xfer2 xfer3"
#   HPCSTAGE_CLUSTER_ACCOUNT     accounting account every user is in (lab)
#   HPCSTAGE_CLUSTER_PARTITIONS  "debug gpu transfer" (debug is the default)
#   HPCSTAGE_CLUSTER_GPUS        GPUs (gres gpu) on the node: 2
#   HPCSTAGE_CLUSTER_DB_PORT     MariaDB TCP port on 127.0.0.1 (default 3306)
#   HPCSTAGE_CLUSTER_DB_SOCKET   MariaDB unix socket (root can run
#                                `mariadb --socket="$HPCSTAGE_CLUSTER_DB_SOCKET"`)

export HPCSTAGE_CLUSTER_DIR="${HPCSTAGE_CLUSTER_DIR:-/var/tmp/hpcstage-cluster}"
export HPCSTAGE_CLUSTER_NAME=hpcstage
export HPCSTAGE_CLUSTER_NODE=localhost
export HPCSTAGE_CLUSTER_TRANSFER_NODES="xfer1 xfer2 xfer3"
export HPCSTAGE_CLUSTER_NODES="$HPCSTAGE_CLUSTER_NODE $HPCSTAGE_CLUSTER_TRANSFER_NODES"
export HPCSTAGE_CLUSTER_ACCOUNT=lab
export HPCSTAGE_CLUSTER_PARTITIONS="debug gpu transfer"
export HPCSTAGE_CLUSTER_GPUS=2
export HPCSTAGE_CLUSTER_DB_PORT="${HPCSTAGE_CLUSTER_DB_PORT:-3306}"
export HPCSTAGE_CLUSTER_DB_SOCKET="$HPCSTAGE_CLUSTER_DIR/run/mysqld/mysqld.sock"
export SLURM_CONF=/etc/slurm/slurm.conf
