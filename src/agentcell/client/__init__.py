"""The agentcell Python SDK: async first (`AsyncSandbox`), with a sync twin (`Sandbox`) driving the
same core on a private event-loop thread.

    async with AsyncSandbox.create() as sbx:
        result = await sbx.commands.run("echo $((6*7))")   # CommandResult, whatever the exit code
        result.check()                                     # CommandExitError unless it succeeded

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hi").stdout)

Commands never raise for a non-zero exit unless asked (`check=True`). Server refusals raise the
`AgentcellAPIError` subclass of their code; an unreachable server raises AgentcellConnectionError.
"""

from agentcell.client.commands import AsyncCommandHandle, AsyncCommands
from agentcell.client.config import API_KEY_ENV, API_URL_ENV, DEFAULT_API_URL
from agentcell.client.errors import (
    AgentcellAPIError,
    AgentcellClientError,
    AgentcellConnectionError,
    AuthenticationError,
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
)
from agentcell.client.events import CommandResult
from agentcell.client.files import AsyncFiles
from agentcell.client.sandbox import AsyncSandbox, SandboxOpening
from agentcell.client.sync import CommandHandle, Commands, Files, Sandbox
from agentcell.protocol.commands import CommandEvent, EndEvent, OutputEvent, ProcessInfo, StartEvent
from agentcell.protocol.files import FileEntry
from agentcell.protocol.sandboxes import SandboxInfo

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "AgentcellAPIError",
    "AgentcellClientError",
    "AgentcellConnectionError",
    "AsyncCommandHandle",
    "AsyncCommands",
    "AsyncFiles",
    "AsyncSandbox",
    "AuthenticationError",
    "CommandEvent",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "ConflictError",
    "EndEvent",
    "FileEntry",
    "Files",
    "InternalServerError",
    "InvalidArgumentError",
    "NotFoundError",
    "NotRunningError",
    "OutputEvent",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProcessInfo",
    "ProtocolError",
    "QuotaExceededError",
    "Sandbox",
    "SandboxInfo",
    "SandboxOpening",
    "SandboxTimeoutError",
    "StartEvent",
    "UnavailableError",
    "UnsafeArchiveError",
]
