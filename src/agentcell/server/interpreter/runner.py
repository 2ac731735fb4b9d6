"""RunnerKernel: a lean kernel over the process's own stdio, for JavaScript (node) and bash.

No Jupyter kernel for either is installable from Debian here, and a runner over pipes costs no
ZMQ and no extra process: requests go to stdin; answers come back as frames `\\x1e<json>\\n` on
stdout shaped like Jupyter messages, and an execution ends with `\\x1e<id>\\n` on stderr (so both
pipes are drained up to its end). Bytes outside frames — a child process writing to the inherited
pipes — are that execution's raw stdout/stderr.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import secrets
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agentcell.errors import Unavailable
from agentcell.server.interpreter.kernel import KernelExited, KernelProcess, Pending, SandboxLink
from agentcell.server.interpreter.sources import BASH, NODE, runtime_source
from agentcell.server.interpreter.wire import KernelMessage
from agentcell.server.sandbox.driver import ExecSpec

RS = b"\x1e"
READ_CHUNK_BYTES = 64 * 1024
MAX_FRAME_BYTES = 16 << 20
QUEUE_CHUNKS = 64
START_TIMEOUT_S = 30.0
EXIT_SETTLE_S = 1.0  # how long a kernel whose output ended may take to be reaped
RUNNER_SLOTS = 1
"""slots of the server's command budget a runner holds until it is closed: measured 4 fds, as any
command — its 3 stdio pipes and the worker's control pipe (test_budget_kernels.py)"""

Stream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class _Item:
    """What the readers queue: a frame (a message with its request id), raw text, or a marker."""

    message: KernelMessage | None = None
    request_id: str | None = None
    marker: str | None = None
    exited: bool = False


class _Framer:
    """Splits one pipe's bytes into frames (or markers) and raw text."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._scanned = 1
        """how far the frame at the buffer's start has been searched for its newline: a frame that
        comes in many reads is searched once, not from its start at every read"""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> list[_Item]:
        self._buffer += data
        items: list[_Item] = []
        while self._buffer:
            start = self._buffer.find(RS)
            if start != 0:
                cut = len(self._buffer) if start < 0 else start
                items += self._raw(bytes(self._buffer[:cut]))
                del self._buffer[:cut]
                continue
            end = self._buffer.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buffer)
                if len(self._buffer) > MAX_FRAME_BYTES:  # not a frame after all
                    items += self._raw(bytes(self._buffer))
                    self._buffer.clear()
                    self._scanned = 1
                break
            frame = bytes(self._buffer[1:end])
            del self._buffer[: end + 1]
            self._scanned = 1
            items.append(self._parse(frame))
        return items

    def _raw(self, data: bytes) -> list[_Item]:
        text = self._decoder.decode(data)
        if not text:
            return []
        return [_Item(KernelMessage("stream", {"name": self._stream, "text": text}))]

    def _parse(self, frame: bytes) -> _Item:
        if self._stream == "stderr":
            return _Item(marker=frame.decode(errors="replace"))
        try:
            decoded = json.loads(frame)
            message = KernelMessage(str(decoded["msg_type"]), dict(decoded["content"]))
            return _Item(message, request_id=decoded.get("id"))
        except (ValueError, KeyError, TypeError):
            return self._raw(RS + frame + b"\n")[0]


class RunnerKernel:
    """A node or bash runner. One execution at a time (the context's lock sees to that)."""

    def __init__(self, link: SandboxLink, language: str, *, cwd: str, env: Mapping[str, str]) -> None:
        self.language = language
        self._link = link
        self._cwd = cwd
        self._env = dict(env)
        self._process: KernelProcess | None = None
        self._slots = link.hold()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_CHUNKS)
        self._readers: list[asyncio.Task[None]] = []
        self._loop_time = asyncio.get_running_loop().time

    @property
    def is_alive(self) -> bool:
        return self._process is not None and not self._process.exited.is_set()

    @property
    def host_pid(self) -> int | None:
        return None if self._process is None else self._process.process.host_pid

    def _argv(self) -> list[str]:
        if self.language == "javascript":
            return [NODE, "-e", runtime_source("node_runner.js")]
        return [BASH, "--noprofile", "--norc", "-i"]

    async def start(self) -> None:
        try:
            self._slots.take(RUNNER_SLOTS)
            process = await self._link.exec(ExecSpec(argv=self._argv(), env=self._env, cwd=self._cwd))
            self._process = KernelProcess(process, self._link)
            self._process.watch(drain_stdout=False)
            self._readers = [
                asyncio.create_task(self._read(process.stdout, "stdout")),
                asyncio.create_task(self._read(process.stderr, "stderr")),
            ]
            if self.language == "bash":
                await process.write_stdin(runtime_source("bash_runner.sh").encode())
            await self._wait_ready()
        except BaseException:
            await self.aclose()
            raise

    async def _wait_ready(self) -> None:
        seen_frame = seen_marker = False
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while not (seen_frame and seen_marker):
                    item = await self._queue.get()
                    if item.exited:
                        raise KernelExited(f"the {self.language} kernel exited while starting")
                    seen_frame |= item.message is not None and item.message.msg_type == "ready"
                    seen_marker |= item.marker == "ready"
        except (TimeoutError, KernelExited) as exc:
            raise Unavailable(f"the {self.language} kernel did not start: {exc}") from None

    async def _read(self, stream: asyncio.StreamReader, name: Stream) -> None:
        framer = _Framer(name)
        while chunk := await stream.read(READ_CHUNK_BYTES):
            for item in framer.feed(chunk):
                await self._queue.put(item)
        await self._queue.put(_Item(exited=True))

    def _request(self, request_id: str, code: str, env: Mapping[str, str]) -> bytes:
        if self.language == "javascript":
            return json.dumps({"id": request_id, "code": code, "env": dict(env)}).encode() + b"\n"
        pairs = b"".join(f"{name}={value}".encode() + b"\0" for name, value in env.items())
        return (
            f"__ac_begin {request_id}\n".encode()
            + pairs
            + b"\0"
            + code.encode()
            + b'\0eval "$__ac_code" </dev/null 2>&3\n'
            + f"__ac_end {request_id} $?\n".encode()
        )

    async def send(self, code: str, env: Mapping[str, str]) -> Pending:
        if not self.is_alive or self._process is None:
            raise KernelExited(f"the {self.language} kernel exited")
        self._drop_stale()
        pending = Pending(secrets.token_hex(8), idle=False)
        try:
            await self._process.process.write_stdin(self._request(pending.msg_id, code, env))
        except Exception as exc:
            raise KernelExited(f"the {self.language} kernel stopped reading its input") from exc
        return pending

    def _drop_stale(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item.exited:
                self._queue.put_nowait(item)
                return

    async def receive(self, pending: Pending, timeout_s: float | None) -> KernelMessage | None:
        deadline = None if timeout_s is None else self._loop_time() + timeout_s
        while not pending.done:
            remaining = None if deadline is None else max(0.0, deadline - self._loop_time())
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                return None
            if item.exited:
                await self._settle_exit()
            if message := self._accept(item, pending):
                return message
        return None

    async def _settle_exit(self) -> None:
        """The kernel's output ended: give its process a moment to be reaped, so that the error
        can say how it ended."""
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.exited.wait(), EXIT_SETTLE_S)

    def _accept(self, item: _Item, pending: Pending) -> KernelMessage | None:
        if item.exited:
            self._queue.put_nowait(item)  # every later receive sees it too
            detail = self._process.describe_exit() if self._process else ""
            raise KernelExited(f"the {self.language} kernel exited{detail}")
        if item.marker is not None:
            pending.idle |= item.marker == pending.msg_id
            return None
        if item.message is None or item.request_id not in (None, pending.msg_id):
            return None
        pending.replied |= item.message.msg_type == "execute_reply"
        return item.message

    def end_execution(self) -> None:
        pass  # its pipes push back: output waits in the sandbox until the next send drops it

    async def interrupt(self) -> None:
        if self._process is not None and self.is_alive:
            await self._link.signal_group(self._process.process.pid, signal.SIGINT)

    async def aclose(self) -> None:
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        try:
            if self._process is not None:
                await self._process.aclose()
        finally:
            self._slots.give()  # its pipes and pidfd are closed once it is reaped (or cancelled)
        while not self._queue.empty():  # a receive still waiting learns that the kernel is gone
            self._queue.get_nowait()
        self._queue.put_nowait(_Item(exited=True))
