"""CommandBudget: the commands running at once in the whole server, all sandboxes together, capped.

Every running command (and terminal) holds about FDS_PER_COMMAND of the server's file descriptors
(its stdio pipes or terminal, the worker's control pipe) until it ends. The per-sandbox budget
(ProcessTable.max_commands) bounds one sandbox, not the sum: enough busy sandboxes would spend the
server's whole open-file limit, after which every tenant's requests fail (accept, pipe2,
pidfd_open with EMFILE). This budget is taken before a command starts, next to its sandbox's own,
so the start that would go past it is refused with a clear error and nothing else breaks.

The limit comes from the server's open-file limit (`server_command_limit`): what is left after the
client connections (`Settings.connection_limit`), the node's slots (AGENTCELL_MAX_SANDBOXES: each
sandbox or function instance holds a few fds while it runs), the egress proxy's connections (the
node-wide cap, two fds each) and a reserve, divided by what one command holds.
AGENTCELL_MAX_COMMANDS sets it.
"""

from __future__ import annotations

from agentcell.errors import Unavailable
from agentcell.server.egress.node import total_connection_limit
from agentcell.server.settings import Settings, soft_open_files

FDS_PER_COMMAND = 4
"""server fds one running command holds at most: its stdin, stdout and stderr pipes (3.0 per
background `sleep` its sandbox's init started, which reports its exit on the instance's channel),
and the worker's control pipe for one an exec worker started (an adopted instance's: 4.0; 5.0
while each also held its pidfd, now opened only to signal it); a terminal holds its master instead
of the three pipes"""
FDS_PER_SANDBOX = 2
"""server fds one slot of the node (a sandbox or a function instance) is counted at. A sandbox
holds its init's pidfd and its command channel to the init (2.0 per idle sandbox; 1.0 before the
init started commands), and one more while a file transfer runs. A function instance holds the
same two (its server process runs on /dev/null, ExecSpec.stdio, and reports its exit on the
channel; measured with a control pipe instead of the channel: 2.15 per instance with 20 instances,
3.15 once each has served a request and the gateway pools a keep-alive connection to it, closed
after 4 s idle; before, 5.15 and 6.15). Counted at 2, the mix a node runs: at 3, this machine's
20,000 fds (root without CAP_SYS_RESOURCE) would leave the command budget at its floor of 64 with
the default 4,000 slots; a node full of instances that were all just used would lack ~4,000 fds,
about the commands' share."""
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
