"""NodeEgress: everything a node does for its sandboxes' egress, behind three calls for the driver
(`attach` a sandbox's proxy listener, `detach` it, `env` for its processes)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from agentcell.server.clock import Clock, SystemClock
from agentcell.server.egress.cache import ArtifactCache
from agentcell.server.egress.fetch import Fetcher
from agentcell.server.egress.npm import NpmMirror
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressProxy, LocalService
from agentcell.server.egress.pypi import PypiMirror

NO_PROXY = "localhost,127.0.0.1,::1"


@dataclass(frozen=True, slots=True)
class EgressConfig:
    proxy_port: int = 3128
    """where each sandbox finds its proxy, on its own loopback (127.0.0.1:<port> inside)"""
    cache_dir: Path | None = None
    """the node-local package cache; None: no package mirrors"""
    pip_index_url: str | None = None
    """the upstream the pip mirror caches (the host's configured index); None: no pip mirror"""
    npm_registry_url: str | None = None
    page_ttl_s: float = 300.0
    connect_timeout_s: float = 10.0
    max_connections: int = 256
    """open proxied connections per sandbox"""
    protected_ports: tuple[int, ...] = ()
    """the server's own ports: unreachable on this host's loopback unless an allowlist names the address"""


class NodeEgress:
    def __init__(self, config: EgressConfig, clock: Clock | None = None) -> None:
        self.config = config
        self._fetcher = Fetcher()
        self._mirrors = self._build_mirrors(config, clock or SystemClock())
        self._proxy = EgressProxy(
            self._mirrors,
            connect_timeout_s=config.connect_timeout_s,
            max_connections=config.max_connections,
            protected_ports=config.protected_ports,
        )

    def _build_mirrors(self, config: EgressConfig, clock: Clock) -> list[PypiMirror | NpmMirror]:
        if config.cache_dir is None:
            return []
        mirrors: list[PypiMirror | NpmMirror] = []
        if _is_http(config.pip_index_url):
            cache = ArtifactCache(config.cache_dir / "pypi", self._fetcher)
            cache.remove_partial()
            assert config.pip_index_url is not None
            mirrors.append(
                PypiMirror(config.pip_index_url, cache, self._fetcher, clock, page_ttl_s=config.page_ttl_s)
            )
        if _is_http(config.npm_registry_url):
            cache = ArtifactCache(config.cache_dir / "npm", self._fetcher)
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

    async def detach(self, sandbox_id: str) -> None:
        await self._proxy.close(sandbox_id)

    def is_attached(self, sandbox_id: str) -> bool:
        return self._proxy.is_serving(sandbox_id)

    async def aclose(self) -> None:
        await self._proxy.aclose()
        self._fetcher.close()


def _is_http(url: str | None) -> bool:
    return url is not None and url.split(":", 1)[0].lower() in ("http", "https")
