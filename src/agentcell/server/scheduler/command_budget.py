"""CommandBudget: the commands running at once in the whole server, all sandboxes together, capped.

Every running command (and terminal) holds about FDS_PER_COMMAND of the server's file descriptors
(its stdio pipes or terminal, the worker's control pipe, a pidfd) until it ends. The per-sandbox
budget (ProcessTable.max_commands) bounds one sandbox, not the sum: enough busy sandboxes would
spend the server's whole open-file limit, after which every tenant's requests fail (accept, pipe2,
pidfd_open with EMFILE). This budget is taken before a command starts, next to its sandbox's own,
so the start that would go past it is refused with a clear error and nothing else breaks.

The limit comes from the server's open-file limit (`server_command_limit`): what is left after the
client connections (`Settings.connection_limit`), the sandboxes themselves (each holds a few fds
while it runs), the egress proxy's connections (the node-wide cap, two fds each) and a reserve,
divided by what one command holds. AGENTCELL_MAX_COMMANDS sets it.
"""

from __future__ import annotations

from agentcell.errors import Unavailable
from agentcell.server.egress.node import total_connection_limit
from agentcell.server.settings import Settings, soft_open_files

FDS_PER_COMMAND = 5
"""server fds one running command holds: its stdin, stdout and stderr pipes, the worker's control
pipe and the command's pidfd (measured: 5.0 per background `sleep`; a terminal holds 3)"""
FDS_PER_SANDBOX = 2
"""server fds one running sandbox holds: its init's pidfd (measured: 1.08 per idle sandbox), and
one for a file transfer in flight"""
FDS_PER_PROXIED_CONNECTION = 2
"""server fds one connection through the egress proxy holds: the sandbox's end and the upstream"""
FDS_RESERVED = 1024
"""for the rest of the server: listeners, the database, logs, the spawner, the gateway's upstream
pool"""
MIN_COMMANDS = 64
"""the floor when the open-file limit leaves less (a warning says so at start): one sandbox's
worth, so that a small limit never makes commands impossible"""


def server_command_limit(
    configured: int, connections: int, sandboxes: int, open_files: int | None = None
) -> int:
    """`configured` (AGENTCELL_MAX_COMMANDS) if set (> 0), else derived from `open_files` (the
    server's soft RLIMIT_NOFILE, read now if None) as the module docstring says."""
    if configured > 0:
        return configured
    open_files = open_files or soft_open_files()
    proxied = total_connection_limit(open_files) * FDS_PER_PROXIED_CONNECTION
    spare = open_files - connections - sandboxes * FDS_PER_SANDBOX - proxied - FDS_RESERVED
    return max(MIN_COMMANDS, spare // FDS_PER_COMMAND)


class CommandBudget:
    """At most `limit` commands running at once in the server. One instance, shared by every
    sandbox's ProcessTable (see CommandLimits): `take` before a start, `give` once the command has
    ended (ManagedProcess) or failed to start."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0

    def take(self) -> None:
        """One slot, or Unavailable (503, retry later) when the server runs `limit` commands."""
        if self.running >= self.limit:
            raise Unavailable(
                f"the server runs {self.running} commands across all sandboxes, its limit of "
                f"{self.limit} commands at once (AGENTCELL_MAX_COMMANDS, derived from its open-file "
                "limit); retry shortly: a finished command frees its slot",
                retry_after_s=1,
            )
        self.running += 1

    def take_unchecked(self) -> None:
        """One slot for a command that has started already (ProcessTable.add): never refused."""
        self.running += 1

    def give(self) -> None:
        self.running = max(0, self.running - 1)


def server_command_limit_of(settings: Settings) -> int:
    """The server-wide command budget these settings give, at the current open-file limit."""
    return server_command_limit(settings.max_commands, settings.connection_limit(), settings.max_sandboxes)
