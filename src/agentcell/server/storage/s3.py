"""S3ObjectStore: any S3-compatible endpoint over httpx, path-style, signed with our own SigV4.

Objects under `s3://bucket/prefix` map to keys `prefix/key`. Uploads larger than one part
(`PART_BYTES`, 8 MiB) stream as a multipart upload, aborted on failure; downloads stream. Network
failures and 5xx answers become `Unavailable`; messages name the endpoint and bucket, never the
credentials.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from agentcell.errors import InvalidArgument, NotFound, Unavailable
from agentcell.server.storage.objects import PART_BYTES, ObjectInfo, validate_key, validate_prefix
from agentcell.server.storage.sigv4 import Credentials, canonical_query, quote_path, sign

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
DELETE_BATCH = 1000  # the most keys one DeleteObjects request may carry


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint: str
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None

    def __repr__(self) -> str:
        return (
            f"S3Config({self.endpoint!r}, {self.bucket!r}, {self.prefix!r}, {self.region!r}, <credentials>)"
        )


class S3Object:
    """What one request needs: method, path, query, body; `S3ObjectStore._send` signs and sends it."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method, self.path, self.body = method, path, body
        self.query = canonical_query(query or [])
        self.headers = headers or {}


class S3ObjectStore:
    """Owns one httpx client (a keep-alive pool) to the endpoint; close it with `aclose`."""

    def __init__(self, config: S3Config, *, timeout_s: float = 60.0) -> None:
        parts = urlsplit(config.endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument(f"S3 endpoint must be an http(s) URL, got {config.endpoint!r}")
        if (config.access_key is None) != (config.secret_key is None):
            raise InvalidArgument("S3 access key and secret key must be given together")
        self.config = config
        self._host = parts.netloc
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._credentials = (
            Credentials(config.access_key, config.secret_key)
            if config.access_key is not None and config.secret_key is not None
            else None
        )
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self._client = httpx.AsyncClient(timeout=timeout_s, limits=limits)
        self._where = f"S3 bucket {config.bucket!r} at {config.endpoint}"

    # ---- request plumbing -------------------------------------------------------------------------

    def _object_path(self, key: str) -> str:
        full = f"{self.config.prefix}/{key}" if self.config.prefix else key
        return quote_path(f"/{self.config.bucket}/{full}")

    def _request(self, obj: S3Object) -> httpx.Request:
        headers = {"host": self._host, **obj.headers}
        if self._credentials is not None:
            now = datetime.now(UTC)  # the signature's own timestamp: wall time by definition
            headers |= sign(
                obj.method,
                obj.path,
                obj.query,
                headers,
                region=self.config.region,
                credentials=self._credentials,
                now=now,
            )
        url = f"{self._base}{obj.path}" + (f"?{obj.query}" if obj.query else "")
        return self._client.build_request(obj.method, url, headers=headers, content=obj.body)

    async def _send(self, obj: S3Object, *, ok: tuple[int, ...] = (200,), what: str = "") -> httpx.Response:
        try:
            response = await self._client.send(self._request(obj))
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self._where} unreachable ({type(exc).__name__})") from exc
        if response.status_code not in ok:
            raise self._error(response, what)
        return response

    def _error(self, response: httpx.Response, what: str) -> Exception:
        code = _error_code(response.content)
        if response.status_code == 404 and code in ("NoSuchKey", "") and what:
            return NotFound(f"object {what!r} does not exist")
        return Unavailable(f"{self._where} answered {response.status_code} {code or ''}".rstrip())

    # ---- ObjectStore ------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        await self._send(S3Object("PUT", self._object_path(key), body=data))

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        validate_key(key)
        iterator = aiter(chunks)
        first = await _fill(iterator, PART_BYTES)
        if len(first) < PART_BYTES:
            await self._send(S3Object("PUT", self._object_path(key), body=bytes(first)))
            return len(first)
        return await self._multipart(key, first, iterator)

    async def _multipart(self, key: str, first: bytearray, rest: AsyncIterator[bytes]) -> int:
        path = self._object_path(key)
        reply = await self._send(S3Object("POST", path, [("uploads", "")]))
        upload_id = _xml_text(reply.content, "UploadId")
        try:
            etags: list[str] = []
            total, part = 0, first
            while part:
                query = [("partNumber", str(len(etags) + 1)), ("uploadId", upload_id)]
                sent = await self._send(S3Object("PUT", path, query, body=bytes(part)))
                etags.append(sent.headers.get("etag", ""))
                total += len(part)
                part = await _fill(rest, PART_BYTES)
            body = _complete_xml(etags)
            done = await self._send(S3Object("POST", path, [("uploadId", upload_id)], body=body))
            if _error_code(done.content):  # S3 may report a failed completion inside a 200
                raise Unavailable(f"{self._where} failed to complete an upload ({_error_code(done.content)})")
            return total
        except BaseException:
            await self._abort(path, upload_id)
            raise

    async def _abort(self, path: str, upload_id: str) -> None:
        # if this fails too, the bucket's lifecycle rules reap the abandoned upload
        with contextlib.suppress(Unavailable):
            await self._send(S3Object("DELETE", path, [("uploadId", upload_id)]), ok=(200, 204, 404))

    async def get(self, key: str) -> bytes:
        validate_key(key)
        reply = await self._send(S3Object("GET", self._object_path(key)), what=key)
        return reply.content

    async def get_stream(self, key: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        validate_key(key)
        request = self._request(S3Object("GET", self._object_path(key)))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self._where} unreachable ({type(exc).__name__})") from exc
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error(response, key)
            async for chunk in response.aiter_bytes(chunk_bytes):
                yield chunk
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self._where} failed mid-download ({type(exc).__name__})") from exc
        finally:
            await response.aclose()

    async def exists(self, key: str) -> bool:
        validate_key(key)
        reply = await self._send(S3Object("HEAD", self._object_path(key)), ok=(200, 404))
        return reply.status_code == 200

    async def list(self, prefix: str) -> list[ObjectInfo]:
        validate_prefix(prefix)
        full = f"{self.config.prefix}/{prefix}" if self.config.prefix else prefix
        strip = len(self.config.prefix) + 1 if self.config.prefix else 0
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            query = [("list-type", "2"), ("prefix", full)] + (
                [("continuation-token", token)] if token else []
            )
            reply = await self._send(S3Object("GET", quote_path(f"/{self.config.bucket}"), query))
            page, token = _parse_listing(reply.content)
            found.extend(ObjectInfo(key[strip:], size) for key, size in page)
            if token is None:
                return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._send(S3Object("DELETE", self._object_path(key)), ok=(200, 204, 404))

    async def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in await self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH):
            await self._delete_batch(keys[start : start + DELETE_BATCH])
        return len(keys)

    async def _delete_batch(self, keys: builtins.list[str]) -> None:
        root = ET.Element("Delete")
        ET.SubElement(root, "Quiet").text = "true"
        for key in keys:
            full = f"{self.config.prefix}/{key}" if self.config.prefix else key
            ET.SubElement(ET.SubElement(root, "Object"), "Key").text = full
        body = ET.tostring(root)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        headers = {"content-md5": md5, "content-type": "application/xml"}
        path = quote_path(f"/{self.config.bucket}")
        reply = await self._send(S3Object("POST", path, [("delete", "")], body, headers))
        if ET.fromstring(reply.content).find(f"{NS}Error") is not None:
            raise Unavailable(f"{self._where} refused to delete some objects")

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.config!r})"


async def _fill(chunks: AsyncIterator[bytes], size: int) -> bytearray:
    """Up to `size` bytes from `chunks` (more if a chunk overshoots): one part's worth."""
    buffer = bytearray()
    while len(buffer) < size:
        try:
            buffer += await anext(chunks)
        except StopAsyncIteration:
            break
    return buffer


def _complete_xml(etags: list[str]) -> bytes:
    root = ET.Element("CompleteMultipartUpload")
    for number, etag in enumerate(etags, start=1):
        part = ET.SubElement(root, "Part")
        ET.SubElement(part, "PartNumber").text = str(number)
        ET.SubElement(part, "ETag").text = etag
    return ET.tostring(root)


def _parse_listing(body: bytes) -> tuple[list[tuple[str, int]], str | None]:
    root = ET.fromstring(body)
    page = [
        (item.findtext(f"{NS}Key", ""), int(item.findtext(f"{NS}Size", "0")))
        for item in root.iter(f"{NS}Contents")
    ]
    truncated = root.findtext(f"{NS}IsTruncated", "false") == "true"
    return page, (root.findtext(f"{NS}NextContinuationToken") if truncated else None)


def _xml_text(body: bytes, tag: str) -> str:
    text = ET.fromstring(body).findtext(f"{NS}{tag}")
    if not text:
        raise Unavailable(f"S3 answer had no {tag}")
    return text


def _error_code(body: bytes) -> str:
    if not body.lstrip().startswith(b"<"):
        return ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return ""
    return (root.findtext("Code") or root.findtext(f"{NS}Code") or "") if root.tag.endswith("Error") else ""
