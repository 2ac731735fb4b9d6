"""The sync SDK: a thin shell that drives the async core on a private event-loop thread.

Same surface as the async classes, minus `await`. Every method here is one line of delegation;
behaviour lives in the async core only. Output callbacks (on_stdout, on_stderr, on_progress) run on
the SDK's loop thread while the calling thread waits; they must not call back into the SDK.
"""

from __future__ import annotations

import builtins
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from agentcell.client.code import DEFAULT_CODE_TIMEOUT_S
from agentcell.client.commands import (
    DEFAULT,
    FOREGROUND_TIMEOUT_S,
    AsyncCommandHandle,
    AsyncCommands,
    Signal,
    _Default,
)
from agentcell.client.errors import AgentcellAPIError
from agentcell.client.portal import EventLoopThread
from agentcell.client.sandbox import AsyncSandbox, SandboxOpening
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import PortsAccess, SandboxInfo, SandboxList, SandboxState

# only named in annotations: the parts' wire models are imported when a part is first used
if TYPE_CHECKING:
    import httpx

    from agentcell.client.code import Callback, ContextRef, Execution
    from agentcell.client.events import CommandResult, OutputCallback
    from agentcell.client.file_watch import AsyncFileWatch, FileEvent
    from agentcell.client.files import AsyncFiles
    from agentcell.client.snapshots import AsyncSnapshots
    from agentcell.client.transfer import LocalPath, ProgressCallback, WriteData
    from agentcell.protocol.code import CodeContextInfo
    from agentcell.protocol.commands import CommandEvent, ProcessInfo
    from agentcell.protocol.files import FileEntry
    from agentcell.protocol.functions import FunctionInfo
    from agentcell.protocol.snapshots import SandboxSnapshotInfo, SandboxSnapshotList

T = TypeVar("T")


class CommandHandle:
    """A background process (see AsyncCommandHandle)."""

    def __init__(self, core: AsyncCommandHandle, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    @property
    def process_id(self) -> str:
        return self._core.process_id

    @property
    def pid(self) -> int:
        return self._core.pid

    @property
    def info(self) -> ProcessInfo:
        return self._core.info

    def __repr__(self) -> str:
        return f"<CommandHandle {self.process_id} pid={self.pid}>"

    def events(self) -> Iterator[CommandEvent]:
        return self._portal.iterate(self._core.events())

    def wait(
        self,
        *,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
        check: bool = False,
    ) -> CommandResult:
        return self._portal.run(self._core.wait(on_stdout=on_stdout, on_stderr=on_stderr, check=check))

    def send_stdin(self, data: str, *, close: bool = False) -> None:
        self._portal.run(self._core.send_stdin(data, close=close))

    def close_stdin(self) -> None:
        self._portal.run(self._core.close_stdin())

    def signal(self, sig: Signal) -> None:
        self._portal.run(self._core.signal(sig))

    def kill(self) -> None:
        self._portal.run(self._core.kill())

    def resize(self, rows: int, cols: int) -> None:
        self._portal.run(self._core.resize(rows, cols))


class Commands:
    """`sandbox.commands` (see AsyncCommands; same conventions: check=False by default)."""

    def __init__(self, core: AsyncCommands, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    @overload
    def run(
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
    def run(
        self,
        cmd: str | Sequence[str],
        *,
        background: Literal[True],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
        stdin: str | None = None,
    ) -> CommandHandle: ...

    @overload
    def run(
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
    ) -> CommandResult | CommandHandle: ...

    def run(
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
    ) -> CommandResult | CommandHandle:
        """See AsyncCommands.run."""
        done = self._portal.run(
            self._core._run_any(
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
        )
        return CommandHandle(done, self._portal) if isinstance(done, AsyncCommandHandle) else done

    def list(self) -> builtins.list[ProcessInfo]:
        return self._portal.run(self._core.list())

    def connect(self, process: str | int) -> CommandHandle:
        return CommandHandle(self._portal.run(self._core.connect(process)), self._portal)

    def open_terminal(
        self,
        cmd: str | Sequence[str] = ("/bin/bash", "-l"),
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout_s: float | None = None,
    ) -> CommandHandle:
        """See AsyncCommands.open_terminal."""
        core = self._core.open_terminal(cmd, rows=rows, cols=cols, env=env, cwd=cwd, timeout_s=timeout_s)
        return CommandHandle(self._portal.run(core), self._portal)

    def kill(self, process: str | int, sig: Signal = "SIGKILL") -> None:
        self._portal.run(self._core.kill(process, sig))

    def send_stdin(self, process: str | int, data: str, *, close: bool = False) -> None:
        self._portal.run(self._core.send_stdin(process, data, close=close))


class FileWatch:
    """A directory watch (see AsyncFileWatch): `for event in watch` until the directory or the
    sandbox goes; leaving the loop closes it, and so do `with` and `close()`. `with` opens it
    first, so that nothing done inside the block is missed."""

    def __init__(self, core: AsyncFileWatch, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    @property
    def path(self) -> str | None:
        return self._core.path

    @property
    def overflowed(self) -> bool:
        return self._core.overflowed

    @property
    def ended(self) -> str | None:
        return self._core.ended

    def start(self) -> FileWatch:
        self._portal.run(self._core.start())
        return self

    def __iter__(self) -> Iterator[FileEvent]:
        return self._portal.iterate(self._core)

    def close(self) -> None:
        self._portal.run(self._core.aclose())

    def __enter__(self) -> FileWatch:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Files:
    """`sandbox.files` (see AsyncFiles)."""

    def __init__(self, core: AsyncFiles, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def read(self, path: str) -> bytes:
        return self._portal.run(self._core.read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self._portal.run(self._core.read_text(path, encoding))

    def read_stream(self, path: str) -> Iterator[bytes]:
        return self._portal.iterate(self._core.read_stream(path))

    def write(self, path: str, data: WriteData) -> FileEntry:
        return self._portal.run(self._core.write(path, data))

    def list(self, path: str = "/home/user", depth: int = 1) -> builtins.list[FileEntry]:
        return self._portal.run(self._core.list(path, depth))

    def stat(self, path: str) -> FileEntry:
        return self._portal.run(self._core.stat(path))

    def exists(self, path: str) -> bool:
        return self._portal.run(self._core.exists(path))

    def make_dir(self, path: str) -> FileEntry:
        return self._portal.run(self._core.make_dir(path))

    def rename(self, src: str, dst: str) -> FileEntry:
        return self._portal.run(self._core.rename(src, dst))

    def remove(self, path: str) -> None:
        self._portal.run(self._core.remove(path))

    def watch(self, path: str, *, recursive: bool = False) -> FileWatch:
        """See AsyncFiles.watch: `for event in sbx.files.watch(path)`, or `with ... as watch:`."""
        return FileWatch(self._core.watch(path, recursive=recursive), self._portal)

    def upload(
        self,
        sources: LocalPath | Sequence[LocalPath],
        remote_dir: str = "/home/user",
        *,
        on_progress: ProgressCallback | None = None,
        contents: bool = False,
    ) -> builtins.list[FileEntry]:
        return self._portal.run(
            self._core.upload(sources, remote_dir, on_progress=on_progress, contents=contents)
        )

    def download_archive(self, path: str) -> Iterator[bytes]:
        return self._portal.iterate(self._core.download_archive(path))

    def download(
        self, path: str, local_path: LocalPath, *, on_progress: ProgressCallback | None = None
    ) -> FileEntry:
        return self._portal.run(self._core.download(path, local_path, on_progress=on_progress))


class Sandbox:
    """One sandbox, sync (see AsyncSandbox). Owns a connection pool and one event-loop thread:
    `close()` releases them, `kill()` ends the sandbox, leaving a `with` block does both."""

    def __init__(self, core: AsyncSandbox, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal
        self.commands = Commands(core.commands, portal)
        self.files = Files(core.files, portal)

    @property
    def id(self) -> str:
        return self._core.id

    @property
    def info(self) -> SandboxInfo:
        return self._core.info

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} template={self.info.template!r}>"

    @classmethod
    def create(
        cls,
        template: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        timeout_s: int | None = None,
        network: NetworkPolicy | Mapping[str, Any] | str | None = None,
        code_kernel: bool | None = None,
        on_timeout: Literal["kill", "pause"] | None = None,
        auto_resume: bool | None = None,
        ports: PortsAccess | None = None,
        ports_host: str | None = None,
        snapshot: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Sandbox:
        """See AsyncSandbox.create; usable as `with Sandbox.create() as sbx:`."""
        return cls._open(
            AsyncSandbox.create(
                template,
                env=env,
                metadata=metadata,
                cpu=cpu,
                memory_mb=memory_mb,
                disk_mb=disk_mb,
                timeout_s=timeout_s,
                network=network,
                code_kernel=code_kernel,
                on_timeout=on_timeout,
                auto_resume=auto_resume,
                ports=ports,
                ports_host=ports_host,
                snapshot=snapshot,
                api_url=api_url,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                transport=transport,
            )
        )

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Sandbox:
        return cls._open(
            AsyncSandbox.connect(
                sandbox_id,
                api_url=api_url,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                transport=transport,
            )
        )

    @classmethod
    def resume(
        cls,
        sandbox_id: str,
        *,
        timeout_s: int | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Sandbox:
        """See AsyncSandbox.resume."""
        return cls._open(
            AsyncSandbox.resume(
                sandbox_id,
                timeout_s=timeout_s,
                api_url=api_url,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                transport=transport,
            )
        )

    @classmethod
    def _open(cls, opening: SandboxOpening[AsyncSandbox]) -> Sandbox:
        portal = EventLoopThread()
        try:
            return cls(portal.run(_awaited(opening)), portal)
        except BaseException:
            portal.close()
            raise

    @classmethod
    def _adopt(cls, core: AsyncSandbox) -> Sandbox:
        """A sync twin, with a loop thread of its own, of a core made on another (a fork's, whose
        pool has not been used yet: httpx binds it to a loop at its first request)."""
        return cls(core, EventLoopThread())

    @staticmethod
    def list(
        *,
        metadata: Mapping[str, str] | None = None,
        state: SandboxState | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        page_size: int | None = None,
    ) -> builtins.list[SandboxInfo]:
        return _run_alone(
            AsyncSandbox.list(
                metadata=metadata,
                state=state,
                api_url=api_url,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                transport=transport,
                page_size=page_size,
            )
        )

    @staticmethod
    def list_page(
        *,
        metadata: Mapping[str, str] | None = None,
        state: SandboxState | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SandboxList:
        return _run_alone(
            AsyncSandbox.list_page(
                metadata=metadata,
                state=state,
                limit=limit,
                next_token=next_token,
                api_url=api_url,
                api_key=api_key,
                request_timeout_s=request_timeout_s,
                transport=transport,
            )
        )

    def get_info(self) -> SandboxInfo:
        return self._portal.run(self._core.get_info())

    def is_running(self) -> bool:
        return self._portal.run(self._core.is_running())

    def set_timeout(self, timeout_s: int) -> SandboxInfo:
        return self._portal.run(self._core.set_timeout(timeout_s))

    def update_network(self, network: NetworkPolicy | Mapping[str, Any] | str) -> SandboxInfo:
        return self._portal.run(self._core.update_network(network))

    def publish(
        self, function: str, *, path: str = "/home/user", packages: bool = True, **settings: Any
    ) -> FunctionInfo:
        return self._portal.run(self._core.publish(function, path=path, packages=packages, **settings))

    def run_code(
        self,
        code: str,
        *,
        context: ContextRef | None = None,
        language: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = DEFAULT_CODE_TIMEOUT_S,
        on_stdout: Callback | None = None,
        on_stderr: Callback | None = None,
        on_result: Callback | None = None,
        on_error: Callback | None = None,
    ) -> Execution:
        """See AsyncSandbox.run_code (callbacks run on the SDK's loop thread)."""
        return self._portal.run(
            self._core.run_code(
                code,
                context=context,
                language=language,
                env=env,
                timeout_s=timeout_s,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                on_result=on_result,
                on_error=on_error,
            )
        )

    def create_code_context(
        self, language: str = "python", *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> CodeContextInfo:
        return self._portal.run(self._core.create_code_context(language, cwd=cwd, env=env))

    def list_code_contexts(self) -> builtins.list[CodeContextInfo]:
        return self._portal.run(self._core.list_code_contexts())

    def restart_code_context(self, context: ContextRef) -> CodeContextInfo:
        return self._portal.run(self._core.restart_code_context(context))

    def interrupt_code_context(self, context: ContextRef) -> None:
        self._portal.run(self._core.interrupt_code_context(context))

    def remove_code_context(self, context: ContextRef) -> None:
        self._portal.run(self._core.remove_code_context(context))

    def pause(self) -> SandboxInfo:
        """See AsyncSandbox.pause."""
        return self._portal.run(self._core.pause())

    def create_snapshot(self, name: str | None = None) -> SandboxSnapshotInfo:
        """See AsyncSandbox.create_snapshot."""
        return self._portal.run(self._core.create_snapshot(name))

    def fork(
        self, count: int = 1, *, timeout_s: int | None = None
    ) -> builtins.list[Sandbox | AgentcellAPIError]:
        """See AsyncSandbox.fork: each fork a Sandbox of its own (kill or close it), or its error."""
        forks = self._portal.run(self._core.fork(count, timeout_s=timeout_s))
        return [fork if isinstance(fork, AgentcellAPIError) else Sandbox._adopt(fork) for fork in forks]

    def kill(self) -> bool:
        return self._portal.run(self._core.kill())

    def close(self) -> None:
        """Close the connection pool and stop the loop thread; the sandbox keeps running. Idempotent."""
        if self._portal.closed:
            return
        try:
            self._portal.run(self._core.aclose())
        finally:
            self._portal.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()


class Snapshots:
    """`client.snapshots` (see AsyncSnapshots)."""

    def __init__(self, core: AsyncSnapshots, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def create(self, sandbox_id: str, *, name: str | None = None) -> SandboxSnapshotInfo:
        return self._portal.run(self._core.create(sandbox_id, name=name))

    def list(
        self, *, sandbox_id: str | None = None, name: str | None = None, page_size: int | None = None
    ) -> builtins.list[SandboxSnapshotInfo]:
        return self._portal.run(self._core.list(sandbox_id=sandbox_id, name=name, page_size=page_size))

    def list_page(
        self,
        *,
        sandbox_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> SandboxSnapshotList:
        return self._portal.run(
            self._core.list_page(sandbox_id=sandbox_id, name=name, limit=limit, next_token=next_token)
        )

    def get(self, snapshot_id: str) -> SandboxSnapshotInfo:
        return self._portal.run(self._core.get(snapshot_id))

    def delete(self, snapshot_id: str) -> bool:
        return self._portal.run(self._core.delete(snapshot_id))


async def _awaited(opening: SandboxOpening[AsyncSandbox]) -> AsyncSandbox:
    return await opening


def _run_alone(coro: Coroutine[Any, Any, T]) -> T:
    """`coro` on a loop thread of its own, closed after (a static call that has no sandbox's)."""
    portal = EventLoopThread()
    try:
        return portal.run(coro)
    finally:
        portal.close()
