# shellcheck shell=bash
# env.sh - source this to talk to the S3 test server (Ceph RadosGW) started by up.sh.
#
# Why: the S3 tests, the benchmark and up.sh/down.sh themselves need one place
# that names the endpoint, the fixed test credentials, the buckets and the state
# paths. Sourcing it does not start anything and does not change the caller's
# shell options. The keys are test-only values, valid only on this local server.
#
#   . tests/s3/env.sh
#   aws s3 ls "s3://$HPCSTAGE_S3_BUCKET"          # AWS CLI (on PATH after sourcing)
#   rclone lsf "hpcs3:$HPCSTAGE_S3_LOCKED_BUCKET"  # rclone remote from the RCLONE_CONFIG_* names
#
# Exports:
#   HPCSTAGE_S3_DIR            private state folder (default /var/tmp/hpcstage-s3)
#   HPCSTAGE_S3_TOOLS_DIR      where install.sh puts the AWS CLI (default /opt/hpcstage-s3-tools)
#   HPCSTAGE_S3_PORT           radosgw's port on 127.0.0.1 (default 7480)
#   HPCSTAGE_S3_MON_PORT       the Ceph monitor's port on 127.0.0.1 (default 3300)
#   HPCSTAGE_S3_ENDPOINT       http://127.0.0.1:$HPCSTAGE_S3_PORT (path-style, no TLS)
#   HPCSTAGE_S3_REGION         us-east-1 (RGW accepts it in SigV4 scopes)
#   HPCSTAGE_S3_USER           the RGW user that owns the keys (hpcstage-test)
#   HPCSTAGE_S3_ACCESS_KEY     fixed test access key
#   HPCSTAGE_S3_SECRET_KEY     fixed test secret key
#   HPCSTAGE_S3_BUCKET         bucket WITHOUT Object Lock (hpcstage-plain)
#   HPCSTAGE_S3_LOCKED_BUCKET  bucket WITH Object Lock, so versioned (hpcstage-locked)
#   HPCSTAGE_S3_AWS            the AWS CLI binary
#   CEPH_CONF                  the generated ceph.conf (for ceph, rados, radosgw-admin)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION
#                              the same values, for the AWS CLI and SDKs
#   AWS_REQUEST_CHECKSUM_CALCULATION=when_required, AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
#                              SDKs then add no CRC checksums of their own: RGW 16 ignores
#                              checksum headers and rejects checksum trailers (see README.md)
#   AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE
#                              /dev/null, so a developer's ~/.aws cannot change the tests
#                              (and AWS_PROFILE, AWS_SESSION_TOKEN, AWS_CA_BUNDLE are unset)
#   RCLONE_CONFIG_HPCS3_*      an rclone remote named `hpcs3` for this server
# and puts $HPCSTAGE_S3_TOOLS_DIR/bin (holding only `aws`) first on PATH.

export HPCSTAGE_S3_DIR="${HPCSTAGE_S3_DIR:-/var/tmp/hpcstage-s3}"
export HPCSTAGE_S3_TOOLS_DIR="${HPCSTAGE_S3_TOOLS_DIR:-/opt/hpcstage-s3-tools}"
export HPCSTAGE_S3_PORT="${HPCSTAGE_S3_PORT:-7480}"
export HPCSTAGE_S3_MON_PORT="${HPCSTAGE_S3_MON_PORT:-3300}"
export HPCSTAGE_S3_ENDPOINT="http://127.0.0.1:$HPCSTAGE_S3_PORT"
export HPCSTAGE_S3_REGION=us-east-1
export HPCSTAGE_S3_USER=hpcstage-test
export HPCSTAGE_S3_ACCESS_KEY=HPCSTAGETESTACCESSK0
export HPCSTAGE_S3_SECRET_KEY=hpcstage-test-only-secret-key-0123456789
export HPCSTAGE_S3_BUCKET=hpcstage-plain
export HPCSTAGE_S3_LOCKED_BUCKET=hpcstage-locked
export HPCSTAGE_S3_AWS="$HPCSTAGE_S3_TOOLS_DIR/bin/aws"
export CEPH_CONF="$HPCSTAGE_S3_DIR/etc/ceph.conf"

export AWS_ACCESS_KEY_ID="$HPCSTAGE_S3_ACCESS_KEY"
export AWS_SECRET_ACCESS_KEY="$HPCSTAGE_S3_SECRET_KEY"
export AWS_ENDPOINT_URL="$HPCSTAGE_S3_ENDPOINT"
export AWS_REGION="$HPCSTAGE_S3_REGION"
export AWS_DEFAULT_REGION="$HPCSTAGE_S3_REGION"
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
export AWS_CONFIG_FILE=/dev/null
export AWS_SHARED_CREDENTIALS_FILE=/dev/null
# The endpoint is plain HTTP. A machine-wide AWS_CA_BUNDLE is of no use to it
# and makes rclone fail ("LoadCustomCABundleError ... unsupported transport").
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_CA_BUNDLE

export RCLONE_CONFIG_HPCS3_TYPE=s3
export RCLONE_CONFIG_HPCS3_PROVIDER=Ceph
export RCLONE_CONFIG_HPCS3_ENDPOINT="$HPCSTAGE_S3_ENDPOINT"
export RCLONE_CONFIG_HPCS3_REGION="$HPCSTAGE_S3_REGION"
export RCLONE_CONFIG_HPCS3_ACCESS_KEY_ID="$HPCSTAGE_S3_ACCESS_KEY"
export RCLONE_CONFIG_HPCS3_SECRET_ACCESS_KEY="$HPCSTAGE_S3_SECRET_KEY"
export RCLONE_CONFIG_HPCS3_FORCE_PATH_STYLE=true

case ":$PATH:" in
  *":$HPCSTAGE_S3_TOOLS_DIR/bin:"*) ;;
  *) export PATH="$HPCSTAGE_S3_TOOLS_DIR/bin:$PATH" ;;
esac
