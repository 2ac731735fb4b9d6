"""NodeEgress: everything a node does for its sandboxes' egress, behind three calls for the driver
(`attach` a sandbox's proxy listener, `detach` it, `env` for its processes)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agentcell.server.clock import Clock, SystemClock
from agentcell.server.egress.cache import ArtifactCache
from agentcell.server.egress.fetch import Fetcher
from agentcell.server.egress.npm import NpmMirror
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressProxy, LocalService
from agentcell.server.egress.pypi import PypiMirror
from agentcell.server.settings import soft_open_files

NO_PROXY = "localhost,127.0.0.1,::1"


@dataclass(frozen=True, slots=True)
class EgressConfig:
    proxy_port: int = 3128
    """where each sandbox finds its proxy, on its own loopback (127.0.0.1:<port> inside)"""
    cache_dir: Path | None = None
    """the node-local package cache; None: no package mirrors"""
    cache_max_bytes: int | None = None
    """what the package cache keeps on disk, both mirrors together (least recently used files
    go first); None: DEFAULT_CACHE_BYTES, at most a quarter of the cache's file system"""
    pip_index_url: str | None = None
    """the upstream the pip mirror caches (the host's configured index); None: no pip mirror"""
    npm_registry_url: str | None = None
    page_ttl_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_connections: int = 256
    """open proxied connections per sandbox"""
    max_total_connections: int | None = None
    """open proxied connections of all sandboxes together; None: a sixteenth of the server's
    open-file limit (each holds two descriptors), so that sandboxes cannot starve the server"""
    protected_ports: tuple[int, ...] = ()
    """the server's own ports and its backends' (object store, trace collector): unreachable at
    this host's addresses unless an allowlist names the address"""


class NodeEgress:
    def __init__(self, config: EgressConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._fetcher = Fetcher()
        clock = clock or SystemClock()
        self._mirrors = self._build_mirrors(config, clock)
        self._proxy = EgressProxy(
            self._mirrors,
            connect_timeout_s=config.connect_timeout_s,
            max_connections=config.max_connections,
            max_total_connections=config.max_total_connections or total_connection_limit(),
            protected_ports=config.protected_ports,
            clock=clock,
        )

    def _build_mirrors(self, config: EgressConfig, clock: Clock) -> list[PypiMirror | NpmMirror]:
        if config.cache_dir is None:
            return []
        mirrors: list[PypiMirror | NpmMirror] = []
        share = (config.cache_max_bytes or default_cache_bytes(config.cache_dir)) // 2  # per mirror
        if _is_http(config.pip_index_url):
            cache = ArtifactCache(config.cache_dir / "pypi", self._fetcher, share)
            cache.remove_partial()
            assert config.pip_index_url is not None
            mirrors.append(
                PypiMirror(config.pip_index_url, cache, self._fetcher, clock, page_ttl_s=config.page_ttl_s)
            )
        if _is_http(config.npm_registry_url):
            cache = ArtifactCache(config.cache_dir / "npm", self._fetcher, share)
            cache.remove_partial()
            assert config.npm_registry_url is not None
            mirrors.append(
                NpmMirror(
                    config.npm_registry_url, cache, self._fetcher, clock, self.local_url, config.page_ttl_s
                )
            )
        return mirrors

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.config.proxy_port}"

    @property
    def services(self) -> tuple[LocalService, ...]:
        return tuple(self._mirrors)

    def env(self, policy: EgressPolicy) -> dict[str, str]:
        """The environment that points a sandbox's processes at its proxy and package mirrors."""
        if not policy.has_proxy:
            return {}
        proxy = self.local_url
        env = {name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
        env |= {name.lower(): proxy for name in env}
        env |= {"NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}
        env |= {"npm_config_proxy": proxy, "npm_config_https_proxy": proxy, "npm_config_noproxy": NO_PROXY}
        for mirror in self._mirrors:
            env |= mirror.env(policy, proxy)
        return env

    async def attach(self, sandbox_id: str, policy: EgressPolicy, listener: socket.socket) -> None:
        """Serve the sandbox's proxy on `listener` (now owned here)."""
        await self._proxy.serve(sandbox_id, policy, listener)

    def protect_ports(self, ports: Sequence[int]) -> None:
        """Add ports of this host to `protected_ports` (call once the server's own listeners are
        bound: with port 0 their numbers are known only then)."""
        self._proxy.protect(ports)

    async def detach(self, sandbox_id: str) -> None:
        await self._proxy.close(sandbox_id)

    @property
    def open_connections(self) -> int:
        return self._proxy.open_connections

    def is_attached(self, sandbox_id: str) -> bool:
        return self._proxy.is_serving(sandbox_id)

    async def aclose(self) -> None:
        await self._proxy.aclose()
        self._fetcher.close()


def total_connection_limit(open_files: int | None = None) -> int:
    """The default cap on all sandboxes' proxied connections: an eighth of the server's
    descriptors (`open_files`, its soft RLIMIT_NOFILE if None), two per connection (a sixteenth
    of the limit in connections: 1,250 on a 20,000-fd host, 65,536 at 1,048,576)."""
    return max(MIN_TOTAL_CONNECTIONS, (open_files or soft_open_files()) // 16)


def default_cache_bytes(cache_dir: Path) -> int:
    """DEFAULT_CACHE_BYTES, at most a quarter of the file system the cache lives on."""
    where = cache_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    stat = os.statvfs(where)
    return min(DEFAULT_CACHE_BYTES, stat.f_blocks * stat.f_frsize // 4)


DEFAULT_CACHE_BYTES = 10 << 30

MIN_TOTAL_CONNECTIONS = 64
"""the floor when the open-file limit is tiny"""


def ports_of(*urls: str | None) -> tuple[int, ...]:
    """The ports of these URLs (their scheme's default when none is written), to protect: the
    server's own backends (object store, trace collector) when they run on this host."""
    ports = []
    for url in urls:
        try:
            where = urlsplit(url or "")
            port = where.port or {"http": 80, "https": 443}.get(where.scheme.lower())
        except ValueError:
            continue
        if where.hostname and port:
            ports.append(port)
    return tuple(ports)


def _is_http(url: str | None) -> bool:
    return url is not None and url.split(":", 1)[0].lower() in ("http", "https")
