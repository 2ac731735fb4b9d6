"""Commands run in a sandbox: the request, and the typed event stream that always ends in one `end`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, TypeAdapter, model_validator

from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.sandboxes import EnvName, EnvValue

SandboxPath = Annotated[str, StringConstraints(min_length=1, max_length=4096), NoNul]


class PtySize(WireModel):
    """A terminal's window in character cells."""

    rows: int = Field(ge=1, le=1000)
    cols: int = Field(ge=1, le=1000)


class CommandRequest(WireModel):
    """Exactly one of `cmd` (run by `bash -c`) or `argv` (run as given)."""

    cmd: Annotated[str, StringConstraints(min_length=1, max_length=262144), NoNul] | None = None
    argv: list[Annotated[str, StringConstraints(max_length=131072), NoNul]] | None = Field(
        default=None, min_length=1, max_length=4096
    )
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=256)
    cwd: SandboxPath = "/home/user"
    user: Literal["user"] = Field(
        default="user", description="root inside a sandbox comes with user namespaces"
    )
    stdin: str | None = Field(default=None, max_length=16 * 1024 * 1024, description="written, then closed")
    timeout_s: float | None = Field(default=60, gt=0, le=86400, description="null: no limit")
    background: bool = Field(default=False, description="return at once; the process keeps running")
    pty: PtySize | None = Field(
        default=None,
        description="run on a pseudo-terminal of this size: output comes as stdout, stdin stays open "
        "(`stdin` is typed in), TERM defaults to xterm-256color; resize with POST .../resize",
    )

    @model_validator(mode="after")
    def _one_of_cmd_or_argv(self) -> CommandRequest:
        if (self.cmd is None) == (self.argv is None):
            raise ValueError("give exactly one of 'cmd' (a shell command line) or 'argv' (a list)")
        if self.argv is not None and not self.argv[0]:
            raise ValueError("argv[0] must name the program to run, got an empty string")
        return self

    def full_argv(self) -> list[str]:
        return list(self.argv) if self.argv is not None else ["/bin/bash", "-c", self.cmd or ""]


class StartEvent(ReplyModel):
    type: Literal["start"] = "start"
    process_id: str
    pid: int


class OutputEvent(ReplyModel):
    type: Literal["stdout", "stderr"]
    data: str


class EndEvent(ReplyModel):
    """The one terminal event. `exit_code` follows the shell: 128 + signal number when killed."""

    type: Literal["end"] = "end"
    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None


CommandEvent = Annotated[StartEvent | OutputEvent | EndEvent, Field(discriminator="type")]
COMMAND_EVENT = TypeAdapter(CommandEvent)


class ProcessInfo(ReplyModel):
    process_id: str
    pid: int
    argv: list[str]
    cwd: str
    running: bool
    exit_code: int | None = None
    pty: bool = False
    """on a terminal: its output is `stdout`, and it can be resized"""


class ProcessList(ReplyModel):
    processes: list[ProcessInfo]


class StdinWrite(WireModel):
    data: str = Field(max_length=16 * 1024 * 1024)
    close: bool = False


class SignalRequest(WireModel):
    signal: Literal[
        "SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT"
    ]
