"""Stateful code in a sandbox (async core): `run_code` and code contexts.

    r = await sbx.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2]}).a.sum()")
    r.text                      # "3": the main result's text/plain
    r.results[0].png            # base64 PNG, when the code showed a figure
    r.logs.stdout, r.error      # printed lines; the exception, if one was raised

An execution that raises is a result (`r.error`), not an SDK exception, like a failed command.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import ValidationError

from agentcell.client.api import ApiClient, request_body, segment
from agentcell.client.errors import ProtocolError

# The wire models of code (agentcell.protocol.code) are imported by the functions that use them:
# every sandbox has an AsyncCode, and most scripts never run code, so they would build these
# pydantic models for nothing.
if TYPE_CHECKING:
    from agentcell.protocol.code import CodeContextInfo, CodeEndEvent, CodeEvent

DEFAULT_CODE_TIMEOUT_S = 60.0
"""`run_code`'s default timeout (agentcell.protocol.code.DEFAULT_TIMEOUT_S, the server's too)."""
TABLE_MIME = "application/vnd.agentcell.table+json"
CHART_MIME = "application/vnd.agentcell.chart+json"
"""(agentcell.protocol.code's, as the kernel sends them)"""
Callback = Callable[[Any], object]
"""Called with each stdout/stderr chunk (str), Result or ExecutionError; plain or async."""
ContextRef: TypeAlias = "CodeContextInfo | str"
"""A context, or its id."""


@dataclass(frozen=True, slots=True)
class Result:
    """One rich output (a MIME bundle). `is_main_result`: the value of the code's last expression
    (Jupyter's execute_result); other results were displayed (a figure, `display(...)`)."""

    data: dict[str, Any]
    is_main_result: bool = False

    def _get(self, mime: str) -> str | None:
        value = self.data.get(mime)
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        return self._get("text/plain")

    @property
    def html(self) -> str | None:
        return self._get("text/html")

    @property
    def markdown(self) -> str | None:
        return self._get("text/markdown")

    @property
    def svg(self) -> str | None:
        return self._get("image/svg+xml")

    @property
    def png(self) -> str | None:
        """base64, as Jupyter sends it"""
        return self._get("image/png")

    @property
    def jpeg(self) -> str | None:
        return self._get("image/jpeg")

    @property
    def latex(self) -> str | None:
        return self._get("text/latex")

    @property
    def json(self) -> Any:
        return self.data.get("application/json")

    @property
    def javascript(self) -> str | None:
        return self._get("application/javascript")

    @property
    def table(self) -> dict[str, list[Any]] | None:
        """A pandas DataFrame's columns, `{"column": [value, ...]}` (frames up to 50,000 cells)."""
        value = self.data.get(TABLE_MIME)
        return value if isinstance(value, dict) else None

    @property
    def chart(self) -> dict[str, Any] | None:
        """A matplotlib figure's data (`type`: line, scatter, bar, pie, box_and_whisker, superchart or
        unknown; then `title`, `elements` and, for 2D charts, labels, units, ticks and scales), as
        E2B's."""
        value = self.data.get(CHART_MIME)
        return value if isinstance(value, dict) else None

    def formats(self) -> list[str]:
        return sorted(self.data)


@dataclass(frozen=True, slots=True)
class ExecutionError:
    """What the code raised: `name` ("ZeroDivisionError", "TimeoutError", "ExitCode" for bash),
    `value` (the message) and the traceback as text."""

    name: str
    value: str
    traceback: str


@dataclass(slots=True)
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Execution:
    """Everything one `run_code` produced. `status`: ok, error, timeout or kernel_died;
    `restarted`: the kernel was replaced (its state is gone)."""

    context_id: str = ""
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    status: str = "ok"
    duration_ms: float = 0.0
    timed_out: bool = False
    restarted: bool = False
    truncated_bytes: int = 0

    @property
    def text(self) -> str | None:
        """text/plain of the main result (the last expression's value), if there is one."""
        main = next((r for r in self.results if r.is_main_result), None)
        return main.text if main else None

    def _finish(self, end: CodeEndEvent) -> Execution:
        self.context_id = end.context_id
        self.execution_count = end.execution_count
        self.status = end.status
        self.duration_ms = end.duration_ms
        self.timed_out = end.timed_out
        self.restarted = end.restarted
        self.truncated_bytes = end.truncated_bytes
        return self


@dataclass(frozen=True, slots=True)
class Callbacks:
    on_stdout: Callback | None = None
    on_stderr: Callback | None = None
    on_result: Callback | None = None
    on_error: Callback | None = None


async def _call(callback: Callback | None, value: Any) -> None:
    if callback is not None and inspect.isawaitable(returned := callback(value)):
        await returned


async def parse_code_events(lines: AsyncIterable[str]) -> AsyncGenerator[CodeEvent, None]:
    """Events of one NDJSON stream up to its `end`; a stream cut short raises ProtocolError."""
    from agentcell.protocol.code import CODE_EVENT, CodeEndEvent

    async for line in lines:
        if not line.strip():
            continue
        try:
            event = CODE_EVENT.validate_json(line)
        except ValidationError:
            raise ProtocolError(f"the code stream sent a line that is not an event: {line[:200]!r}") from None
        yield event
        if isinstance(event, CodeEndEvent):
            return
    raise ProtocolError("the code stream ended without its 'end' event; the outcome is unknown")


async def collect(events: AsyncIterable[CodeEvent], callbacks: Callbacks) -> Execution:
    """Add a stream up into an Execution, handing each piece to its callback as it comes."""
    from agentcell.protocol.code import CodeErrorEvent, CodeOutputEvent, CodeResultEvent

    execution = Execution()
    async for event in events:
        if isinstance(event, CodeOutputEvent):
            is_stdout = event.type == "stdout"
            (execution.logs.stdout if is_stdout else execution.logs.stderr).append(event.text)
            await _call(callbacks.on_stdout if is_stdout else callbacks.on_stderr, event.text)
        elif isinstance(event, CodeResultEvent):
            result = Result(dict(event.data), event.is_main_result)
            execution.results.append(result)
            await _call(callbacks.on_result, result)
        elif isinstance(event, CodeErrorEvent):
            execution.error = ExecutionError(event.name, event.value, event.traceback)
            await _call(callbacks.on_error, execution.error)
        else:
            return execution._finish(event)
    raise ProtocolError("the code stream ended without its 'end' event")


def context_id(context: ContextRef) -> str:
    return context if isinstance(context, str) else context.id


class AsyncCode:
    """The code contexts of one sandbox; AsyncSandbox's `run_code` and `*_code_context` use it."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{segment(sandbox_id)}/code"

    async def run(
        self,
        code: str,
        *,
        context: ContextRef | None,
        language: str | None,
        env: Mapping[str, str] | None,
        timeout_s: float | None,
        callbacks: Callbacks,
    ) -> Execution:
        from agentcell.protocol.code import CodeRun

        fields: dict[str, Any] = {"code": code, "timeout_s": timeout_s}
        optional = {
            "context_id": context_id(context) if context is not None else None,
            "language": language,
            "env": dict(env) if env else None,
        }
        fields |= {name: value for name, value in optional.items() if value is not None}
        body = request_body(CodeRun, fields)
        async with contextlib.aclosing(self._stream(body)) as events:
            return await collect(events, callbacks)

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[CodeEvent, None]:
        limit_s = body.get("timeout_s")
        async with self._api.stream(
            "POST", self._base, json=body, wait_forever=True, run_limit_s=limit_s
        ) as response:
            async for event in parse_code_events(response.aiter_lines()):
                yield event

    async def create_context(
        self, language: str, cwd: str | None, env: Mapping[str, str] | None
    ) -> CodeContextInfo:
        from agentcell.protocol.code import CodeContextCreate, CodeContextInfo

        given = {"language": language, "cwd": cwd, "env": dict(env) if env else None}
        body = request_body(CodeContextCreate, {k: v for k, v in given.items() if v is not None})
        return await self._api.call_model(CodeContextInfo, "POST", f"{self._base}/contexts", json=body)

    async def list_contexts(self) -> list[CodeContextInfo]:
        from agentcell.protocol.code import CodeContextList

        return (await self._api.call_model(CodeContextList, "GET", f"{self._base}/contexts")).contexts

    def _context_path(self, context: ContextRef) -> str:
        return f"{self._base}/contexts/{segment(context_id(context))}"

    async def restart_context(self, context: ContextRef) -> CodeContextInfo:
        from agentcell.protocol.code import CodeContextInfo

        return await self._api.call_model(CodeContextInfo, "POST", f"{self._context_path(context)}/restart")

    async def interrupt_context(self, context: ContextRef) -> None:
        await self._api.call("POST", f"{self._context_path(context)}/interrupt")

    async def remove_context(self, context: ContextRef) -> None:
        await self._api.call("DELETE", self._context_path(context))
