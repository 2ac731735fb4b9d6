"""E2B control-plane wire models (JSON field names as E2B's OpenAPI spec spells them).

Requests accept fields E2B's SDKs send that agentcell does not act on only where ignoring them is
harmless (`secure`: every sandbox has an access token anyway); the others are refused by
`SandboxCreateE2b.unsupported()` with a message that says why.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentcell.protocol.sandboxes import MAX_TIMEOUT_S

ENVD_VERSION = "0.5.7"
"""The newest envd behaviour implemented here (octet-stream and gzip uploads, close_stdin); the SDK
switches features on by it. 0.6.x adds file metadata in xattrs, which agentcell does not keep."""
CLIENT_ID = "agentcell"


class E2bRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class NetworkE2b(E2bRequest):
    allow_out: list[str] = Field(default_factory=list, alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, alias="denyOut")
    allow_public_traffic: bool | None = Field(default=None, alias="allowPublicTraffic")


class SandboxCreateE2b(E2bRequest):
    template_id: str = Field(alias="templateID", min_length=1, max_length=128)
    timeout: int = Field(default=300, ge=1, le=MAX_TIMEOUT_S)
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    auto_pause: bool = Field(default=False, alias="autoPause")
    allow_internet_access: bool | None = None
    network: NetworkE2b | None = None
    secure: bool | None = None
    mcp: dict[str, Any] | None = None
    volume_mounts: list[dict[str, Any]] | None = Field(default=None, alias="volumeMounts")

    def unsupported(self) -> str | None:
        """Why agentcell cannot honour this request as asked, or None."""
        if self.auto_pause:
            return "autoPause is not available: agentcell cannot pause a sandbox yet (it ends at its timeout)"
        if self.mcp:
            return "the MCP gateway is an E2B-cloud feature; agentcell serves MCP at /mcp instead"
        if self.volume_mounts:
            return "volume mounts are not available on agentcell's E2B API"
        if self.network and self.network.deny_out:
            return "network.denyOut is not available; use network.allowOut (an allowlist) instead"
        return None


class ConnectE2b(E2bRequest):
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_S)


class TimeoutE2b(E2bRequest):
    timeout: int = Field(ge=0, le=MAX_TIMEOUT_S)
