"""SandboxPorts for the gateway: E2B's `{port}-{sandboxId}.{domain}` hosts reach processes
listening inside a sandbox through a socket the driver opens in its network namespace, unless the
sandbox is private (`allowPublicTraffic: false`) and the request lacks its traffic access token.
A request for a paused sandbox created with `auto_resume` resumes it first."""

from __future__ import annotations

import socket

from agentcell.errors import AgentcellError, NotFound
from agentcell.protocol.sandboxes import PORT_PLACEHOLDER
from agentcell.server.gateway.route import UpstreamGone
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.traffic import PrivateTraffic


class E2bPorts:
    def __init__(
        self,
        sandboxes: SandboxService,
        pauses: SandboxPauses,
        driver: SandboxDriver,
        domain: str | None,
    ) -> None:
        self._sandboxes = sandboxes
        self._pauses = pauses
        self._driver = driver
        self._traffic: PrivateTraffic = sandboxes.traffic  # (the private sandboxes of every API)
        self.domain = domain.lower().encode() if domain else None

    def is_reachable(self, sandbox_id: str) -> bool:
        paused = self._pauses.paused(sandbox_id)
        if paused is not None:
            return paused.sandbox.request.auto_resume
        try:
            return self._sandboxes.get(sandbox_id).state == "running"
        except NotFound:
            return False

    def admits(self, sandbox_id: str, token: bytes | None) -> bool:
        paused = self._pauses.paused(sandbox_id)
        if (
            paused is not None
            and self._pauses.resuming is not None
            and not self._traffic.is_private(sandbox_id)
        ):
            # After a restart only its paused record says a sandbox is private: it is made so
            # before a request can resume it, by what its resume does first.
            self._pauses.resuming(paused)
        return self._traffic.admits(sandbox_id, token)

    def host_header(self, sandbox_id: str, port: int) -> bytes | None:
        try:
            host = self._pauses.get(sandbox_id).request.ports_host
        except NotFound:
            return None
        return None if host is None else host.replace(PORT_PLACEHOLDER, str(port)).encode()

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        try:
            await self._pauses.wake(sandbox_id)
        except AgentcellError as exc:
            raise UpstreamGone(
                f"sandbox {sandbox_id} is paused and could not be resumed: {exc.message}"
            ) from exc
        return await self._driver.connect(self._sandboxes.running(sandbox_id).id, port)
