"""envd's `process.Process` service over agentcell's processes: Start and Connect stream events;
List, SendInput, CloseStdin, SendSignal and Update are unary.

A Start with `pty` runs the command on a terminal of the sandbox (`TerminalService`): its output
travels as `data.pty`, input comes as `input.pty`, and Update resizes its window.

A Start stream's deadline (`connect-timeout-ms`, the SDK's `timeout`) is the command's timeout, as
in envd: past it the command is killed and the stream ends with `deadline_exceeded`. A client that
goes away does not stop the command (a background command's handle may disconnect).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agentcell.errors import AgentcellError, InvalidArgument, NotFound
from agentcell.protocol.commands import CommandRequest, EndEvent, OutputEvent, PtySize, StartEvent
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.registry import E2bRegistry, Extras
from agentcell.server.scheduler.processes import Event, ManagedProcess
from agentcell.server.scheduler.sandboxes import Sandbox
from agentcell.server.scheduler.terminals import TerminalService, terminal_size

KEEPALIVE_S = 30.0
OWNER_STALL_S = 10.0
"""The stream that started a command holds its output (none dropped) unless it reads nothing for
this long: E2B's SDK starts every command the same way, and a `background=True` one's stream may
be read only at `wait()`, so holding it forever would stall a chatty background process."""
SIGNALS = {"SIGNAL_SIGKILL": signal.SIGKILL, "SIGNAL_SIGTERM": signal.SIGTERM}
Message = dict[str, Any]
Batch = list[Event]


@dataclass(slots=True)
class ProcessConfig:
    """What envd's List reports of a process that agentcell does not keep itself."""

    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    tag: str | None = None
    process_ids: list[str] = field(default_factory=list)

    def wire(self) -> Message:
        config: Message = {"cmd": self.cmd, "args": self.args, "envs": self.envs}
        if self.cwd:
            config["cwd"] = self.cwd
        return config


def event_message(event: Event, terminal: bool = False) -> Message:
    if isinstance(event, StartEvent):
        return {"event": {"start": {"pid": event.pid}}}
    if isinstance(event, OutputEvent):
        kind = "pty" if terminal else event.type
        return {"event": {"data": {kind: base64.b64encode(event.data.encode()).decode()}}}
    return {"event": {"end": end_message(event)}}


def end_message(event: EndEvent) -> Message:
    end: Message = {"exitCode": event.exit_code, "exited": event.signal is None}
    if event.signal is None:
        end["status"] = f"exit status {event.exit_code}"
    else:
        end["status"] = f"signal: {signal.Signals(event.signal).name.removeprefix('SIG').lower()}"
    if event.error:
        end["error"] = event.error
    return end


def _text_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{name} must be a list of strings")
    return value


def _config(message: Message) -> ProcessConfig:
    process = message.get("process")
    if not isinstance(process, dict) or not isinstance(process.get("cmd"), str) or not process["cmd"]:
        raise InvalidArgument("process.cmd is required (the program to run)")
    envs = process.get("envs") or {}
    if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
        raise InvalidArgument("process.envs must map names to strings")
    cwd = process.get("cwd")
    tag = message.get("tag")
    return ProcessConfig(
        cmd=process["cmd"],
        args=_text_list(process.get("args"), "process.args"),
        envs=envs,
        cwd=cwd if isinstance(cwd, str) and cwd else None,
        tag=tag if isinstance(tag, str) and tag else None,
    )


def _pty_size(pty: object) -> PtySize:
    """envd's `PTY{size: {rows, cols}}` (proto3 JSON leaves a 0 out, so a missing one is 0)."""
    size = pty.get("size") if isinstance(pty, dict) else None
    if not isinstance(size, dict):
        raise InvalidArgument("pty.size is required: {rows, cols}")
    rows, cols = size.get("rows", 0), size.get("cols", 0)
    if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1000 for n in (rows, cols)):
        raise InvalidArgument(f"pty.size rows and cols must be between 1 and 1000, got {rows!r}x{cols!r}")
    return PtySize(rows=rows, cols=cols)


class ProcessService:
    def __init__(self, registry: E2bRegistry, terminals: TerminalService | None) -> None:
        self._registry = registry
        self._terminals = terminals

    # -- streams -----------------------------------------------------------------------------

    async def start(
        self, sandbox: Sandbox, message: Message, deadline_s: float | None
    ) -> AsyncIterator[Message]:
        config = _config(message)
        pty = _pty_size(message["pty"]) if message.get("pty") is not None else None
        request = CommandRequest(
            argv=[config.cmd, *config.args],
            env=config.envs,
            cwd=config.cwd or "/home/user",
            timeout_s=deadline_s,
            background=True,
            pty=pty,
        )
        process = await self._start(sandbox, request, stdin=bool(message.get("stdin")))
        extras = self._registry.extras(sandbox)
        self._remember(extras, process, config)
        batches = process.batches(holder=True, stall_s=OWNER_STALL_S)
        return self._follow(process, batches, extras, owned=True)

    async def _start(self, sandbox: Sandbox, request: CommandRequest, stdin: bool) -> ManagedProcess:
        if request.pty is not None:
            if self._terminals is None:
                raise RpcError("unimplemented", "this server has no terminal service")
            return await self._terminals.start(sandbox.id, request)
        process = await self._registry.sandboxes.start_process(sandbox.id, request)
        if not stdin:
            await process.write_stdin(b"", close=True)
        return process

    def connect(self, sandbox: Sandbox, message: Message) -> AsyncIterator[Message]:
        """Past MAX_FOLLOWERS streams of the process at once, `resource_exhausted` (raised here,
        so that it is the stream's only message)."""
        extras = self._registry.extras(sandbox)
        process = self._find(sandbox, extras, message.get("process"))
        return self._follow(process, process.follow(), extras, owned=False)

    async def _follow(
        self, process: ManagedProcess, batches: AsyncIterator[Batch], extras: Extras, *, owned: bool
    ) -> AsyncIterator[Message]:
        try:
            async for batch in keepalive(batches):
                if batch is None:
                    yield {"event": {"keepalive": {}}}
                    continue
                for event in batch:
                    yield self._message(event, process, extras)
        finally:
            if owned and process.exit is not None:
                self._forget(extras, process)

    def _message(self, event: Event, process: ManagedProcess, extras: Extras) -> Message:
        if isinstance(event, EndEvent) and event.timed_out:
            raise RpcError("deadline_exceeded", f"the command {event.error}; it was killed")
        if isinstance(event, EndEvent) and self._ended(extras.sandbox_id):
            # as when envd dies with its sandbox: the SDK probes /health and reports it gone
            raise RpcError("unavailable", f"the sandbox {extras.sandbox_id} stopped while the command ran")
        return event_message(event, process.terminal)

    def _ended(self, sandbox_id: str) -> bool:
        try:
            return self._registry.sandboxes.get(sandbox_id).state != "running"
        except NotFound:
            return True

    # -- unary -------------------------------------------------------------------------------

    def list(self, sandbox: Sandbox) -> Message:
        extras = self._registry.extras(sandbox)
        configs = {pid: c for c in _configs(extras) for pid in c.process_ids}
        listed = []
        for process in self._registry.sandboxes.processes(sandbox.id):
            if process.exit is not None:
                continue
            config = configs.get(process.process_id) or ProcessConfig(
                process.argv[0], process.argv[1:], {}, process.cwd
            )
            item: Message = {"config": config.wire(), "pid": process.pid}
            if config.tag:
                item["tag"] = config.tag
            listed.append(item)
        return {"processes": listed}

    async def send_input(self, sandbox: Sandbox, message: Message) -> Message:
        process = self._find(sandbox, self._registry.extras(sandbox), message.get("process"))
        await process.write_stdin(_input(process, message.get("input")), close=False)
        return {}

    def update(self, sandbox: Sandbox, message: Message) -> Message:
        """Resize a terminal's window (an Update without `pty` changes nothing)."""
        size = _pty_size(message["pty"]) if message.get("pty") is not None else None
        process = self._find(sandbox, self._registry.extras(sandbox), message.get("process"))
        if size is not None:
            process.resize(terminal_size(size))
        return {}

    async def close_stdin(self, sandbox: Sandbox, message: Message) -> Message:
        process = self._find(sandbox, self._registry.extras(sandbox), message.get("process"))
        await process.write_stdin(b"", close=True)
        return {}

    def send_signal(self, sandbox: Sandbox, message: Message) -> Message:
        process = self._find(sandbox, self._registry.extras(sandbox), message.get("process"))
        name = message.get("signal")
        signum = SIGNALS.get(name) if isinstance(name, str) else None
        if signum is None:
            raise InvalidArgument(f"signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM, got {name!r}")
        process.send_signal(signum)
        return {}

    async def stream_input(self, sandbox: Sandbox, messages: AsyncIterator[Message]) -> Message:
        """Client-streamed stdin: a `start` naming the process, then `data` events (keepalives
        are skipped). The process's stdin stays open. The stream is read no faster than the
        process reads its input: each event waits for the one before it to be taken (no 409 for a
        slow reader; the sandbox's stdin budget still bounds what the server holds)."""
        extras = self._registry.extras(sandbox)
        process: ManagedProcess | None = None
        async for message in messages:
            if "start" in message:
                start = message["start"]
                process = self._find(
                    sandbox, extras, start.get("process") if isinstance(start, dict) else None
                )
            elif "data" in message:
                if process is None:
                    raise InvalidArgument("the input stream must begin with a start event naming the process")
                given = message["data"].get("input") if isinstance(message["data"], dict) else None
                data = _input(process, given)
                await process.stdin_drained()
                await process.write_stdin(data, close=False)
        return {}

    # -- helpers -----------------------------------------------------------------------------

    def _find(self, sandbox: Sandbox, extras: Extras, selector: object) -> ManagedProcess:
        if not isinstance(selector, dict):
            raise InvalidArgument("process selector must be {'pid': N} or {'tag': 't'}")
        if isinstance(selector.get("tag"), str):
            process_id = extras.tags.get(selector["tag"])
            if process_id is None:
                raise NotFound(f"process with tag {selector['tag']!r} not found")
            return self._registry.sandboxes.process(sandbox.id, process_id)
        pid = selector.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise InvalidArgument("process selector must be {'pid': N} or {'tag': 't'}")
        try:
            return self._registry.sandboxes.process(sandbox.id, str(pid))
        except NotFound:
            raise NotFound(f"process with pid {pid} not found") from None

    @staticmethod
    def _remember(extras: Extras, process: ManagedProcess, config: ProcessConfig) -> None:
        config.process_ids.append(process.process_id)
        extras.configs[process.process_id] = config
        if config.tag:
            extras.tags[config.tag] = process.process_id

    def _forget(self, extras: Extras, process: ManagedProcess) -> None:
        config = extras.configs.pop(process.process_id, None)
        if config is not None and config.tag and extras.tags.get(config.tag) == process.process_id:
            del extras.tags[config.tag]
        with contextlib.suppress(AgentcellError):
            self._registry.sandboxes.get(extras.sandbox_id).processes.discard(process)


def _configs(extras: Extras) -> list[ProcessConfig]:
    return list(extras.configs.values())


def _input(process: ManagedProcess, given: object) -> bytes:
    """The bytes of envd's `ProcessInput`: `stdin`, or `pty` for a process on a terminal (which
    takes `stdin` too: both are its one input)."""
    if isinstance(given, dict) and "pty" in given:
        if not process.terminal:
            raise InvalidArgument(f"process {process.pid} has no terminal; send input.stdin")
        return _b64(given["pty"], "input.pty")
    if isinstance(given, dict) and "stdin" in given:
        return _b64(given["stdin"], "input.stdin")
    raise InvalidArgument("input must hold stdin or pty (base64 bytes)")


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise InvalidArgument(f"{name} is not valid base64") from None


async def keepalive(
    events: AsyncIterator[Batch], interval_s: float = KEEPALIVE_S
) -> AsyncIterator[Batch | None]:
    """The batches of events, with None whenever `interval_s` passes without one. The pending read is never
    cancelled by the timer (that would close the generator), only when the consumer stops; `events`
    is closed then, through that cancellation or directly."""
    pending: asyncio.Future[Batch] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield None
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield event
    finally:  # not awaited: the consumer may be under a cancellation that would cut it short
        aclose = getattr(events, "aclose", None)
        if pending is None:
            if aclose is not None:
                await aclose()  # suspended at a yield: closing it does not wait
        elif not pending.done():
            pending.cancel()
            pending.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[Batch]) -> None:
    if not future.cancelled():
        future.exception()
