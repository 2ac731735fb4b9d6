"""A parsed request head: what the engine hands its router for every request (compiled with the
engine, see scripts/compile_gateway.py; `route` re-exports it)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence

from agentcell.protocol import common
from agentcell.protocol.common import usable_request_id

REQUEST_ID_HEADER = common.REQUEST_ID_HEADER.encode()
_REQUEST_ID_PREFIX = "req_" + os.urandom(5).hex()
_request_ids = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id: a random per-process prefix and a counter (no syscall)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):x}"


class RequestHead:
    """One parsed request head, as the client sent it.

    `headers` keeps the client's order, case and duplicates; `index` (and `header(name)`) maps
    lowercase names to values (duplicates joined with ", ", cookies with "; "); both are shared
    with other requests that sent the same headers, so they are never changed. `raw_path` is the
    path as received (still percent-encoded, without the query); `query` is what followed the
    first "?", if anything. `client` is the peer's IP address ("" on a Unix socket).
    """

    __slots__ = ("client", "headers", "http_version", "index", "method", "query", "raw_path", "request_id")

    def __init__(
        self,
        method: bytes,
        raw_path: bytes,
        query: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        index: Mapping[bytes, bytes],
        client: str,
        http_version: bytes = b"1.1",
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.index = index
        self.client = client
        self.http_version = http_version
        given = index.get(REQUEST_ID_HEADER)
        text = given.decode("latin-1") if given else ""
        # The request's id, the same in the access log, the error envelopes, the control plane's
        # log lines and what upstreams get as `x-request-id`: the client's, when it sent a usable
        # one, else a new one.
        self.request_id = text if text and usable_request_id(text) else new_request_id()

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lowercase bytes), or None when the client did not send it."""
        return self.index.get(name)

    @property
    def target(self) -> bytes:
        """The request target as received: path plus "?query" when there was one."""
        return self.raw_path + b"?" + self.query if self.query else self.raw_path

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r} {self.raw_path!r} from {self.client})"  # never the query
