"""The agentcell Python SDK: async first (`AsyncSandbox`), with a sync twin (`Sandbox`) driving the
same core on a private event-loop thread.

    async with AsyncSandbox.create() as sbx:
        result = await sbx.commands.run("echo $((6*7))")   # CommandResult, whatever the exit code
        result.check()                                     # CommandExitError unless it succeeded

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hi").stdout)

Functions and their sessions hang off a client object (`AsyncAgentcell`, sync twin `Agentcell`):

    async with AsyncAgentcell() as client:
        await client.functions.deploy("chat", "./my-agent", cmd="python3 app.py", min_warm=2)
        session = await client.sessions.create("chat", key="alice-1", ttl_s=3600)

Commands never raise for a non-zero exit unless asked (`check=True`). Server refusals raise the
`AgentcellAPIError` subclass of their code; an unreachable server raises AgentcellConnectionError.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentcell.client.agentcell import AsyncAgentcell
    from agentcell.client.code import Execution, ExecutionError, Logs, Result
    from agentcell.client.commands import AsyncCommandHandle, AsyncCommands
    from agentcell.client.config import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL
    from agentcell.client.errors import (
        AgentcellAPIError,
        AgentcellClientError,
        AgentcellConnectionError,
        AuthenticationError,
        ClientClosedError,
        CommandExitError,
        ConflictError,
        InternalServerError,
        InvalidArgumentError,
        NotFoundError,
        NotRunningError,
        PayloadTooLargeError,
        PermissionDeniedError,
        ProtocolError,
        QuotaExceededError,
        SandboxTimeoutError,
        UnavailableError,
        UnsafeArchiveError,
        WorkspaceCorruptError,
    )
    from agentcell.client.events import CommandResult
    from agentcell.client.file_watch import AsyncFileWatch, FileEvent
    from agentcell.client.files import AsyncFiles
    from agentcell.client.functions import AsyncFunctions, HookSpec
    from agentcell.client.sandbox import AsyncSandbox, SandboxOpening
    from agentcell.client.sessions import AsyncSessions, AsyncWorkspaces
    from agentcell.client.snapshots import AsyncSnapshots
    from agentcell.client.sync import CommandHandle, Commands, Files, FileWatch, Sandbox, Snapshots
    from agentcell.client.sync_agentcell import Agentcell, Functions, Sessions, Workspaces
    from agentcell.client.sync_templates import Templates
    from agentcell.client.templates import AsyncTemplates, TemplateBuildError, load_recipe
    from agentcell.protocol.code import CodeContextInfo
    from agentcell.protocol.commands import CommandEvent, EndEvent, OutputEvent, ProcessInfo, StartEvent
    from agentcell.protocol.files import FileEntry
    from agentcell.protocol.functions import Affinity, FunctionConfig, FunctionInfo, Hook, WorkspaceConfig
    from agentcell.protocol.sandboxes import SandboxInfo
    from agentcell.protocol.sessions import SessionInfo
    from agentcell.protocol.snapshots import SandboxSnapshotInfo
    from agentcell.protocol.templates import BuildEvent, Recipe, TemplateBuildInfo, TemplateInfo
    from agentcell.protocol.tenants import KeyCreated, KeyInfo, TenantInfo, TenantQuotas
    from agentcell.protocol.usage import UsageLine, UsageReport
    from agentcell.protocol.workspaces import SnapshotInfo, WorkspaceInfo, WorkspaceList

# Where each public name lives. A name is imported on first use (PEP 562 `__getattr__`), so
# `from agentcell.client import Sandbox` loads what a Sandbox needs and not the whole SDK: every
# module here builds pydantic models at import, and the `agentcell` CLI pays that on each run.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "agentcell.client.agentcell": ("AsyncAgentcell",),
    "agentcell.client.code": ("Execution", "ExecutionError", "Logs", "Result"),
    "agentcell.client.commands": ("AsyncCommandHandle", "AsyncCommands"),
    "agentcell.client.config": ("API_KEY_ENV", "API_URL_ENV", "DEFAULT_API_URL"),
    "agentcell.client.errors": (
        "AgentcellAPIError",
        "AgentcellClientError",
        "AgentcellConnectionError",
        "AuthenticationError",
        "ClientClosedError",
        "CommandExitError",
        "ConflictError",
        "InternalServerError",
        "InvalidArgumentError",
        "NotFoundError",
        "NotRunningError",
        "PayloadTooLargeError",
        "PermissionDeniedError",
        "ProtocolError",
        "QuotaExceededError",
        "SandboxTimeoutError",
        "UnavailableError",
        "UnsafeArchiveError",
        "WorkspaceCorruptError",
    ),
    "agentcell.client.events": ("CommandResult",),
    "agentcell.client.file_watch": ("AsyncFileWatch", "FileEvent"),
    "agentcell.client.files": ("AsyncFiles",),
    "agentcell.client.functions": ("AsyncFunctions", "HookSpec"),
    "agentcell.client.sandbox": ("AsyncSandbox", "SandboxOpening"),
    "agentcell.client.sessions": ("AsyncSessions", "AsyncWorkspaces"),
    "agentcell.client.snapshots": ("AsyncSnapshots",),
    "agentcell.client.sync": ("CommandHandle", "Commands", "FileWatch", "Files", "Sandbox", "Snapshots"),
    "agentcell.client.sync_agentcell": ("Agentcell", "Functions", "Sessions", "Workspaces"),
    "agentcell.client.sync_templates": ("Templates",),
    "agentcell.client.templates": ("AsyncTemplates", "TemplateBuildError", "load_recipe"),
    "agentcell.protocol.code": ("CodeContextInfo",),
    "agentcell.protocol.commands": ("CommandEvent", "EndEvent", "OutputEvent", "ProcessInfo", "StartEvent"),
    "agentcell.protocol.files": ("FileEntry",),
    "agentcell.protocol.functions": ("Affinity", "FunctionConfig", "FunctionInfo", "Hook", "WorkspaceConfig"),
    "agentcell.protocol.sandboxes": ("SandboxInfo",),
    "agentcell.protocol.sessions": ("SessionInfo",),
    "agentcell.protocol.snapshots": ("SandboxSnapshotInfo",),
    "agentcell.protocol.templates": ("BuildEvent", "Recipe", "TemplateBuildInfo", "TemplateInfo"),
    "agentcell.protocol.tenants": ("KeyCreated", "KeyInfo", "TenantInfo", "TenantQuotas"),
    "agentcell.protocol.usage": ("UsageLine", "UsageReport"),
    "agentcell.protocol.workspaces": ("SnapshotInfo", "WorkspaceInfo", "WorkspaceList"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "Affinity",
    "Agentcell",
    "AgentcellAPIError",
    "AgentcellClientError",
    "AgentcellConnectionError",
    "AsyncAgentcell",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFileWatch",
    "AsyncFiles",
    "AsyncFunctions",
    "AsyncSandbox",
    "AsyncSessions",
    "AsyncSnapshots",
    "AsyncTemplates",
    "AsyncWorkspaces",
    "AuthenticationError",
    "BuildEvent",
    "ClientClosedError",
    "CodeContextInfo",
    "CommandEvent",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "EndEvent",
    "Execution",
    "ExecutionError",
    "FileEntry",
    "FileEvent",
    "FileWatch",
    "Files",
    "FunctionConfig",
    "FunctionInfo",
    "Functions",
    "Hook",
    "HookSpec",
    "InternalServerError",
    "InvalidArgumentError",
    "KeyCreated",
    "KeyInfo",
    "Logs",
    "NotFoundError",
    "NotRunningError",
    "OutputEvent",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "ProtocolError",
    "QuotaExceededError",
    "Recipe",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SandboxOpening",
    "SandboxSnapshotInfo",
    "SandboxTimeoutError",
    "SessionInfo",
    "Sessions",
    "SnapshotInfo",
    "Snapshots",
    "StartEvent",
    "TemplateBuildError",
    "TemplateBuildInfo",
    "TemplateInfo",
    "Templates",
    "TenantInfo",
    "TenantQuotas",
    "UnavailableError",
    "UnsafeArchiveError",
    "UsageLine",
    "UsageReport",
    "WorkspaceConfig",
    "WorkspaceCorruptError",
    "WorkspaceInfo",
    "WorkspaceList",
    "Workspaces",
    "load_recipe",
]


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
