"""PypiMirror: a caching PEP 503 mirror of the host's configured pip index, served to sandboxes
at `http://127.0.0.1:<proxy port>/pypi/simple/` through their egress proxy.

Project pages are fetched from the upstream index (kept for `page_ttl_s`) and rewritten so that
every file link points back here, by the digest the index published (`/pypi/files/sha256-<hex>/
<name>`); files are downloaded once per node into the ArtifactCache and verified. A sandbox may use
the mirror only if its policy allows the upstream index (and, for a file not yet cached, the host
that serves it): the mirror is a cache, not a way around the policy.
"""

from __future__ import annotations

import asyncio
import html
import re
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit

from agentcell.server.clock import Clock
from agentcell.server.egress.cache import Artifact, ArtifactCache, is_key
from agentcell.server.egress.fetch import Fetcher, FetchError, Page
from agentcell.server.egress.http import RequestHead, send_bytes, send_file, send_text
from agentcell.server.egress.mirror import serve_mirror
from agentcell.server.egress.pagecache import PageCache
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import deny
from agentcell.server.egress.slots import PAGES_PER_SANDBOX, HolderSlots

PREFIX = "/pypi/"
SIMPLE = re.compile(r"^/pypi/simple/([A-Za-z0-9._-]+)/?$")
FILE = re.compile(r"^/pypi/files/([a-z0-9-]+)/([A-Za-z0-9._+!~-]+)$")
KEPT_ATTRS = ("data-requires-python", "data-yanked")
ACCEPT_HTML = "application/vnd.pypi.simple.v1+html, text/html;q=0.9"


def normalize(project: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", project).lower()


@dataclass(frozen=True, slots=True)
class Link:
    filename: str
    artifact: Artifact
    attrs: tuple[tuple[str, str], ...]


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[dict[str, str], str]] = []
        self._open: dict[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open, self._text = {k: v or "" for k, v in attrs}, []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.found.append((self._open, "".join(self._text).strip()))
            self._open = None


def parse_links(page_url: str, body: str) -> list[Link]:
    """The file links of a PEP 503 project page, resolved against its URL."""
    parser = _Anchors()
    parser.feed(body)
    links = []
    for attrs, text in parser.found:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(page_url, href))
        filename = unquote(urlsplit(url).path.rpartition("/")[2]) or text
        if not filename or not FILE.fullmatch(f"/pypi/files/k/{filename}"):
            continue
        algorithm, _, digest = fragment.partition("=")
        known = algorithm == "sha256" and re.fullmatch(r"[0-9a-f]{64}", digest.lower())
        artifact = Artifact(url, "sha256", digest.lower() if known else None)
        kept = tuple((k, attrs[k]) for k in KEPT_ATTRS if k in attrs)
        links.append(Link(filename, artifact, kept))
    return links


def render_page(project: str, links: list[Link]) -> bytes:
    rows = []
    for link in links:
        href = f"/pypi/files/{link.artifact.key}/{quote(link.filename)}"
        if link.artifact.digest is not None:
            href += f"#sha256={link.artifact.digest}"
        extra = "".join(f' {k}="{html.escape(v)}"' for k, v in link.attrs)
        rows.append(f'<a href="{html.escape(href)}"{extra}>{html.escape(link.filename)}</a><br/>')
    title = html.escape(project)
    page = f"<!DOCTYPE html>\n<html><head><title>Links for {title}</title></head><body>\n"
    return (page + "\n".join(rows) + "\n</body></html>\n").encode()


def rewrite_page(project: str, page: Page) -> tuple[list[Link], bytes]:
    """The file links of an upstream project page, and the page that points them here."""
    links = parse_links(page.url, page.body.decode("utf-8", errors="replace"))
    return links, render_page(project, links)


class PypiMirror:
    prefix = PREFIX

    def __init__(
        self, index_url: str, cache: ArtifactCache, fetcher: Fetcher, clock: Clock, *, page_ttl_s: float = 300
    ) -> None:
        self._index = index_url.rstrip("/") + "/"
        upstream = urlsplit(self._index)
        self._host = upstream.hostname or ""
        self._port = upstream.port or (443 if upstream.scheme == "https" else 80)
        self._cache = cache
        self._fetcher = fetcher
        self.pages = PageCache(clock, page_ttl_s)
        self._fetching = HolderSlots(PAGES_PER_SANDBOX)

    def env(self, policy: EgressPolicy, local_url: str) -> dict[str, str]:
        """What points pip in the sandbox at this mirror (nothing if the policy forbids the index)."""
        if not self.is_allowed(policy):
            return {}
        return {"PIP_INDEX_URL": f"{local_url}/pypi/simple/"}

    def is_allowed(self, policy: EgressPolicy) -> bool:
        return policy.allows_name(self._host, self._port)

    async def handle(
        self, sandbox_id: str, policy: EgressPolicy, head: RequestHead, writer: asyncio.StreamWriter
    ) -> None:
        upstream = (self._index, self._host, self._port)
        route = partial(self._route, sandbox_id, policy, head, writer)
        await serve_mirror("package mirror", upstream, sandbox_id, policy, head, writer, route)

    async def _route(
        self, sandbox_id: str, policy: EgressPolicy, head: RequestHead, writer: asyncio.StreamWriter
    ) -> None:
        path = unquote(head.target.partition("?")[0])
        if page := SIMPLE.fullmatch(path):
            body = await self._page(sandbox_id, normalize(page.group(1)))
            await send_bytes(writer, head, body, "text/html; charset=utf-8")
        elif (file := FILE.fullmatch(path)) and is_key(file.group(1)):
            cached = await self._file(sandbox_id, policy, file.group(1))
            await send_file(writer, head, str(cached), "application/octet-stream")
        else:
            await send_text(writer, 404, f"the package mirror has nothing at {path[:100]!r}\n")

    async def _page(self, sandbox_id: str, project: str) -> bytes:
        cached = self.pages.get(project)
        if cached is not None:
            return cached
        async with self._fetching.hold(sandbox_id):  # a few at a time: the page threads are shared
            page = await self._fetcher.page(f"{self._index}{project}/", ACCEPT_HTML)
            # Python's HTML parser takes ~0.2 s per MiB (big projects' pages are several): off the loop
            links, body = await self._fetcher.off_loop(partial(rewrite_page, project, page))
        self.pages.put(project, body, [link.artifact for link in links])
        return body

    async def _file(self, sandbox_id: str, policy: EgressPolicy, key: str) -> Path:
        cached = self._cache.cached(key)
        if cached is not None:
            self._cache.hits += 1
            return cached
        artifact = self.pages.artifact(key)
        if artifact is None:
            raise FetchError(f"unknown file {key}: ask for its project page first")
        where = urlsplit(artifact.url)
        port = where.port or (443 if where.scheme == "https" else 80)
        if not policy.allows_name(where.hostname or "", port):
            raise deny(sandbox_id, policy, f"{where.hostname}:{port}")
        return await self._cache.ensure(artifact, sandbox_id)
