"""AWS Signature Version 4 for S3 requests (header form, unsigned payload), in one pure function.

The payload is sent as `UNSIGNED-PAYLOAD`: the snapshot engine hashes every piece itself and checks
it on restore, so hashing bodies a second time here would only cost CPU.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


def quote_path(path: str) -> str:
    """URI-encode a path the way SigV4 wants it for S3: every byte but unreserved ones and '/'."""
    return quote(path, safe="/-_.~")


def canonical_query(params: list[tuple[str, str]]) -> str:
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in encoded)


def sign(
    method: str,
    encoded_path: str,
    query: str,
    headers: dict[str, str],
    *,
    region: str,
    credentials: Credentials,
    now: datetime,
) -> dict[str, str]:
    """Headers to add (`x-amz-date`, `x-amz-content-sha256`, `authorization`) for this request.

    `headers` must hold `host` and every other header to be signed, names in lower case.
    """
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    payload_hash = headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
    signed = {**headers, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
    names = sorted(signed)
    canonical_headers = "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names)
    signed_names = ";".join(names)
    request = "\n".join([method, encoded_path, query, canonical_headers, signed_names, payload_hash])
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = _signing_key(credentials.secret_key, amz_date[:8], region)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return {"x-amz-date": amz_date, "x-amz-content-sha256": payload_hash, "authorization": authorization}


def _signing_key(secret_key: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
