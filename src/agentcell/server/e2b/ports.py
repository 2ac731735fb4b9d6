"""SandboxPorts for the gateway: E2B's `{port}-{sandboxId}.{domain}` hosts reach processes
listening inside a sandbox through a socket the driver opens in its network namespace."""

from __future__ import annotations

import socket

from agentcell.errors import NotFound
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.sandboxes import SandboxService


class E2bPorts:
    def __init__(self, sandboxes: SandboxService, driver: SandboxDriver, domain: str | None) -> None:
        self._sandboxes = sandboxes
        self._driver = driver
        self.domain = domain.lower().encode() if domain else None

    def is_running(self, sandbox_id: str) -> bool:
        try:
            return self._sandboxes.get(sandbox_id).state == "running"
        except NotFound:
            return False

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        return await self._driver.connect(self._sandboxes.running(sandbox_id).id, port)
