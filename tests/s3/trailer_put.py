"""trailer_put.py - send one PutObject with an aws-chunked body and a CRC32 trailer.

Why: newer AWS SDKs send checksums as a trailer after an aws-chunked body
(x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER). Whether the test
server accepts that decides how an S3 client must be configured, so smoke.sh
checks it. The AWS CLI only does this over TLS, so the request is built and
signed (SigV4) here with the CLI's own botocore.

Usage: trailer_put.py BUCKET KEY   (endpoint and keys from tests/s3/env.sh)
Prints the HTTP status and the S3 error code (or "-"), e.g. "400 XAmzContentSHA256Mismatch".
"""

import base64
import http.client
import os
import re
import sys
import urllib.parse
import zlib

try:  # awscli >= 1.44 ships botocore inside its own package
    from awscli.botocore.auth import SigV4Auth
    from awscli.botocore.awsrequest import AWSRequest
    from awscli.botocore.credentials import Credentials
except ImportError:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials


def main():
    bucket, key = sys.argv[1], sys.argv[2]
    endpoint = urllib.parse.urlparse(os.environ["AWS_ENDPOINT_URL"])
    data = b"aws-chunked body with a CRC32 trailer\n"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(data), data, crc.encode())
    path = "/%s/%s" % (bucket, urllib.parse.quote(key))
    headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "content-length": str(len(body)),
    }
    request = AWSRequest(method="PUT", url=endpoint.geturl().rstrip("/") + path, data=body, headers=headers)
    credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    SigV4Auth(credentials, "s3", os.environ["AWS_REGION"]).add_auth(request)
    conn = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    conn.request("PUT", path, body=body, headers=dict(request.headers.items()))
    response = conn.getresponse()
    match = re.search(rb"<Code>([^<]*)</Code>", response.read())
    print(response.status, match.group(1).decode() if match else "-")


main()
