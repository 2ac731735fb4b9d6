"""TerminalService: commands on a pseudo-terminal (an interactive shell, a TUI) in a running sandbox.

A terminal command is a `ManagedProcess` in the sandbox's process table like any other (listed,
followed, signalled, written to and timed out the same way); what differs is how it starts — the
driver gives it a new terminal of the sandbox (`ExecSpec.terminal`) — that its input never closes,
and that its window can be resized. It counts as sandbox activity while it runs.
"""

from __future__ import annotations

from agentcell.errors import InvalidArgument
from agentcell.protocol.commands import CommandRequest, PtySize
from agentcell.server.clock import Clock
from agentcell.server.sandbox.driver import ExecSpec, SandboxDriver, TerminalSize
from agentcell.server.scheduler.processes import ManagedProcess
from agentcell.server.scheduler.sandboxes import SandboxService

TERMINAL_ENV = {"TERM": "xterm-256color"}
"""defaults a terminal command gets unless the sandbox or the request sets them"""


def terminal_size(size: PtySize) -> TerminalSize:
    return TerminalSize(rows=size.rows, cols=size.cols)


class TerminalService:
    def __init__(self, driver: SandboxDriver, sandboxes: SandboxService, clock: Clock) -> None:
        self._driver = driver
        self._sandboxes = sandboxes
        self._clock = clock

    async def start(self, sandbox_id: str, request: CommandRequest) -> ManagedProcess:
        """Start `request` (which names a `pty`) on a new terminal; `stdin`, if given, is typed in."""
        if request.pty is None:
            raise InvalidArgument("a terminal command needs pty: {rows, cols}")
        sandbox = self._sandboxes.taking_work(sandbox_id)
        argv = request.full_argv()
        env = {**TERMINAL_ENV, **sandbox.request.env, **request.env}
        spec = ExecSpec(argv=argv, env=env, cwd=request.cwd, terminal=terminal_size(request.pty))
        meter = sandbox.meter
        with sandbox.processes.starting():  # a terminal counts against the sandbox's commands
            meter.begin(self._clock.now())
            try:
                started = await self._driver.exec(sandbox.id, spec)
            except BaseException:
                meter.end(self._clock.now())
                raise
            process = ManagedProcess(
                started,
                argv,
                request.cwd,
                request.timeout_s,
                terminal=True,
                on_exit=lambda: meter.end(self._clock.now()),
            )
            sandbox.processes.add(process)
        process.start()
        if request.stdin:
            await process.write_stdin(request.stdin.encode(), close=False)
        return process

    def resize(self, sandbox_id: str, key: str, size: PtySize) -> None:
        """Set the window of a terminal command (by process id or pid); it gets SIGWINCH."""
        self._sandboxes.process(sandbox_id, key).resize(terminal_size(size))
