"""A moto S3 server in a process of its own (``python -m dask_lambda.backends.s3server``).

Binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout once it
serves, and exits when its stdin closes, so it never outlives the process
that started it, even one that was killed.

``--faults JSON`` puts a fault injector in front of moto, for testing how
dask-lambda survives S3 failures with real HTTP answers::

    {"seed": 1,
     "rules": [{"status": 503, "methods": ["PUT", "GET"], "prefix": "run/results/",
                "share": 0.3, "times": 1},
               {"lose": true, "prefix": "run/results/", "share": 0.2},
               {"status": 403, "bucket": "not-ours"}]}

Rules match on ``bucket``, ``methods``, key ``prefix`` and key ``suffix`` (e.g.
``"-a0.out"``: first attempts only). A rule with ``status`` answers that HTTP error
(S3's XML error body, with ``code`` if given, else S3's code for the status, e.g.
AccessDenied for 403; and an ``x-amz-bucket-region`` header if ``region`` is given) to
the first ``times`` requests (default: all) for each selected key; ``lose``
really deletes a selected object just before its first GET.  A key is
selected when a hash of (seed, key) falls under ``share`` (default 1), so
runs are reproducible.  ``GET /__faults__`` returns how often each rule fired.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

_S3_CODES = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}


class FaultInjector:
    """WSGI middleware that injects S3 failures by rule (see the module docstring)."""

    def __init__(self, app: Callable, plan: dict):
        self.app = app
        self.seed = str(plan.get("seed", 0))
        self.rules = plan.get("rules", [])
        self.seen: Counter = Counter()
        self.fired: Counter = Counter()
        self.lock = threading.Lock()

    def _selected(self, rule: dict, key: str) -> bool:
        share = float(rule.get("share", 1.0))
        digest = hashlib.sha256(f"{self.seed}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        method = environ["REQUEST_METHOD"]
        path = unquote(environ.get("PATH_INFO", ""))
        if path == "/__faults__":
            body = json.dumps({str(i): n for i, n in self.fired.items()}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        bucket, _, key = path.lstrip("/").partition("/")
        for number, rule in enumerate(self.rules):
            if "bucket" in rule and rule["bucket"] != bucket:
                continue
            if "methods" in rule and method not in rule["methods"]:
                continue
            if not key.startswith(rule.get("prefix", "")) or not key.endswith(
                    rule.get("suffix", "")) or not self._selected(rule, key):
                continue
            with self.lock:
                self.seen[(number, method, key)] += 1
                count = self.seen[(number, method, key)]
            if rule.get("lose"):
                if method == "GET" and count == 1:
                    self._delete(environ)
                    self.fired[number] += 1
                continue
            if count <= int(rule.get("times", 10**9)):
                self.fired[number] += 1
                return self._error(int(rule["status"]), start_response, method,
                                   rule.get("code"), rule.get("region"))
        return self.app(environ, start_response)

    def _delete(self, environ: dict) -> None:
        env = dict(environ, REQUEST_METHOD="DELETE", CONTENT_LENGTH="0", QUERY_STRING="")
        env["wsgi.input"] = io.BytesIO(b"")
        for _ in self.app(env, lambda status, headers, exc_info=None: None):
            pass

    @staticmethod
    def _error(status: int, start_response: Callable, method: str, code: str | None = None,
               region: str | None = None) -> list:
        code = code or _S3_CODES.get(status, "InternalError")
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected fault</Message><RequestId>fault</RequestId></Error>").encode()
        reason = {500: "Internal Server Error", 503: "Slow Down", 403: "Forbidden",
                  404: "Not Found", 301: "Moved Permanently",
                  400: "Bad Request"}.get(status, "Error")
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        if region:  # as S3 does when a bucket is asked for in the wrong region
            headers.append(("x-amz-bucket-region", region))
        start_response(f"{status} {reason}", headers)
        return [] if method == "HEAD" else [body]


def main(argv: list[str] | None = None) -> None:
    import argparse
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(prog="python -m dask_lambda.backends.s3server")
    parser.add_argument("--faults", default=None, help="JSON fault plan (for tests)")
    args = parser.parse_args(argv)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app: Callable = DomainDispatcherApplication(create_backend_app)
    if args.faults:
        app = FaultInjector(app, json.loads(args.faults))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        sys.stdin.read()  # until the parent closes the pipe or dies
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
