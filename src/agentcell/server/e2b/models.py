"""E2B control-plane wire models (JSON field names as E2B's OpenAPI spec spells them).

Requests accept fields E2B's SDKs send that agentcell does not act on only where ignoring them is
harmless (`secure`: every sandbox has an access token anyway); the others are refused by
`SandboxCreateE2b.unsupported()` with a message that says why.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from agentcell.protocol.common import NumbersNotBooleans
from agentcell.protocol.sandboxes import MAX_TIMEOUT_S

ENVD_VERSION = "0.5.7"
"""The newest envd behaviour implemented here (octet-stream and gzip uploads, close_stdin); the SDK
switches features on by it. 0.6.x adds file metadata in xattrs, which agentcell does not keep."""
CLIENT_ID = "agentcell"


ALL_TRAFFIC = "0.0.0.0/0"
"""E2B's `ALL_TRAFFIC`: the one `denyOut` entry agentcell's allowlist egress can express"""


class E2bRequest(NumbersNotBooleans):
    """E2B's request bodies: fields agentcell does not use are ignored (the SDKs send more)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class NetworkE2b(E2bRequest):
    allow_out: list[str] = Field(default_factory=list, alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, alias="denyOut")
    allow_public_traffic: bool | None = Field(default=None, alias="allowPublicTraffic")
    mask_request_host: str | None = Field(default=None, alias="maskRequestHost")


class AutoResumeE2b(E2bRequest):
    enabled: bool = False


class SandboxCreateE2b(E2bRequest):
    template_id: str = Field(alias="templateID", min_length=1, max_length=128)
    timeout: int = Field(default=300, ge=1, le=MAX_TIMEOUT_S)
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict, alias="envVars")
    auto_pause: bool = Field(default=False, alias="autoPause")
    auto_pause_memory: bool | None = Field(default=None, alias="autoPauseMemory")
    """ignored: every pause keeps the filesystem only (docs/e2b.md)"""
    auto_resume: AutoResumeE2b | None = Field(default=None, alias="autoResume")
    allow_internet_access: bool | None = None
    network: NetworkE2b | None = None
    secure: bool | None = None
    mcp: dict[str, Any] | None = None
    volume_mounts: list[dict[str, Any]] | None = Field(default=None, alias="volumeMounts")

    @property
    def resumes_itself(self) -> bool:
        return self.auto_resume is not None and self.auto_resume.enabled

    def unsupported(self) -> str | None:
        """Why agentcell cannot honour this request as asked, or None."""
        if self.resumes_itself and not self.auto_pause:
            return (
                "autoResume needs autoPause: only a sandbox paused at its timeout can resume; "
                "create it with lifecycle={'on_timeout': 'pause', 'auto_resume': True}"
            )
        if self.mcp:
            return "the MCP gateway is an E2B-cloud feature; agentcell serves MCP at /mcp instead"
        if self.volume_mounts:
            return "volume mounts are not available on agentcell's E2B API"
        return None


class ConnectE2b(E2bRequest):
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_S)
    memory: bool | None = None
    """`false`: reboot from the filesystem, which is what every resume here does"""


class PauseE2b(E2bRequest):
    """Both fields are accepted and change nothing: a pause keeps the filesystem only (memory is
    not snapshotted), and the sandbox must answer to be paused anyway (its files are read)."""

    memory: bool | None = None
    require_healthy_guest: bool | None = Field(default=None, alias="requireHealthyGuest")


class NetworkUpdateE2b(E2bRequest):
    """`PUT /sandboxes/{id}/network`: the new egress rules, replacing the old (omitted: cleared)."""

    allow_out: list[str] = Field(default_factory=list, alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, alias="denyOut")
    allow_internet_access: bool | None = Field(default=None, alias="allowInternetAccess")
    dns_servers: list[str] | None = Field(default=None, alias="dnsServers")
    """ignored: a sandbox's names are resolved by the node's egress proxy, not by DNS servers"""
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    rules: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        if self.egress_proxy:
            return "egressProxy is an E2B-cloud feature: agentcell's sandboxes go out through its own proxy"
        if self.rules:
            return "per-domain transform rules are an E2B-cloud feature, not available on agentcell"
        return None


class TimeoutE2b(E2bRequest):
    timeout: int = Field(ge=0, le=MAX_TIMEOUT_S)


class SnapshotE2b(E2bRequest):
    """`memory` is accepted and changes nothing: a snapshot keeps the filesystem only."""

    name: str | None = None
    memory: bool | None = None


class ForkE2b(E2bRequest):
    timeout: int | None = Field(default=None, ge=1, le=MAX_TIMEOUT_S)
    """the forks' timeout; without it, the source sandbox's (what it was created with)"""
    count: int = 1
    """checked by the scheduler (1..20), which says so in its message"""
