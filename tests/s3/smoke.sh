#!/usr/bin/env bash
# smoke.sh - prove the S3 server started by up.sh behaves as the S3 backend expects.
#
# Why: a green up.sh only says that radosgw answers. This runs the S3 calls the
# storage layer relies on, with the AWS CLI, against the real server: objects
# round-trip byte for byte, multipart uploads (8 MiB parts with Content-MD5)
# give the expected ETag, a wrong Content-MD5 is rejected, Object Lock retention
# is applied and enforced, a bucket quota stops uploads, wrong credentials are
# refused, and no multipart upload is left behind. The checks named "fact:"
# pin down RGW 16 behaviours that README.md documents (x-amz-checksum-sha256
# ignored, lock headers on CreateMultipartUpload ignored, ...): if the server
# ever changes, they fail and README.md must be updated with the new facts.
#
# Usage (as root, after tests/s3/up.sh): tests/s3/smoke.sh
# Prints one line per check and `smoke: N passed, N failed`; exits 1 on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
. "$HERE/lib.sh"

if [[ $(curl -s -o /dev/null -m 5 -w '%{http_code}' "$HPCSTAGE_S3_ENDPOINT/" || true) != 200 ]]; then
  echo "smoke.sh: no S3 server answers on $HPCSTAGE_S3_ENDPOINT; start it with tests/s3/up.sh" >&2
  echo "smoke: 0 passed, 1 failed"
  exit 1
fi

B="$HPCSTAGE_S3_BUCKET"
L="$HPCSTAGE_S3_LOCKED_BUCKET"
RUN="smoke-$(date +%s)-$$"
Q="hpcstage-smoke-quota-$$"
WORK=$(mktemp -d /tmp/hpcstage-s3-smoke.XXXXXX)
MIB=$((1024 * 1024))

passed=0
failed=0
ok() {
  echo "ok   $1"
  passed=$((passed + 1))
}
bad() {
  echo "FAIL $1: $2"
  failed=$((failed + 1))
}

aws() { "$HPCSTAGE_S3_AWS" "$@"; }
md5_b64() { openssl dgst -md5 -binary "$1" | base64; }
md5_hex() { md5sum "$1" | cut -d' ' -f1; }
in_hours() { date -u -d "+$1 hours" +%Y-%m-%dT%H:%M:%SZ; }

# s3_error ARGS...: run `aws ARGS` and print "STATUS CODE" of its failed
# request (e.g. "403 AccessDenied"), or "ok" if it succeeded. The CLI's own
# message is no help here: for RGW's empty <Message/> it prints only
# "argument of type 'NoneType' is not iterable", so the status and the code
# are read from its --debug log.
s3_error() {
  local log="$WORK/debug.log" status code
  if aws --debug "$@" >"$WORK/debug.out" 2>"$log"; then
    echo ok
    return
  fi
  status=$(grep -oE 'HTTP/1\.1" [0-9]{3} ' "$log" | tail -n 1 | grep -oE '[0-9]{3}' || true)
  code=$(grep -oE '<Code>[^<]*</Code>' "$log" | tail -n 1 | sed -E 's/<\/?Code>//g' || true)
  echo "${status:-none} ${code:--}"
}

# expect_error NAME "STATUS CODE" ARGS...
expect_error() {
  local name=$1 want=$2 got
  shift 2
  got=$(s3_error "$@")
  if [[ $got == "$want" ]]; then
    ok "$name ($got)"
  else
    bad "$name" "want '$want', got '$got' from: aws $*"
  fi
}

cleanup() {
  local k v
  aws s3 rm --quiet --recursive "s3://$B/$RUN/" >/dev/null 2>&1 || true
  # Versions in the locked bucket without retention can go; the COMPLIANCE one
  # stays until its date (a few bytes).
  aws s3api list-object-versions --bucket "$L" --prefix "$RUN/" \
    --query '[Versions[].[Key,VersionId],DeleteMarkers[].[Key,VersionId]][]' --output text 2>/dev/null |
    while read -r k v; do
      [[ -n $k && $k != None ]] || continue
      aws s3api delete-object --bucket "$L" --key "$k" --version-id="$v" >/dev/null 2>&1 || true
    done
  if aws s3api head-bucket --bucket "$Q" >/dev/null 2>&1; then
    aws s3 rm --quiet --recursive "s3://$Q/" >/dev/null 2>&1 || true
    aws s3api delete-bucket --bucket "$Q" >/dev/null 2>&1 || true
  fi
  rm -rf -- "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------- single object
head -c $((3 * MIB + 12345)) /dev/urandom >"$WORK/one.bin"
key="$RUN/dir/one file.bin"
etag=$(aws s3api put-object --bucket "$B" --key "$key" --body "$WORK/one.bin" \
  --content-md5 "$(md5_b64 "$WORK/one.bin")" --query ETag --output text 2>&1) || etag="error: $etag"
if [[ $etag == "\"$(md5_hex "$WORK/one.bin")\"" ]]; then
  ok "put-object with Content-MD5 (ETag is the MD5)"
else
  bad "put-object" "ETag '$etag', want the MD5 of the body"
fi
if aws s3api get-object --bucket "$B" --key "$key" "$WORK/one.back" >/dev/null && cmp -s "$WORK/one.bin" "$WORK/one.back"; then
  ok "get-object returns the same bytes"
else
  bad "get-object" "bytes differ or the GET failed"
fi
listed=$(aws s3api list-objects-v2 --bucket "$B" --prefix "$RUN/dir/" --query 'Contents[].[Key,Size]' --output text)
if [[ $listed == "$key"$'\t'"$(stat -c %s "$WORK/one.bin")" ]]; then
  ok "list-objects-v2 shows the key and its size"
else
  bad "list-objects-v2" "got '$listed'"
fi

# ------------------------------------------------------------- multipart
head -c $((20 * MIB)) /dev/urandom >"$WORK/big.bin"
split -b $((8 * MIB)) -d "$WORK/big.bin" "$WORK/part."
key="$RUN/multipart.bin"
upload=$(aws s3api create-multipart-upload --bucket "$B" --key "$key" --query UploadId --output text)
parts=()
: >"$WORK/md5s"
n=0
for f in "$WORK"/part.*; do
  n=$((n + 1))
  e=$(aws s3api upload-part --bucket "$B" --key "$key" --upload-id "$upload" --part-number "$n" \
    --body "$f" --content-md5 "$(md5_b64 "$f")" --query ETag --output text)
  parts+=("{\"PartNumber\":$n,\"ETag\":$e}")
  openssl dgst -md5 -binary "$f" >>"$WORK/md5s"
done
want_etag="\"$(md5_hex "$WORK/md5s")-$n\""
complete=$(
  IFS=,
  aws s3api complete-multipart-upload --bucket "$B" --key "$key" --upload-id "$upload" \
    --multipart-upload "{\"Parts\":[${parts[*]}]}" --query ETag --output text
)
got_etag=$(aws s3api head-object --bucket "$B" --key "$key" --query ETag --output text)
if [[ $n == 3 && $got_etag == "$want_etag" ]]; then
  ok "multipart upload of 20 MiB in 8 MiB parts: ETag $got_etag = MD5 of the part MD5s + '-3'"
else
  bad "multipart ETag" "parts $n, head-object ETag '$got_etag', want '$want_etag'"
fi
if [[ $complete == "" || $complete == None ]]; then
  ok "fact: CompleteMultipartUpload answers an empty ETag (read it with HeadObject)"
else
  bad "fact: CompleteMultipartUpload ETag" "now answers '$complete' (update README.md)"
fi
if aws s3api get-object --bucket "$B" --key "$key" "$WORK/big.back" >/dev/null && cmp -s "$WORK/big.bin" "$WORK/big.back"; then
  ok "multipart object reads back byte for byte"
else
  bad "multipart read-back" "bytes differ or the GET failed"
fi

# ------------------------------------------------------------ integrity
other_md5=$(printf 'other bytes' | openssl dgst -md5 -binary | base64)
expect_error "put-object with a wrong Content-MD5 is rejected" "400 BadDigest" \
  s3api put-object --bucket "$B" --key "$RUN/bad-md5" --body "$WORK/part.02" --content-md5 "$other_md5"
expect_error "... and no object was created" "404 -" s3api head-object --bucket "$B" --key "$RUN/bad-md5"
upload=$(aws s3api create-multipart-upload --bucket "$B" --key "$RUN/bad-part" --query UploadId --output text)
expect_error "upload-part with a wrong Content-MD5 is rejected" "400 BadDigest" \
  s3api upload-part --bucket "$B" --key "$RUN/bad-part" --upload-id "$upload" --part-number 1 \
  --body "$WORK/part.02" --content-md5 "$other_md5"
aws s3api abort-multipart-upload --bucket "$B" --key "$RUN/bad-part" --upload-id "$upload"

wrong_sha=$(printf 'not the body' | openssl dgst -sha256 -binary | base64)
if aws s3api put-object --bucket "$B" --key "$RUN/sha" --body "$WORK/part.02" \
  --checksum-sha256 "$wrong_sha" >/dev/null 2>&1; then
  ok "fact: a wrong x-amz-checksum-sha256 is accepted (RGW 16 does not check it)"
else
  bad "fact: x-amz-checksum-sha256" "a wrong value is now rejected (update README.md)"
fi
stored=$(aws s3api head-object --bucket "$B" --key "$RUN/sha" --checksum-mode ENABLED \
  --query ChecksumSHA256 --output text 2>&1 || true)
if [[ $stored == None ]]; then
  ok "fact: x-amz-checksum-sha256 is not stored (HeadObject returns none)"
else
  bad "fact: x-amz-checksum-sha256 stored" "HeadObject returned '$stored' (update README.md)"
fi
got=$("$HPCSTAGE_S3_TOOLS_DIR/awscli/bin/python" "$HERE/trailer_put.py" "$B" "$RUN/trailer" 2>&1 || true)
if [[ $got == "400 XAmzContentSHA256Mismatch" ]]; then
  ok "fact: an aws-chunked body with a checksum trailer is rejected ($got)"
else
  bad "fact: aws-chunked trailer" "got '$got' (update README.md)"
fi

# ----------------------------------------------------------- Object Lock
printf 'locked %s\n' "$RUN" >"$WORK/locked.txt"
version=$(aws s3api put-object --bucket "$L" --key "$RUN/locked.txt" --body "$WORK/locked.txt" \
  --content-md5 "$(md5_b64 "$WORK/locked.txt")" --query VersionId --output text)
until_date=$(in_hours 1)
aws s3api put-object-retention --bucket "$L" --key "$RUN/locked.txt" --version-id="$version" \
  --retention "{\"Mode\":\"COMPLIANCE\",\"RetainUntilDate\":\"$until_date\"}"
retention=$(aws s3api get-object-retention --bucket "$L" --key "$RUN/locked.txt" --version-id="$version" \
  --query '[Retention.Mode,Retention.RetainUntilDate]' --output text)
if [[ $retention == COMPLIANCE$'\t'"${until_date%Z}"* ]]; then
  ok "PutObjectRetention COMPLIANCE, read back by GetObjectRetention ($retention)"
else
  bad "GetObjectRetention" "got '$retention', want COMPLIANCE until $until_date"
fi
expect_error "delete of the COMPLIANCE-locked version is refused" "403 AccessDenied" \
  s3api delete-object --bucket "$L" --key "$RUN/locked.txt" --version-id="$version"
expect_error "fact: ... also with the governance bypass" "403 AccessDenied" \
  s3api delete-object --bucket "$L" --key "$RUN/locked.txt" --version-id="$version" --bypass-governance-retention
expect_error "fact: shortening a COMPLIANCE retention is refused" "403 AccessDenied" \
  s3api put-object-retention --bucket "$L" --key "$RUN/locked.txt" --version-id="$version" \
  --retention "{\"Mode\":\"COMPLIANCE\",\"RetainUntilDate\":\"$(date -u -d '+10 minutes' +%Y-%m-%dT%H:%M:%SZ)\"}"
if aws s3api get-object --bucket "$L" --key "$RUN/locked.txt" --version-id="$version" "$WORK/locked.back" >/dev/null &&
  cmp -s "$WORK/locked.txt" "$WORK/locked.back"; then
  ok "the locked version still reads back"
else
  bad "locked version" "cannot be read back"
fi

version=$(aws s3api put-object --bucket "$L" --key "$RUN/governance.txt" --body "$WORK/locked.txt" \
  --content-md5 "$(md5_b64 "$WORK/locked.txt")" --object-lock-mode GOVERNANCE \
  --object-lock-retain-until-date "$(in_hours 1)" --query VersionId --output text)
expect_error "fact: a GOVERNANCE-locked version is kept without the bypass" "403 AccessDenied" \
  s3api delete-object --bucket "$L" --key "$RUN/governance.txt" --version-id="$version"
expect_error "fact: ... and deleted with it (lock headers on PutObject are applied)" "ok" \
  s3api delete-object --bucket "$L" --key "$RUN/governance.txt" --version-id="$version" --bypass-governance-retention

upload=$(aws s3api create-multipart-upload --bucket "$L" --key "$RUN/mp-locked" --object-lock-mode COMPLIANCE \
  --object-lock-retain-until-date "$until_date" --query UploadId --output text)
e=$(aws s3api upload-part --bucket "$L" --key "$RUN/mp-locked" --upload-id "$upload" --part-number 1 \
  --body "$WORK/locked.txt" --content-md5 "$(md5_b64 "$WORK/locked.txt")" --query ETag --output text)
aws s3api complete-multipart-upload --bucket "$L" --key "$RUN/mp-locked" --upload-id "$upload" \
  --multipart-upload "{\"Parts\":[{\"PartNumber\":1,\"ETag\":$e}]}" >/dev/null
expect_error "fact: lock headers on CreateMultipartUpload are ignored (no retention after completing)" \
  "404 ObjectLockConfigurationNotFoundError" s3api get-object-retention --bucket "$L" --key "$RUN/mp-locked"

expect_error "PutObjectRetention on a bucket without Object Lock is refused" "400 InvalidRequest" \
  s3api put-object-retention --bucket "$B" --key "$RUN/sha" \
  --retention "{\"Mode\":\"COMPLIANCE\",\"RetainUntilDate\":\"$until_date\"}"
expect_error "GetObjectLockConfiguration on a bucket without Object Lock" \
  "404 ObjectLockConfigurationNotFoundError" s3api get-object-lock-configuration --bucket "$B"

# ---------------------------------------------------------------- quota
head -c $((700 * 1024)) /dev/urandom >"$WORK/q.bin"
aws s3api create-bucket --bucket "$Q" >/dev/null
rgw_admin quota set --quota-scope=bucket --bucket="$Q" --max-size=$MIB >/dev/null
rgw_admin quota enable --quota-scope=bucket --bucket="$Q" >/dev/null
expect_error "upload under a 1 MiB bucket quota" "ok" s3api put-object --bucket "$Q" --key a --body "$WORK/q.bin"
expect_error "upload past the bucket quota fails" "403 QuotaExceeded" \
  s3api put-object --bucket "$Q" --key b --body "$WORK/q.bin"
upload=$(aws s3api create-multipart-upload --bucket "$Q" --key mp --query UploadId --output text)
expect_error "upload-part past the bucket quota fails" "403 QuotaExceeded" \
  s3api upload-part --bucket "$Q" --key mp --upload-id "$upload" --part-number 1 --body "$WORK/q.bin"
aws s3api abort-multipart-upload --bucket "$Q" --key mp --upload-id "$upload"

# ----------------------------------------------------------- credentials
AWS_ACCESS_KEY_ID=HPCSTAGENOSUCHKEY000 expect_error "an unknown access key is refused" \
  "403 InvalidAccessKeyId" s3api list-objects-v2 --bucket "$B" --max-items 1
AWS_SECRET_ACCESS_KEY=not-the-secret expect_error "a wrong secret key is refused" \
  "403 SignatureDoesNotMatch" s3api list-objects-v2 --bucket "$B" --max-items 1

# --------------------------------------------------------------- rclone
if rclone copyto "$WORK/one.bin" "hpcs3:$B/$RUN/rclone.bin" 2>"$WORK/rclone.err" &&
  rclone cat "hpcs3:$B/$RUN/rclone.bin" 2>>"$WORK/rclone.err" | cmp -s - "$WORK/one.bin"; then
  ok "rclone (remote hpcs3 from env.sh) writes and reads back"
else
  bad "rclone" "$(tail -n 3 "$WORK/rclone.err")"
fi

# ------------------------------------------------------ no orphan uploads
for bucket in "$B" "$L"; do
  # shellcheck disable=SC2016 # backticks are JMESPath literals, not command substitution
  left=$(aws s3api list-multipart-uploads --bucket "$bucket" --query 'length(Uploads || `[]`)' --output text)
  if [[ $left == 0 ]]; then
    ok "ListMultipartUploads on $bucket is empty"
  else
    bad "ListMultipartUploads on $bucket" "$left uploads left"
  fi
done

echo "smoke: $passed passed, $failed failed"
((failed == 0))
