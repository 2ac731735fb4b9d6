"""Commands in a sandbox (async core): run in the foreground or background, list, signal, feed stdin.

Convention: `run` returns a CommandResult whatever the exit code (`check=False`); pass
`check=True` to get CommandExitError for a non-zero exit, a timeout or a failure to run.
"""

from __future__ import annotations

import contextlib
import enum
import signal as signals
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, overload

from agentcell.client.api import ApiClient, parse_model, request_body, segment
from agentcell.client.command_wire import FOREGROUND_TIMEOUT_S as FOREGROUND_TIMEOUT_S  # (its public name)
from agentcell.client.command_wire import command_fields
from agentcell.client.errors import NotFoundError

# The wire models of commands (and client.events, built on them) are imported by the functions
# that use them: every sandbox has an AsyncCommands, and `Sandbox.create()` alone needs neither.
if TYPE_CHECKING:
    from agentcell.client.events import CommandResult, OutputCallback
    from agentcell.protocol.commands import CommandEvent, ProcessInfo

Signal = str | int
"""A signal by name ("SIGTERM") or number (15)."""


class _Default(enum.Enum):
    TOKEN = 0


DEFAULT: Final = _Default.TOKEN
"""`timeout_s` not given: 60 s in the foreground, no limit in the background."""


def signal_name(sig: Signal) -> str:
    return signals.Signals(sig).name if isinstance(sig, int) else sig


async def send_signal(api: ApiClient, process_path: str, sig: Signal) -> None:
    from agentcell.protocol.commands import SignalRequest

    body = request_body(SignalRequest, {"signal": signal_name(sig)})
    await api.call("POST", f"{process_path}/signal", json=body)


async def write_stdin(api: ApiClient, process_path: str, data: str, close: bool) -> None:
    from agentcell.protocol.commands import StdinWrite

    body = request_body(StdinWrite, {"data": data, "close": close})
    await api.call("POST", f"{process_path}/stdin", json=body)


class AsyncCommandHandle:
    """A background process: follow its output, wait for its end, feed its stdin, signal it."""

    def __init__(self, api: ApiClient, sandbox_id: str, info: ProcessInfo) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{segment(sandbox_id)}/processes/{segment(info.process_id)}"
        self.info = info

    @property
    def process_id(self) -> str:
        return self.info.process_id

    @property
    def pid(self) -> int:
        return self.info.pid

    def __repr__(self) -> str:
        return f"<AsyncCommandHandle {self.process_id} pid={self.pid}>"

    async def events(self) -> AsyncGenerator[CommandEvent, None]:
        """The output still buffered by the server, then live output, then the one `end` event."""
        from agentcell.client.events import parse_events

        async with self._api.stream("GET", f"{self._base}/events", wait_forever=True) as response:
            async for event in parse_events(response.aiter_lines()):
                yield event

    async def wait(
        self,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Block until the process ends. The output is what the server still buffers (a bounded
        window), so a chatty process's early output may be missing."""
        from agentcell.client.events import collect

        async with contextlib.aclosing(self.events()) as events:
            result = await collect(events, on_stdout, on_stderr)
        return result.check() if check else result

    async def send_stdin(self, data: str, *, close: bool = False) -> None:
        await write_stdin(self._api, self._base, data, close)

    async def close_stdin(self) -> None:
        await self.send_stdin("", close=True)

    async def signal(self, sig: Signal) -> None:
        await send_signal(self._api, self._base, sig)

    async def kill(self) -> None:
        """SIGKILL; a process that has already ended is left as it is."""
        await self.signal("SIGKILL")

    async def resize(self, rows: int, cols: int) -> None:
        """Set the window of a terminal (see AsyncCommands.open_terminal); it gets SIGWINCH."""
        from agentcell.protocol.commands import PtySize

        body = request_body(PtySize, {"rows": rows, "cols": cols})
        await self._api.call("POST", f"{self._base}/resize", json=body)


class AsyncCommands:
    """`sandbox.commands`: the processes of one sandbox."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._sandbox_id = sandbox_id
        self._base = f"/v1/sandboxes/{segment(sandbox_id)}"

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[False] = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = FOREGROUND_TIMEOUT_S,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
    ) -> AsyncCommandHandle: ...

    @overload
    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult | AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | _Default | None = DEFAULT,
        stdin: str | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult | AsyncCommandHandle:
        """Run `cmd`: a string goes to `bash -c`, a sequence runs as argv. Foreground: return the
        CommandResult when it ends (output handed to on_stdout/on_stderr as it comes), whatever its
        exit code unless `check=True`. `timeout_s` (default 60, None: no limit) kills it and sets
        `timed_out`. Background: return an AsyncCommandHandle at once; the default `timeout_s` is
        then None (it lives as long as the sandbox). `stdin` is written, then closed."""
        return await self._run_any(
            cmd,
            background=background,
            env=env,
            cwd=cwd,
            timeout_s=timeout_s,
            stdin=stdin,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
            check=check,
        )

    async def _run_any(
        self,
        cmd: str | Sequence[str],
        *,
        background: bool,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout_s: float | _Default | None,
        stdin: str | None,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
        check: bool,
    ) -> CommandResult | AsyncCommandHandle:
        """The one implementation behind `run`, here and in the sync twin (which cannot call an
        overloaded `run` with a plain `bool`)."""
        from agentcell.client.events import collect
        from agentcell.protocol.commands import ProcessInfo

        if background and (on_stdout or on_stderr or check):
            raise TypeError("on_stdout, on_stderr and check belong to handle.wait() for background commands")
        body = command_body(cmd, background, env, cwd, timeout_s, stdin)
        if background:
            response = await self._api.call("POST", f"{self._base}/commands", json=body)
            return AsyncCommandHandle(self._api, self._sandbox_id, parse_model(ProcessInfo, response))
        async with contextlib.aclosing(self._stream(body)) as events:
            result = await collect(events, on_stdout, on_stderr)
        return result.check() if check else result

    async def _stream(self, body: dict[str, Any]) -> AsyncGenerator[CommandEvent, None]:
        from agentcell.client.events import parse_events

        async with self._api.stream(
            "POST", f"{self._base}/commands", json=body, wait_forever=True, run_limit_s=body["timeout_s"]
        ) as response:
            async for event in parse_events(response.aiter_lines()):
                yield event

    async def open_terminal(
        self,
        cmd: str | Sequence[str] = ("/bin/bash", "-l"),
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncCommandHandle:
        """Start `cmd` (a login bash by default) on a new terminal of `rows` x `cols` in the
        sandbox, in the background: type into it with `send_stdin` (a terminal's input is never
        closed), read its output (one `stdout` stream, with the terminal's echo and \\r\\n) from
        `events()`/`wait()`, `resize` it, `kill` it. TERM is xterm-256color unless `env` says."""
        from agentcell.protocol.commands import ProcessInfo, PtySize

        body = command_body(cmd, True, env, cwd, timeout_s, None)
        body["pty"] = request_body(PtySize, {"rows": rows, "cols": cols})
        response = await self._api.call("POST", f"{self._base}/commands", json=body)
        return AsyncCommandHandle(self._api, self._sandbox_id, parse_model(ProcessInfo, response))

    async def list(self) -> list[ProcessInfo]:
        """Background processes, running and ended."""
        from agentcell.protocol.commands import ProcessList

        return (await self._api.call_model(ProcessList, "GET", f"{self._base}/processes")).processes

    async def connect(self, process: str | int) -> AsyncCommandHandle:
        """A handle on a background process, by process id ("proc_…") or in-sandbox pid."""
        return AsyncCommandHandle(self._api, self._sandbox_id, await self._find(process))

    async def kill(self, process: str | int, sig: Signal = "SIGKILL") -> None:
        """Signal a background process, by process id or pid (SIGKILL unless `sig` says otherwise)."""
        await send_signal(self._api, await self._process_path(process), sig)

    async def send_stdin(self, process: str | int, data: str, *, close: bool = False) -> None:
        await write_stdin(self._api, await self._process_path(process), data, close)

    async def _process_path(self, process: str | int) -> str:
        process_id = process if isinstance(process, str) else (await self._find(process)).process_id
        return f"{self._base}/processes/{segment(process_id)}"

    async def _find(self, process: str | int) -> ProcessInfo:
        known = await self.list()
        if isinstance(process, str):
            found = [p for p in known if p.process_id == process]
        else:  # a pid can be reused: prefer the running process, then the latest one
            found = sorted((p for p in known if p.pid == process), key=lambda p: p.running)
        if not found:
            raise NotFoundError(f"no process {process!r} in sandbox {self._sandbox_id}; see commands.list()")
        return found[-1]


def command_body(
    cmd: str | Sequence[str],
    background: bool,
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout_s: float | _Default | None,
    stdin: str | None,
) -> dict[str, Any]:
    from agentcell.protocol.commands import CommandRequest

    if timeout_s is DEFAULT:
        timeout_s = None if background else FOREGROUND_TIMEOUT_S
    return request_body(CommandRequest, command_fields(cmd, background, env, cwd, timeout_s, stdin))
