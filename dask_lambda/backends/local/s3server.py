"""A moto S3 server in a process of its own (``python -m dask_lambda.backends.local.s3server``).

Binds 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout once it
serves, and exits when its stdin closes, so it never outlives the process
that started it, even one that was killed.

Only requests signed with this server's credentials (AWS Signature Version 4 in the
``Authorization`` header, as every SDK sends) reach moto; anything else, unsigned,
presigned, or signed with another key or secret, gets S3's 403 answer.  The local
backend starts its server with ``--credentials-on-stdin`` and a random key pair per
client on the first line of stdin (``{"aws_access_key_id": ..., "aws_secret_access_key":
...}``), so no other user of the machine can read or write a run's objects.  Started
by hand (tests, a server shared by several clients), it accepts `TEST_CREDENTIALS`.

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
runs are reproducible.  ``GET /__faults__`` returns how often each rule fired, and
``GET /__requests__`` how many requests each (method, bucket/key) had.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

_S3_CODES = {500: "InternalError", 503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey"}
#: What a server started by hand accepts (for tests; the local backend gives its own a
#: random pair per client).
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureCheck:
    """WSGI middleware: only requests signed (SigV4) with ``credentials`` reach ``app``.

    Verifies the ``Authorization`` header's signature over the canonical request, as S3
    does (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html).
    The declared payload hash (``x-amz-content-sha256``) is part of what is signed; the
    body itself is not hashed again (on 127.0.0.1 nobody can alter it in flight).
    Presigned URLs (signature in the query string) and unsigned requests are refused.
    """

    def __init__(self, app: Callable, credentials: dict, *, exempt: tuple[str, ...] = ()):
        self.app = app
        self.key_id = credentials["aws_access_key_id"]
        self.secret = credentials["aws_secret_access_key"]
        self.exempt = exempt

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") in self.exempt:
            return self.app(environ, start_response)
        problem = self._problem(environ)
        if problem is not None:
            code, message = problem
            return _s3_error(403, start_response, environ["REQUEST_METHOD"], code, message)
        return self.app(environ, start_response)

    def _problem(self, environ: dict) -> tuple[str, str] | None:
        """Why the request is refused (S3's error code and message), or None."""
        query = environ.get("QUERY_STRING", "")
        names = {unquote(pair.partition("=")[0]) for pair in query.split("&")}
        if names & {"X-Amz-Signature", "Signature"}:  # a presigned URL (SigV4 or V2)
            return "AccessDenied", "presigned URLs are not accepted by this server"
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "AccessDenied", "Access Denied: sign requests with this server's credentials"
        fields = dict(part.strip().split("=", 1) for part in auth[17:].split(",")
                      if "=" in part)
        scope = fields.get("Credential", "").split("/")
        signed = fields.get("SignedHeaders", "")
        if len(scope) != 5 or not signed or "Signature" not in fields:
            return "AuthorizationHeaderMalformed", "the Authorization header is malformed"
        if not hmac.compare_digest(scope[0], self.key_id):
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"
        date = environ.get("HTTP_X_AMZ_DATE", "")
        payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256") or self._body_hash(environ)
        canonical = "\n".join([
            environ["REQUEST_METHOD"],
            _raw_path(environ),
            _canonical_query(query),
            "".join(f"{name}:{_header(environ, name)}\n" for name in signed.split(";")),
            signed,
            payload,
        ])
        to_sign = "\n".join(["AWS4-HMAC-SHA256", date, "/".join(scope[1:]),
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret).encode()
        for part in scope[1:]:
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["Signature"]):
            return "SignatureDoesNotMatch", ("The request signature we calculated does not "
                                             "match the signature you provided")
        return None

    @staticmethod
    def _body_hash(environ: dict) -> str:
        """The payload hash of a request that did not declare one (reads and puts back the
        body)."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if not length:
            return _EMPTY_SHA256
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        return hashlib.sha256(body).hexdigest()


def _raw_path(environ: dict) -> str:
    """The request's path as the client sent (and, for S3, signed) it: not normalized."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return raw.split("?", 1)[0]
    return quote(environ.get("PATH_INFO", ""), safe="/~")


def _canonical_query(query: str) -> str:
    pairs = []
    for pair in query.split("&") if query else ():
        name, _, value = pair.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _header(environ: dict, name: str) -> str:
    if name == "host":
        value = environ.get("HTTP_HOST", "")
    elif name in ("content-type", "content-length"):
        value = environ.get(name.upper().replace("-", "_"), "")
    else:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"), "")
    return " ".join(value.split())


class FaultInjector:
    """WSGI middleware that injects S3 failures by rule (see the module docstring)."""

    def __init__(self, app: Callable, plan: dict):
        self.app = app
        self.seed = str(plan.get("seed", 0))
        self.rules = plan.get("rules", [])
        self.seen: Counter = Counter()
        self.fired: Counter = Counter()
        #: Requests by method and key (``GET /__requests__``): what tests count.
        self.requests: Counter = Counter()
        self.lock = threading.Lock()

    def _selected(self, rule: dict, key: str) -> bool:
        share = float(rule.get("share", 1.0))
        digest = hashlib.sha256(f"{self.seed}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < share

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        method = environ["REQUEST_METHOD"]
        path = unquote(environ.get("PATH_INFO", ""))
        if path in ("/__faults__", "/__requests__"):
            answer = ({str(i): n for i, n in self.fired.items()} if path == "/__faults__" else
                      [[m, k, n] for (m, k), n in self.requests.items()])
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(answer).encode()]
        bucket, _, key = path.lstrip("/").partition("/")
        with self.lock:
            self.requests[(method, f"{bucket}/{key}")] += 1
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
                return _s3_error(int(rule["status"]), start_response, method,
                                 rule.get("code"), region=rule.get("region"))
        return self.app(environ, start_response)

    def _delete(self, environ: dict) -> None:
        env = dict(environ, REQUEST_METHOD="DELETE", CONTENT_LENGTH="0", QUERY_STRING="")
        env["wsgi.input"] = io.BytesIO(b"")
        for _ in self.app(env, lambda status, headers, exc_info=None: None):
            pass



def _s3_error(status: int, start_response: Callable, method: str, code: str | None = None,
              message: str = "injected fault", *, region: str | None = None) -> list:
    """Answer with S3's XML error body."""
    code = code or _S3_CODES.get(status, "InternalError")
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>local</RequestId></Error>").encode()
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

    parser = argparse.ArgumentParser(prog="python -m dask_lambda.backends.local.s3server")
    parser.add_argument("--faults", default=None, help="JSON fault plan (for tests)")
    parser.add_argument("--credentials-on-stdin", action="store_true",
                        help="read the accepted key pair from the first line of stdin (JSON)")
    args = parser.parse_args(argv)
    credentials = (json.loads(sys.stdin.readline()) if args.credentials_on_stdin
                   else TEST_CREDENTIALS)

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app: Callable = DomainDispatcherApplication(create_backend_app)
    if args.faults:
        app = FaultInjector(app, json.loads(args.faults))
    exempt = ("/__faults__", "/__requests__") if args.faults else ()
    app = SignatureCheck(app, credentials, exempt=exempt)
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
