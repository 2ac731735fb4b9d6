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
from agentcell.client.files import AsyncFiles
from agentcell.client.functions import AsyncFunctions, HookSpec
from agentcell.client.sandbox import AsyncSandbox, SandboxOpening
from agentcell.client.sessions import AsyncSessions, AsyncWorkspaces
from agentcell.client.sync import CommandHandle, Commands, Files, Sandbox
from agentcell.client.sync_agentcell import Agentcell, Functions, Sessions, Workspaces
from agentcell.client.sync_templates import Templates
from agentcell.client.templates import AsyncTemplates, TemplateBuildError, load_recipe
from agentcell.protocol.code import CodeContextInfo
from agentcell.protocol.commands import CommandEvent, EndEvent, OutputEvent, ProcessInfo, StartEvent
from agentcell.protocol.files import FileEntry
from agentcell.protocol.functions import Affinity, FunctionConfig, FunctionInfo, Hook, WorkspaceConfig
from agentcell.protocol.sandboxes import SandboxInfo
from agentcell.protocol.sessions import SessionInfo
from agentcell.protocol.templates import BuildEvent, Recipe, TemplateBuildInfo, TemplateInfo
from agentcell.protocol.tenants import KeyCreated, KeyInfo, TenantInfo, TenantQuotas
from agentcell.protocol.usage import UsageLine, UsageReport
from agentcell.protocol.workspaces import SnapshotInfo, WorkspaceInfo, WorkspaceList

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
    "AsyncFiles",
    "AsyncFunctions",
    "AsyncSandbox",
    "AsyncSessions",
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
    "SandboxTimeoutError",
    "SessionInfo",
    "Sessions",
    "SnapshotInfo",
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
