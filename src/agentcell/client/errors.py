"""Everything the SDK raises, under one root.

AgentcellClientError                   any failure the SDK reports
├── AgentcellAPIError                  the server answered with an error envelope
│   ├── InvalidArgumentError           invalid_argument     400 (also raised before sending
│   │                                                        a request the wire models refuse)
│   ├── AuthenticationError            unauthenticated      401
│   ├── PermissionDeniedError          permission_denied    403
│   ├── NotFoundError                  not_found            404
│   ├── ConflictError                  conflict             409
│   │   ├── NotRunningError            not_running          409
│   │   └── WorkspaceCorruptError      workspace_corrupt    409
│   ├── PayloadTooLargeError           payload_too_large    413
│   ├── QuotaExceededError             quota_exceeded       429  (retry_after_s)
│   ├── InternalServerError            internal             500
│   ├── UnavailableError               unavailable          503  (retry_after_s)
│   └── SandboxTimeoutError            timeout              504  (also a builtins.TimeoutError)
├── AgentcellConnectionError           no answer: the server is unreachable or the connection
│                                      broke (also a builtins.ConnectionError); names the URL
├── ProtocolError                      an answer broke docs/api.md (a command stream without
│                                      its `end` event, a body that is not the promised model)
├── UnsafeArchiveError                 a downloaded archive held a member that would land outside
│                                      its destination (absolute path or `..`)
└── CommandExitError                   `commands.run(..., check=True)` and the command failed;
                                       `.result` holds the CommandResult
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentcell.client.events import CommandResult


class AgentcellClientError(Exception):
    """Root of every exception the SDK raises on purpose."""


class AgentcellAPIError(AgentcellClientError):
    """The server refused a request. `status` and `request_id` are None when the SDK refused it
    itself, before sending (a value the wire models do not accept)."""

    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.status = status
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f", request_id={self.request_id}" if self.request_id else ""
        return f"{self.message} [{self.code}{where}]"


class InvalidArgumentError(AgentcellAPIError):
    code = "invalid_argument"


class AuthenticationError(AgentcellAPIError):
    code = "unauthenticated"


class PermissionDeniedError(AgentcellAPIError):
    code = "permission_denied"


class NotFoundError(AgentcellAPIError):
    code = "not_found"


class ConflictError(AgentcellAPIError):
    code = "conflict"


class NotRunningError(ConflictError):
    code = "not_running"


class WorkspaceCorruptError(ConflictError):
    """A session's stored workspace could not be restored (missing or damaged snapshot)."""

    code = "workspace_corrupt"


class PayloadTooLargeError(AgentcellAPIError):
    code = "payload_too_large"


class QuotaExceededError(AgentcellAPIError):
    code = "quota_exceeded"


class InternalServerError(AgentcellAPIError):
    code = "internal"


class UnavailableError(AgentcellAPIError):
    code = "unavailable"


class SandboxTimeoutError(AgentcellAPIError, TimeoutError):
    """The server gave up waiting on the sandbox (504). Not a command's own `timeout_s`: that one
    ends the command with `CommandResult.timed_out`."""

    code = "timeout"


class AgentcellConnectionError(AgentcellClientError, ConnectionError):
    """No usable answer from the server at `url`."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ClientClosedError(AgentcellClientError):
    """A call on an SDK object after its `aclose()`/`close()` (or its `with` block ended)."""


class ProtocolError(AgentcellClientError):
    """An answer did not follow docs/api.md (e.g. a command stream ended without its `end` event)."""


class UnsafeArchiveError(AgentcellClientError):
    """An archive member would have been written outside the destination directory."""


class CommandExitError(AgentcellClientError):
    """Raised only when asked for (`check=True`): the command exited non-zero, was killed by its
    timeout, or could not run. The full output is on `.result`."""

    def __init__(self, result: CommandResult) -> None:
        super().__init__(_describe_failure(result))
        self.result = result

    @property
    def exit_code(self) -> int:
        return self.result.exit_code

    @property
    def stdout(self) -> str:
        return self.result.stdout

    @property
    def stderr(self) -> str:
        return self.result.stderr


def _describe_failure(result: CommandResult) -> str:
    if result.timed_out:
        head = f"command timed out (exit code {result.exit_code})"
    elif result.error:
        head = f"command failed: {result.error} (exit code {result.exit_code})"
    else:
        head = f"command exited with code {result.exit_code}"
    tail = result.stderr.strip().splitlines()[-3:]
    return head + (": " + " | ".join(tail) if tail else "")


API_ERRORS_BY_CODE: dict[str, type[AgentcellAPIError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        NotRunningError,
        WorkspaceCorruptError,
        PayloadTooLargeError,
        QuotaExceededError,
        InternalServerError,
        UnavailableError,
        SandboxTimeoutError,
    )
}

CODE_BY_STATUS: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "invalid_argument",
    409: "conflict",
    413: "payload_too_large",
    415: "invalid_argument",
    422: "invalid_argument",
    429: "quota_exceeded",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "timeout",
}
"""For answers without an envelope (a proxy's HTML page, say): the code their status implies."""
