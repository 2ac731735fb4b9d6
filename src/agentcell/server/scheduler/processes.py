"""Processes started in a sandbox: typed event streams, timeouts, and the background registry.

A `ManagedProcess` turns a driver process into `start`, `stdout`/`stderr` and exactly one `end`
event. Output is kept in a bounded buffer so that a later `events()` call (a client reconnecting to
a background process) sees what it missed, then follows live. The output of a command whose
starter waits for its result is never dropped: that reader holds the buffer, and while it lags a
buffer's worth behind, the output is not read, so the command blocks on its full pipe as it would
writing into a slow shell pipe.

Other readers (followers: a client reconnecting, a second terminal tab) are at most MAX_FOLLOWERS
per process, each woken at most every FOLLOWER_BATCH_S: it takes what came since its last wake
from the log's tail as one batch, so a chatty process costs each follower a short slice of the log
a few dozen times a second, not a copy of the whole buffer per line.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import itertools
import logging
import secrets
import signal
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from agentcell.errors import AgentcellError, Conflict, InvalidArgument, NotFound, NotRunning, QuotaExceeded
from agentcell.protocol.commands import EndEvent, OutputEvent, ProcessInfo, StartEvent
from agentcell.server.sandbox.driver import ExitStatus, SandboxProcess, TerminalSize
from agentcell.server.scheduler.command_budget import CommandBudget
from agentcell.server.scheduler.stdin_budget import StdinBudget

log = logging.getLogger(__name__)

Event = StartEvent | OutputEvent | EndEvent
READ_CHUNK_BYTES = 64 * 1024
BUFFER_LIMIT_BYTES = 1 << 20
EVENT_OVERHEAD_BYTES = 512
"""what an output event costs in memory besides its text (a model and its dict), counted against
the buffer: a command writing a byte at a time must not make the server keep a million events"""
OUTPUT_DRAIN_S = 0.25
STDIN_WAIT_S = 1.0
"""how long a stdin write waits for the process to take it before the data is left queued"""
STDIN_ROOM_WAIT_S = 2.0
"""how long a stdin write waits for room in its sandbox's StdinBudget (backpressure), then 429"""
FINISHED_KEPT = 64
"""finished background processes a sandbox keeps (with their output) for late readers"""
FINISHED_KEPT_BYTES = 16 << 20
"""and the output those keep, at most (the oldest finished ones go first)"""
DEFAULT_MAX_COMMANDS = 64
MAX_FOLLOWERS = 16
"""readers of one process's events at once, besides the one that started it and waits for its
result: each output event wakes every one of them, and hundreds of followers of a chatty process
slowed every other request of the server by seconds. More readers can share one follower's stream."""
FOLLOWER_BATCH_S = 0.02
"""a follower is woken at most this often: what came meanwhile goes in one batch (one write). A
process printing a line per write otherwise woke each follower for every line, and its followers
took the server's loop from every other request"""
DEFAULT_MAX_STDIN_BYTES = 64 << 20
UNREAD_OUTPUT_BYTES_PER_S = 1 << 20
"""how fast the server takes the output of a process nobody reads (no follower, no holder: a
background command, an unattended terminal), after a first BUFFER_LIMIT_BYTES at once. Past it the
process's pipe fills and its writes wait, as on a terminal nobody reads. Taken at full speed, one
background `yes` made the server spend two thirds of a core decoding and dropping output: a cost
outside the sandbox's own CPU quota, and three such sandboxes took the server from every tenant"""


@dataclass(frozen=True, slots=True)
class CommandLimits:
    """What one sandbox's commands may hold in the server (settings: AGENTCELL_SANDBOX_MAX_COMMANDS,
    AGENTCELL_SANDBOX_MAX_STDIN_BYTES), and the budget every sandbox's commands share (`server`,
    AGENTCELL_MAX_COMMANDS; None: no server-wide cap). Each command costs the server file
    descriptors and an output buffer; every tenant's sandboxes share the server's descriptors and
    memory."""

    max_commands: int = DEFAULT_MAX_COMMANDS
    max_stdin_bytes: int = DEFAULT_MAX_STDIN_BYTES
    server: CommandBudget | None = None

    def table(self) -> ProcessTable:
        return ProcessTable(self.max_commands, self.max_stdin_bytes, server=self.server)


def new_process_id() -> str:
    return "proc_" + secrets.token_hex(6)


@dataclass(slots=True)
class EventLog:
    """Events so far (output trimmed to a byte budget, oldest first) and a wake-up for followers.
    `output_bytes` is what the output events cost: their text plus EVENT_OVERHEAD_BYTES each.

    A held log (`held=True`: a foreground command's) never drops output its holder has not read
    (`consumed` says how far it got): its writer waits instead while the unread output is over the
    budget. With `stall_s`, a holder that reads nothing for that long loses its hold (it may never
    read: a client that started a command in the background and only looks at it later).
    """

    events: deque[Event] = field(default_factory=deque)
    output_bytes: int = 0
    first_index: int = 0
    followers: weakref.WeakSet[Follower] = field(default_factory=weakref.WeakSet)
    held: bool = False
    held_index: int = 0  # the holder has read every event before this one
    stall_s: float | None = None
    writer_waiting: bool = False
    _space: asyncio.Event = field(default_factory=asyncio.Event)
    _appended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def end_index(self) -> int:
        """The index the next event appended will have."""
        return self.first_index + len(self.events)

    def since(self, index: int) -> list[Event]:
        """The events from `index` on, taken from the tail (a follower that keeps up reads a few
        events, never the whole buffer). A reader whose next event was dropped (`index` at or
        before `first_index`) gets the whole buffer from the start event again: that repeated
        `start` is how a reader that fell behind learns it missed output."""
        count = self.end_index - max(index, self.first_index)
        if count <= 0:
            return []
        if count >= len(self.events):
            return list(self.events)
        tail = list(itertools.islice(reversed(self.events), count))
        tail.reverse()
        return tail

    async def read(self, index: int) -> tuple[list[Event], int]:
        """`since(index)`, waiting for an event if there is none yet, and the index after it."""
        while not (batch := self.since(index)):
            await self._appended.wait()
        return batch, self.end_index

    async def append(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, OutputEvent):
            self.output_bytes += _cost(event)
            self._trim()
        self._appended.set()  # wakes every reader waiting now; the next ones wait for the next event
        self._appended.clear()
        while self.held and self.output_bytes > BUFFER_LIMIT_BYTES:
            self._space.clear()
            self.writer_waiting = True
            try:
                await asyncio.wait_for(self._space.wait(), self.stall_s)
            except TimeoutError:
                self.release()
            finally:
                self.writer_waiting = False

    def consumed(self, index: int) -> None:
        """The holder has read every event before `index`: that output may go (past the budget)."""
        self.held_index = max(self.held_index, index)
        self._trim()
        if self.output_bytes <= BUFFER_LIMIT_BYTES:
            self._space.set()

    def release(self) -> None:
        """The holder is gone: back to a bounded buffer, the writer no longer waits."""
        self.held = False
        self._trim()
        self._space.set()

    def _trim(self) -> None:
        while self.output_bytes > BUFFER_LIMIT_BYTES and self._may_drop() and self._drop_oldest_output():
            pass

    def is_read(self) -> bool:
        """Whether anybody reads these events now: a holder or a follower."""
        return self.held or bool(self.followers)

    def _may_drop(self) -> bool:
        # the oldest output is the event after the start event: logical index first_index + 1
        return not self.held or self.held_index > self.first_index + 1

    def _drop_oldest_output(self) -> bool:
        """Drop the oldest output event (the start event stays, for readers that join late)."""
        if len(self.events) <= 1:
            return False
        oldest = self.events[1] if isinstance(self.events[0], StartEvent) else self.events[0]
        if not isinstance(oldest, OutputEvent):
            return False
        self.events.remove(oldest)
        self.output_bytes -= _cost(oldest)
        self.first_index += 1
        return True


def _cost(event: OutputEvent) -> int:
    return len(event.data) + EVENT_OVERHEAD_BYTES


@dataclass(slots=True)
class UnreadPace:
    """The pace of a process's output while nobody reads it (UNREAD_OUTPUT_BYTES_PER_S): a
    token bucket of bytes, full (BUFFER_LIMIT_BYTES) at first and refilled at that rate."""

    at: float
    tokens: float = BUFFER_LIMIT_BYTES

    def delay(self, now: float, size: int) -> float:
        """Seconds to wait before reading more, having taken `size` bytes nobody reads."""
        self._refill(now)
        self.tokens -= size
        return max(0.0, -self.tokens / UNREAD_OUTPUT_BYTES_PER_S)

    def _refill(self, now: float) -> None:
        self.tokens = min(BUFFER_LIMIT_BYTES, self.tokens + (now - self.at) * UNREAD_OUTPUT_BYTES_PER_S)
        self.at = now


class Follower:
    """One follower's place among its process's MAX_FOLLOWERS, held (in a WeakSet) as long as its
    iterator exists: an iterator that is never started (its client left before the response
    began) frees the place when it is dropped, as its `finally` never runs."""

    __slots__ = ("__weakref__",)


class ManagedProcess:
    """Owns one driver process: pumps its output into an EventLog and enforces its timeout.
    A process on a terminal (`terminal=True`) has its output as `stdout` events."""

    def __init__(
        self,
        process: SandboxProcess,
        argv: list[str],
        cwd: str,
        timeout_s: float | None,
        *,
        terminal: bool = False,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.process_id = new_process_id()
        self.argv = argv
        self.cwd = cwd
        self.terminal = terminal
        self._on_exit = on_exit
        self._process = process
        self._timeout_s = timeout_s
        self._log = EventLog()
        self._log.events.append(StartEvent(process_id=self.process_id, pid=process.pid))
        self.exit: EndEvent | None = None
        self._stop_reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._stdin_backlog: asyncio.Task[None] | None = None
        self.stdin_budget: StdinBudget | None = None
        """the sandbox's, set by ProcessTable.add: every write takes its size from it until read"""
        self.server_budget: CommandBudget | None = None
        """the server's, set by ProcessTable.add: this process holds one slot of it until it ends"""

    @property
    def output_bytes(self) -> int:
        """What the output kept for readers costs (see EventLog)."""
        return self._log.output_bytes

    @property
    def pid(self) -> int:
        return self._process.pid

    def start(self, stdin: bytes | None = None) -> None:
        """Begin pumping; the caller (ProcessTable) keeps the task and awaits it at close.

        `stdin`, when given, is fed to the process as it reads it, then its stdin is closed; a
        process that exits or stops reading first does not get the rest, as with a shell pipe.
        Its size is given back to `stdin_budget` once fed: the starter took it (ProcessTable.starting).
        """
        if stdin is not None:
            self._feeder = asyncio.create_task(self._feed(stdin))
            self._feeder.add_done_callback(functools.partial(self._stdin_read, len(stdin)))
        self._task = asyncio.create_task(self._run(), name=f"process {self.process_id}")

    def _stdin_read(self, size: int, _task: asyncio.Future[None]) -> None:
        if self.stdin_budget is not None:
            self.stdin_budget.give(size)

    async def _run(self) -> None:
        pace = UnreadPace(asyncio.get_running_loop().time())  # one for both streams
        pumps = [
            asyncio.create_task(self._pump(self._process.stdout, "stdout", pace)),
            asyncio.create_task(self._pump(self._process.stderr, "stderr", pace)),
        ]
        try:
            status, timed_out = await self._wait_with_timeout()
            # Output still in the pipes belongs to this process; a background child that keeps
            # the pipe open must not hold the command open, so the drain is bounded (time spent
            # waiting for a slow reader of a foreground command's output does not count).
            while (await asyncio.wait(pumps, timeout=OUTPUT_DRAIN_S))[1] and self._log.writer_waiting:
                pass
        finally:
            for task in (*pumps, self._feeder, self._stdin_backlog):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._free_server_slot()  # its pipes and pidfd are closed by now
            if self._on_exit is not None:
                self._on_exit()
        await self._finish(status, timed_out)

    def _free_server_slot(self) -> None:
        budget, self.server_budget = self.server_budget, None
        if budget is not None:
            budget.give()

    async def _feed(self, data: bytes) -> None:
        with contextlib.suppress(NotRunning):
            await self._write(data, close=True)

    async def _wait_with_timeout(self) -> tuple[ExitStatus, bool]:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._process.wait(), False
        except TimeoutError:
            self._process.send_signal(signal.SIGKILL)
            return await self._process.wait(), True
        except asyncio.CancelledError:
            self._process.send_signal(signal.SIGKILL)
            raise

    async def _finish(self, status: ExitStatus, timed_out: bool) -> None:
        error = f"timed out after {self._timeout_s:g} s" if timed_out else self._stop_reason
        self.exit = EndEvent(exit_code=status.code, signal=status.signal, timed_out=timed_out, error=error)
        await self._log.append(self.exit)

    async def _pump(self, stream: asyncio.StreamReader, kind: str, pace: UnreadPace) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        loop = asyncio.get_running_loop()
        while chunk := await stream.read(READ_CHUNK_BYTES):
            if text := decoder.decode(chunk):
                await self._log.append(OutputEvent(type=kind, data=text))
            if not self._log.is_read() and (delay := pace.delay(loop.time(), len(chunk))):
                await asyncio.sleep(delay)
        if tail := decoder.decode(b"", final=True):
            await self._log.append(OutputEvent(type=kind, data=tail))

    async def events(self, *, holder: bool = False, stall_s: float | None = None) -> AsyncIterator[Event]:
        """Everything still buffered, then live events, ending with the `end` event (see
        `batches`). Not counted against MAX_FOLLOWERS: for the starter and the server itself."""
        async with contextlib.aclosing(self.batches(holder=holder, stall_s=stall_s)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    def follow(self) -> AsyncGenerator[list[Event]]:
        """A follower's `batches`, holding one of MAX_FOLLOWERS places from this call until the
        iterator ends, is closed or is dropped. Raises QuotaExceeded when all are taken (checked
        here, not at the first read: a streaming answer must be refused before it begins)."""
        followers = self._log.followers
        if len(followers) >= MAX_FOLLOWERS:
            raise QuotaExceeded(
                f"process {self.process_id} has {len(followers)} followers reading its events, its "
                f"limit of {MAX_FOLLOWERS} at once; close one of those streams and retry, or share "
                "one stream among your readers",
                retry_after_s=1,
            )
        follower = Follower()
        followers.add(follower)
        return self.batches(follower=follower)

    async def batches(
        self, *, holder: bool = False, stall_s: float | None = None, follower: Follower | None = None
    ) -> AsyncGenerator[list[Event]]:
        """Everything still buffered, then live events, each batch what came since the one
        before, the last one ending with the `end` event. A reader that fell behind what the log
        keeps gets the start event again (EventLog.since). The `holder` (the client that started
        the command and waits for its result) holds the log: no output is dropped before it has
        read it; it is released when the holder stops, or when it reads nothing for `stall_s`
        (see EventLog). `follower` is the place this reader holds (see `follow`)."""
        log = self._log
        if holder:
            log.held, log.stall_s = True, stall_s
        index = log.first_index
        try:
            while True:
                batch, index = await log.read(index)
                yield batch
                if isinstance(batch[-1], EndEvent):
                    return
                if holder:
                    log.consumed(index)
                if follower is not None:
                    await asyncio.sleep(FOLLOWER_BATCH_S)
        finally:
            if holder:
                log.release()
            if follower is not None:
                log.followers.discard(follower)

    async def write_stdin(self, data: bytes, close: bool) -> None:
        """Hand `data` to the process. Waits up to STDIN_WAIT_S for it to be taken; past that it
        stays queued (one write's worth at most: the next waits up to STDIN_ROOM_WAIT_S for the
        process to read it, then is refused with Conflict). Its size counts against the sandbox's
        StdinBudget until the process has read it: a write that does not fit waits up to
        STDIN_ROOM_WAIT_S for room, then raises QuotaExceeded (neither writes any of `data`)."""
        if close and self.terminal:
            raise InvalidArgument("a terminal's input cannot be closed; send ^D (\\x04) or exit")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STDIN_ROOM_WAIT_S):
                await self.stdin_drained()
        self._refuse_if_backlogged()
        budget = self.stdin_budget if data else None
        if budget is not None:
            if self.exit is not None:
                raise NotRunning(f"process {self.process_id} no longer reads its stdin (exited)")
            await budget.take(len(data), STDIN_ROOM_WAIT_S)
            try:
                self._refuse_if_backlogged()  # another write was left queued while this one waited
            except Conflict:
                budget.give(len(data))
                raise
        write = asyncio.ensure_future(self._write(data, close))
        if budget is not None:
            write.add_done_callback(functools.partial(self._stdin_read, len(data)))
        try:
            await asyncio.wait((write,), timeout=STDIN_WAIT_S)  # never cancels the write
        finally:
            if not write.done():  # queued: the process reads it when it wants to
                self._stdin_backlog = write
                write.add_done_callback(self._backlog_done)
        error = _error_of(write)
        del write  # the task keeps the error, whose traceback will hold this frame
        if error is not None:
            try:
                raise error
            finally:
                del error  # nor may this frame hold the error: the cycle would keep `data`

    async def stdin_drained(self) -> None:
        """Wait until the write left queued before (if any) has been read by the process, or has
        failed; never cancels that write."""
        backlog = self._stdin_backlog
        if backlog is not None and not backlog.done():
            await asyncio.wait((backlog,))

    def _refuse_if_backlogged(self) -> None:
        backlog = self._stdin_backlog
        if backlog is not None and not backlog.done():
            raise Conflict(
                f"process {self.process_id} has not yet read the input written before; "
                "send more once it has (its stdin pipe is full)"
            )

    def _backlog_done(self, task: asyncio.Future[None]) -> None:
        """A queued stdin write ended. Its error (the process exited) is retrieved, as nobody waits
        for it, and the task let go: the error's traceback holds this process and the data, so a
        task kept here would make a cycle that only the cycle collector frees."""
        if not task.cancelled():
            task.exception()
        if self._stdin_backlog is task:
            self._stdin_backlog = None

    async def _write(self, data: bytes, close: bool) -> None:
        try:
            if data:
                await self._process.write_stdin(data)
            if close:
                await self._process.close_stdin()
        except (BrokenPipeError, ConnectionResetError, AssertionError, RuntimeError):  # uvloop: closed pipe
            raise NotRunning(
                f"process {self.process_id} no longer reads its stdin (exited or closed)"
            ) from None

    def send_signal(self, signum: int) -> None:
        if self.exit is None:
            self._process.send_signal(signum)

    def resize(self, size: TerminalSize) -> None:
        """Set the window of a process started on a terminal."""
        if not self.terminal:
            raise InvalidArgument(f"process {self.process_id} has no terminal (start it with pty)")
        if self.exit is not None:
            raise NotRunning(f"process {self.process_id} has exited")
        self._process.resize(size)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stop(self, reason: str) -> bool:
        """Kill the process for `reason`, which its `end` event's `error` then gives (readers get
        their `end` as soon as it has exited). False if it had exited already."""
        if self.exit is not None:
            return False
        self._stop_reason = self._stop_reason or reason
        self.kill()
        return True

    async def wait(self) -> EndEvent:
        assert self._task is not None
        await asyncio.shield(self._task)
        assert self.exit is not None
        return self.exit

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            process_id=self.process_id,
            pid=self.pid,
            argv=self.argv,
            cwd=self.cwd,
            running=self.exit is None,
            exit_code=None if self.exit is None else self.exit.exit_code,
            pty=self.terminal,
        )

    async def aclose(self) -> None:
        self.kill()
        self._log.release()  # a holder that stopped reading must not keep the pumps (and us) waiting
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._free_server_slot()  # (never started: nothing else gives it back)


def _error_of(task: asyncio.Future[None]) -> BaseException | None:
    """What a finished task raised (None if it succeeded, or has not finished); a domain error's
    traceback is dropped, as its frames hold what the task worked on."""
    if not task.done() or task.cancelled():
        return None
    error = task.exception()
    if isinstance(error, AgentcellError):  # expected: no traceback worth its cost
        error.__traceback__ = None
    return error


class ProcessTable:
    """The processes of one sandbox, found by process id or in-sandbox pid, and its budgets: at
    most `max_commands` running at once (foreground, background and terminals alike) and
    `max_stdin_bytes` of stdin queued for them (`stdin`); each running one also holds a slot of the
    `server` budget that every sandbox shares. Of the finished ones, the FINISHED_KEPT most recent
    stay (with their output, FINISHED_KEPT_BYTES in all at most) for late readers."""

    def __init__(
        self,
        max_commands: int = DEFAULT_MAX_COMMANDS,
        max_stdin_bytes: int = DEFAULT_MAX_STDIN_BYTES,
        *,
        server: CommandBudget | None = None,
    ) -> None:
        self._by_id: dict[str, ManagedProcess] = {}
        self.max_commands = max_commands
        self.stdin = StdinBudget(max_stdin_bytes)
        self.server = server
        self._starting = 0

    @contextlib.contextmanager
    def starting(self, stdin_bytes: int = 0) -> Iterator[None]:
        """Room for one command about to start, held while it starts: the caller `add`s it
        inside the block. `stdin_bytes` (its initial stdin) are taken from the stdin budget; its
        feed gives them back (ManagedProcess.start), or this block if the start fails. Raises
        QuotaExceeded when `max_commands` run (or start) already, or the stdin does not fit;
        Unavailable when the whole server runs its `server` budget of commands. A slot of that
        budget is held by this block while the command starts, and by the process once `add`ed."""
        busy = self.running_count() + self._starting
        if busy >= self.max_commands:
            raise QuotaExceeded(
                f"this sandbox runs {busy} commands, its limit of {self.max_commands} commands at "
                "once; wait for some to end or kill some (POST .../processes/{id}/signal) and "
                "retry: a finished command frees its slot",
                retry_after_s=1,
            )
        if self.server is not None:
            self.server.take()
        try:
            self.stdin.take_now(stdin_bytes)
        except BaseException:
            self._give_server_slot()
            raise
        self._starting += 1
        try:
            yield
        except BaseException:
            self.stdin.give(stdin_bytes)
            raise
        finally:
            self._starting -= 1
            self._give_server_slot()

    def _give_server_slot(self) -> None:
        if self.server is not None:
            self.server.give()

    def running_count(self) -> int:
        return sum(1 for p in self._by_id.values() if p.exit is None)

    def add(self, process: ManagedProcess) -> None:
        """Track a started process; it holds a slot of the server budget until it ends (taken
        inside `starting`, whose own slot is given back as the block ends, with no await between)."""
        process.stdin_budget = self.stdin
        if self.server is not None:
            self.server.take_unchecked()
            process.server_budget = self.server
        self._by_id[process.process_id] = process
        self._forget_finished()

    def _forget_finished(self) -> None:
        """Past FINISHED_KEPT finished processes, or FINISHED_KEPT_BYTES of their output, the
        oldest go."""
        finished = [p for p in self._by_id.values() if p.exit is not None]
        kept_bytes = sum(p.output_bytes for p in finished)
        for kept, old in zip(range(len(finished), 0, -1), finished, strict=True):
            if kept <= FINISHED_KEPT and kept_bytes <= FINISHED_KEPT_BYTES:
                break
            del self._by_id[old.process_id]
            kept_bytes -= old.output_bytes

    def discard(self, process: ManagedProcess) -> None:
        self._by_id.pop(process.process_id, None)

    def get(self, key: str) -> ManagedProcess:
        found = self._by_id.get(key) or next(
            (p for p in self._by_id.values() if str(p.pid) == key and p.exit is None), None
        )
        if found is None:
            raise NotFound(f"no process {key!r} in this sandbox; list them with GET .../processes")
        return found

    def all(self) -> list[ManagedProcess]:
        return list(self._by_id.values())

    def stop_all(self, reason: str) -> int:
        """Kill every running process for `reason` (see ManagedProcess.stop); how many were."""
        return sum(process.stop(reason) for process in self.all())

    async def aclose(self) -> None:
        for process in self.all():
            await process.aclose()
        self._by_id.clear()
