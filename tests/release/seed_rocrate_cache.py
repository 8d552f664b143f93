"""Seeds rocrate-validator's HTTP cache with the RO-Crate JSON-LD contexts, offline.

rocrate-validator resolves a crate's @context through a requests_cache SQLite cache
(`--cache-path`); with `--offline` a context that is not in it fails the validation. The
contexts ship inside registry packages: RO-Crate 1.3 in the PyPI package rocrate
(rocrate/data/ro-crate.jsonld), RO-Crate 1.2 in the npm package ro-crate (lib/context.json,
given as an optional second argument). This script serves those files to a cached session
through a local transport adapter, so requests_cache itself stores them under the keys
the validator looks up: no network is touched.

usage: python seed_rocrate_cache.py CACHE_PATH [CONTEXT_1_2_JSON]
"""

import json
import pathlib
import sys

import io

import rocrate
from requests.adapters import HTTPAdapter
from requests_cache import CachedSession
from urllib3.response import HTTPResponse

ACCEPT = "application/ld+json, application/json, */*;q=0.1"


class LocalFiles(HTTPAdapter):
    """Answers GET requests for the known URLs from local files; anything else is 404."""

    def __init__(self, files):
        super().__init__()
        self.files = files

    def send(self, request, **kwargs):
        path = self.files.get(request.url)
        body = pathlib.Path(path).read_bytes() if path else b""
        raw = HTTPResponse(
            body=io.BytesIO(body),
            headers={"Content-Type": "application/ld+json"} if path else {},
            status=200 if path else 404,
            preload_content=False,
            request_url=request.url,
        )
        return self.build_response(request, raw)


def main():
    cache = sys.argv[1]
    files = {
        "https://w3id.org/ro/crate/1.3/context": pathlib.Path(rocrate.__file__).parent
        / "data"
        / "ro-crate.jsonld",
    }
    if len(sys.argv) > 2:
        files["https://w3id.org/ro/crate/1.2/context"] = sys.argv[2]
    session = CachedSession(
        cache_name=cache,
        expire_after=-1,
        backend="sqlite",
        allowable_methods=("GET",),
        allowable_codes=(200, 302, 404),
    )
    adapter = LocalFiles(files)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    for url in files:
        for headers in ({"Accept": ACCEPT}, {}):
            response = session.get(url, headers=headers, allow_redirects=True)
            json.loads(response.content)
            assert response.status_code == 200, (url, response.status_code)
    print(f"seeded {cache} with {', '.join(files)}")


if __name__ == "__main__":
    main()
