"""The domain error tree, shared by every layer below the HTTP edge.

    AgentcellError            code            (HTTP status, chosen once in server/api/errors.py)
    ├── InvalidArgument       invalid_argument     400
    ├── Unauthenticated       unauthenticated      401
    ├── PermissionDenied      permission_denied    403
    ├── NotFound              not_found            404
    ├── Conflict              conflict             409
    │   ├── NotRunning        not_running          409
    │   └── WorkspaceCorrupt  workspace_corrupt    409
    ├── PayloadTooLarge       payload_too_large    413
    ├── QuotaExceeded         quota_exceeded       429
    ├── Timeout               timeout              504
    ├── Unavailable           unavailable          503
    └── Internal              internal             500

Messages say what to change ("memory_mb must be between 64 and 65536, got 0"), never how the
server failed inside. Nothing here knows about HTTP.
"""

from __future__ import annotations


class AgentcellError(Exception):
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AgentcellError):
    code = "invalid_argument"


class Unauthenticated(AgentcellError):
    code = "unauthenticated"


class PermissionDenied(AgentcellError):
    code = "permission_denied"


class NotFound(AgentcellError):
    code = "not_found"


class Conflict(AgentcellError):
    code = "conflict"


class NotRunning(Conflict):
    code = "not_running"


class WorkspaceCorrupt(Conflict):
    """A stored workspace cannot be restored (its snapshot is missing or damaged)."""

    code = "workspace_corrupt"


class PayloadTooLarge(AgentcellError):
    code = "payload_too_large"


class QuotaExceeded(AgentcellError):
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Timeout(AgentcellError):
    code = "timeout"


class Unavailable(AgentcellError):
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Internal(AgentcellError):
    code = "internal"


ERRORS_BY_CODE: dict[str, type[AgentcellError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Conflict,
        NotRunning,
        WorkspaceCorrupt,
        PayloadTooLarge,
        QuotaExceeded,
        Timeout,
        Unavailable,
        Internal,
    )
}
