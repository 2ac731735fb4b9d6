"""NpmMirror: a caching mirror of the host's configured npm registry, served to sandboxes at
`http://127.0.0.1:<proxy port>/npm/` through their egress proxy.

Package documents (packuments) are fetched from the registry (kept for `page_ttl_s`) and each
version's `dist.tarball` is pointed back here by its published `dist.integrity` (sha512), so every
tarball is downloaded once per node into the ArtifactCache and verified before it is kept. As with
pip, a sandbox may use the mirror only if its policy allows the registry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from agentcell.server.clock import Clock
from agentcell.server.egress.cache import Artifact, ArtifactCache, is_key
from agentcell.server.egress.fetch import Fetcher, FetchError
from agentcell.server.egress.http import RequestHead, send_bytes, send_file, send_text
from agentcell.server.egress.mirror import serve_mirror
from agentcell.server.egress.pagecache import PageCache
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import deny
from agentcell.server.egress.slots import PAGES_PER_SANDBOX, HolderSlots

PREFIX = "/npm/"
PACKAGE = re.compile(r"^/npm/((?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*)$")
FILE = re.compile(r"^/npm/-/files/([a-z0-9-]+)/([A-Za-z0-9._+~-]+\.tgz)$")
ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8"


def integrity_artifact(url: str, integrity: object) -> Artifact:
    """The artifact for a tarball, keyed by its sha512 integrity when the registry gave one."""
    for item in str(integrity or "").split():
        algorithm, _, b64 = item.partition("-")
        if algorithm == "sha512":
            try:
                return Artifact(url, "sha512", base64.b64decode(b64, validate=True).hex())
            except (binascii.Error, ValueError):
                break
    return Artifact(url)


def rewrite_document(name: str, raw: bytes, local_url: str) -> tuple[bytes, list[Artifact]]:
    """The document with every version's `dist.tarball` pointed here, and those tarballs."""
    try:
        document: Any = json.loads(raw)
    except ValueError as e:
        raise FetchError(f"the registry's answer for {name} is not JSON: {e}") from None
    artifacts = []
    versions = document.get("versions") if isinstance(document, dict) else None
    for version in (versions if isinstance(versions, dict) else {}).values():
        dist = version.get("dist") if isinstance(version, dict) else None
        if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
            continue
        artifact = integrity_artifact(dist["tarball"], dist.get("integrity"))
        artifacts.append(artifact)
        filename = urlsplit(artifact.url).path.rpartition("/")[2] or "package.tgz"
        dist["tarball"] = f"{local_url}/npm/-/files/{artifact.key}/{filename}"
    return json.dumps(document).encode(), artifacts


class NpmMirror:
    prefix = PREFIX

    def __init__(
        self,
        registry_url: str,
        cache: ArtifactCache,
        fetcher: Fetcher,
        clock: Clock,
        local_url: str,
        page_ttl_s: float = 300,
    ) -> None:
        self._registry = registry_url.rstrip("/") + "/"
        upstream = urlsplit(self._registry)
        self._host = upstream.hostname or ""
        self._port = upstream.port or (443 if upstream.scheme == "https" else 80)
        self._cache = cache
        self._fetcher = fetcher
        self._local_url = local_url
        self.documents = PageCache(clock, page_ttl_s)
        self._fetching = HolderSlots(PAGES_PER_SANDBOX)

    def env(self, policy: EgressPolicy, local_url: str) -> dict[str, str]:
        if not policy.allows_name(self._host, self._port):
            return {}
        return {"npm_config_registry": f"{local_url}/npm/"}

    async def handle(
        self, sandbox_id: str, policy: EgressPolicy, head: RequestHead, writer: asyncio.StreamWriter
    ) -> None:
        upstream = (self._registry, self._host, self._port)
        route = partial(self._route, sandbox_id, policy, head, writer)
        await serve_mirror("npm mirror", upstream, sandbox_id, policy, head, writer, route)

    async def _route(
        self, sandbox_id: str, policy: EgressPolicy, head: RequestHead, writer: asyncio.StreamWriter
    ) -> None:
        path = unquote(head.target.partition("?")[0]).lower()
        if (file := FILE.fullmatch(path)) and is_key(file.group(1)):
            cached = await self._tarball(sandbox_id, policy, file.group(1))
            await send_file(writer, head, str(cached), "application/octet-stream")
        elif package := PACKAGE.fullmatch(path):
            body = await self._document(sandbox_id, package.group(1))
            await send_bytes(writer, head, body, "application/json")
        else:
            await send_text(writer, 404, f"the npm mirror has nothing at {path[:100]!r}\n")

    async def _document(self, sandbox_id: str, name: str) -> bytes:
        cached = self.documents.get(name)
        if cached is not None:
            return cached
        async with self._fetching.hold(sandbox_id):  # a few at a time: the page threads are shared
            page = await self._fetcher.page(self._registry + name.replace("/", "%2f"), ACCEPT)
            # documents run to tens of MiB: parsed and written again off the loop
            rewrite = partial(rewrite_document, name, page.body, self._local_url)
            body, artifacts = await self._fetcher.off_loop(rewrite)
        self.documents.put(name, body, artifacts)
        return body

    async def _tarball(self, sandbox_id: str, policy: EgressPolicy, key: str) -> Path:
        cached = self._cache.cached(key)
        if cached is not None:
            self._cache.hits += 1
            return cached
        artifact = self.documents.artifact(key)
        if artifact is None:
            raise FetchError(f"unknown tarball {key}: ask for its package document first")
        where = urlsplit(artifact.url)
        port = where.port or (443 if where.scheme == "https" else 80)
        if not policy.allows_name(where.hostname or "", port):
            raise deny(sandbox_id, policy, f"{where.hostname}:{port}")
        return await self._cache.ensure(artifact, sandbox_id)
