"""AWS Signature Version 4, as botocore signs a request for every service but S3
(tests/test_lambda_api.py checks it against botocore's signer)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Credentials:
    """AWS credentials, as botocore's ``get_frozen_credentials()`` gives them."""

    access_key: str
    secret_key: str
    token: str | None = None


class SigV4:
    """AWS Signature Version 4 for one region and service (the signing key is cached per day).

    Examples
    --------
    >>> signer = SigV4("us-east-1", "lambda")
    >>> headers = signer.sign("POST", "lambda.us-east-1.amazonaws.com",
    ...                       "/2015-03-31/functions/f/invocations", {}, b"{}",
    ...                       Credentials("AKID", "secret"), now=0.0)
    >>> headers["x-amz-date"], headers["authorization"][:48]
    ('19700101T000000Z', 'AWS4-HMAC-SHA256 Credential=AKID/19700101/us-eas')
    """

    def __init__(self, region: str, service: str):
        self.region = region
        self.service = service
        self._cached: tuple[str, str, bytes] = ("", "", b"")  # (day, secret key, signing key)

    def _signing_key(self, day: str, secret: str) -> bytes:
        cached_day, cached_secret, key = self._cached
        if cached_day != day or cached_secret != secret:
            key = _hmac(("AWS4" + secret).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._cached = (day, secret, key)
        return key

    def sign(self, method: str, host: str, path: str, headers: dict[str, str], payload: bytes,
             credentials: Credentials, now: float) -> dict[str, str]:
        """The headers to send: ``headers`` (lower-case names) plus host, date and signature.

        ``path`` is the request path as sent (already percent-encoded once); as botocore
        does for every service but S3, the canonical request encodes it once more.
        """
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        signed = {"host": host, "x-amz-date": amz_date, **headers}
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(signed)
        canonical = "\n".join((
            method, quote(path, safe="/~"), "", *(f"{n}:{signed[n]}" for n in names), "",
            ";".join(names), hashlib.sha256(payload).hexdigest()))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
                   f"{hashlib.sha256(canonical.encode()).hexdigest()}")
        signature = hmac.new(self._signing_key(day, credentials.secret_key), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}")
        return signed


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()
