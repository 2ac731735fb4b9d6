"""SandboxPorts for the gateway: E2B's `{port}-{sandboxId}.{domain}` hosts reach processes
listening inside a sandbox through a socket the driver opens in its network namespace, unless the
sandbox is private (`allowPublicTraffic: false`) and the request lacks its traffic access token."""

from __future__ import annotations

import socket

from agentcell.errors import NotFound
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.traffic import PrivateTraffic


class E2bPorts:
    def __init__(
        self,
        sandboxes: SandboxService,
        driver: SandboxDriver,
        domain: str | None,
        traffic: PrivateTraffic,
    ) -> None:
        """`traffic`: the E2B mount's (`E2bMount.registry.traffic`), which knows the private
        sandboxes."""
        self._sandboxes = sandboxes
        self._driver = driver
        self._traffic = traffic
        self.domain = domain.lower().encode() if domain else None

    def is_running(self, sandbox_id: str) -> bool:
        try:
            return self._sandboxes.get(sandbox_id).state == "running"
        except NotFound:
            return False

    def admits(self, sandbox_id: str, token: bytes | None) -> bool:
        return self._traffic.admits(sandbox_id, token)

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        return await self._driver.connect(self._sandboxes.running(sandbox_id).id, port)
