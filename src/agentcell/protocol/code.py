"""Stateful code: contexts (one kernel each) and the typed event stream of one execution.

An execution streams `stdout`/`stderr`, `result` (a MIME bundle; `is_main_result` for the value of
the last expression), `error` (name, value, traceback) and exactly one terminal `end`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, TypeAdapter

from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.sandboxes import EnvName, EnvValue

LANGUAGES = ("python", "javascript", "bash")
ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript", "sh": "bash"}
MAX_CODE_CHARS = 1 << 20
TABLE_MIME = "application/vnd.agentcell.table+json"
"""a result's pandas DataFrame as its columns, `{"column": [value, ...]}` (up to 50,000 cells)"""
CHART_MIME = "application/vnd.agentcell.chart+json"
"""a result's matplotlib figure as data: `line`, `scatter`, `bar`, `pie`, `box_and_whisker`,
`superchart` or `unknown`, in the shape of E2B's `Result.chart`"""
DEFAULT_TIMEOUT_S = 60.0


def _language(value: object) -> object:
    if not isinstance(value, str):
        return value
    name = ALIASES.get(value.strip().lower(), value.strip().lower())
    if name not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
    return name


Language = Annotated[Literal["python", "javascript", "bash"], BeforeValidator(_language)]
EnvValues = Annotated[dict[EnvName, EnvValue], Field(max_length=256)]
ContextId = Annotated[str, StringConstraints(pattern=r"^ctx_[0-9a-f]{1,32}$")]
SandboxDir = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^/"), NoNul]
Code = Annotated[str, StringConstraints(max_length=MAX_CODE_CHARS), NoNul]


class CodeContextCreate(WireModel):
    language: Language = "python"
    cwd: SandboxDir = "/home/user"
    env: EnvValues = Field(default_factory=dict, description="joins the sandbox's env for this kernel")


ContextState = Literal["new", "starting", "idle", "busy", "dead"]


class CodeContextInfo(ReplyModel):
    id: str
    language: str
    cwd: str
    env_keys: list[str]
    state: ContextState
    is_default: bool = Field(description="used by run requests that name no context")
    restarts: int = Field(description="times its kernel was replaced (state lost each time)")
    last_restart_reason: str | None = None
    execution_count: int = 0


class CodeContextList(ReplyModel):
    contexts: list[CodeContextInfo]


class CodeRun(WireModel):
    """Run `code` in `context_id`, or (without one) in the sandbox's default context of `language`."""

    code: Code
    context_id: ContextId | None = None
    language: Language | None = Field(default=None, description="default python; only without context_id")
    env: EnvValues = Field(default_factory=dict, description="set for this execution only")
    timeout_s: float | None = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, le=86400, description="then interrupt; null: no limit"
    )


class CodeOutputEvent(ReplyModel):
    type: Literal["stdout", "stderr"]
    text: str


class CodeResultEvent(ReplyModel):
    """A MIME bundle: "text/plain", "text/html", "image/png" (base64), "image/svg+xml",
    "application/json" (a JSON value), "text/markdown", TABLE_MIME and CHART_MIME (JSON objects), …"""

    type: Literal["result"] = "result"
    data: dict[str, Any]
    is_main_result: bool = False


class CodeErrorEvent(ReplyModel):
    type: Literal["error"] = "error"
    name: str
    value: str
    traceback: str


EndStatus = Literal["ok", "error", "timeout", "kernel_died"]


class CodeEndEvent(ReplyModel):
    """The one terminal event. `restarted`: the kernel was replaced (a hung kernel that ignored the
    interrupt after a timeout); the context's state is gone."""

    type: Literal["end"] = "end"
    context_id: str
    status: EndStatus
    execution_count: int | None = None
    duration_ms: float
    timed_out: bool = False
    restarted: bool = False
    truncated_bytes: int = Field(default=0, description="output dropped past the per-call cap")


CodeEvent = Annotated[
    CodeOutputEvent | CodeResultEvent | CodeErrorEvent | CodeEndEvent, Field(discriminator="type")
]
CODE_EVENT: TypeAdapter[CodeEvent] = TypeAdapter(CodeEvent)
CONTEXT_HEADER = "x-agentcell-context"
