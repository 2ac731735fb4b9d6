"""The server's entry point: read settings once, then run the gateway on the public port in front of
the control-plane app, which it calls in-process (uvicorn, on a private Unix socket, runs the app's
lifespan and takes the requests the gateway does not serve in-process: upgrades, chunked uploads,
`Expect`). The gateway owns signals and the order of shutdown: stop accepting and drain (commands
still running near the drain's end are stopped, so that their streams end with an `end` event),
then the app's lifespan stops sessions and instances."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import uvicorn
import uvloop

from agentcell.server.api.errors import request_id_var
from agentcell.server.api.functions import uploads_dir
from agentcell.server.app import create_app
from agentcell.server.egress.node import NodeEgress
from agentcell.server.gateway.route import AccessRecord, UnixUpstream
from agentcell.server.gateway.router import GatewayRouter
from agentcell.server.gateway.server import GatewayServer
from agentcell.server.observability.access_log import AccessFields, AccessLog
from agentcell.server.observability.logs import LogFormat, setup_logging
from agentcell.server.scheduler.command_budget import MIN_COMMANDS, server_command_limit_of
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.settings import Settings

log = logging.getLogger("agentcell")


class ControlServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to the gateway, which shuts the control plane down last


def parse_overrides(argv: list[str] | None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="agentcell serve", description="run the agentcell server")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--driver", choices=["linux", "fake"])
    args = parser.parse_args(argv)
    return {k: v for k, v in vars(args).items() if v is not None}


_NO_CONTEXT: dict[str, str] = {}


def access_fields(record: AccessRecord) -> AccessFields:
    """What the access line of a gateway record says (read when its batch is written)."""
    ctx = record.context or _NO_CONTEXT
    head = record.head
    return (
        head.request_id,
        head.method.decode(),
        head.raw_path.decode("latin-1")[:200],
        record.status,
        record.duration_s * 1000,
        record.bytes_in,
        record.bytes_out,
        ctx.get("function"),
        ctx.get("session"),
        ctx.get("instance"),
    )


def gateway_access_log(stream: TextIO, fmt: LogFormat) -> AccessLog[AccessRecord]:
    """The gateway's access log: its hook is `add`, which keeps each record as it is."""
    return AccessLog(stream, fmt, fields=access_fields)


SHUTTING_DOWN = "the server is shutting down"
COMMANDS_STOP_BEFORE_S = 1.0
"""commands still running this long before the drain's deadline are stopped, so that the `end`
event of each one reaches its stream's client before the connections are cut"""


def commands_stopper(sandboxes: SandboxService) -> Callable[[], None]:
    """The gateway's last call before it cuts the connections still busy after the drain: kill
    every command still running and end every code run, each with an `end` whose error says the
    server is shutting down (as a kill, pause or timeout of its sandbox does), rather than cut its
    stream mid-chunk. The sandboxes themselves stop afterwards, in the app's lifespan."""
    ending: set[asyncio.Task[None]] = set()

    def stop_commands() -> None:
        stopped = sum(sandbox.processes.stop_all(SHUTTING_DOWN) for sandbox in sandboxes.all())
        if stopped:
            log.info("agentcell shutting down: stopped %d commands still running", stopped)
        task = asyncio.get_running_loop().create_task(sandboxes.end_code_runs(SHUTTING_DOWN))
        ending.add(task)
        task.add_done_callback(ending.discard)

    return stop_commands


GC_THRESHOLDS = (20_000, 20, 10)
"""Collections of the young generation every 20,000 net allocations instead of 700: a burst of
requests keeps thousands of objects alive, and each collection walks them all again (2 to 8 ms
each, several per burst of 50 sandbox creates). Cyclic garbage waits a little longer."""


def tune_garbage_collector() -> None:
    """Once started: put what starting allocated (modules, the app, its schemas: ~130k objects)
    out of the cyclic collector's reach, and collect the young generation less often. A full
    collection walks every tracked object, ~110 ms here, and one that falls in a burst stalls
    every request in flight; once frozen, collections walk only what was allocated since.
    (Not in create_app: tests build many apps in one process, and frozen garbage is never freed.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


OPEN_FILES_WANTED = 1 << 20
"""the open-file limit a root server sets itself (bounded by fs.nr_open): every running command
and client connection holds some of the server's descriptors (see scheduler/command_budget.py)"""
NR_OPEN_PATH = "/proc/sys/fs/nr_open"


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one and, as root, both to OPEN_FILES_WANTED
    (bounded by fs.nr_open; a root without CAP_SYS_RESOURCE, as in some containers, keeps its hard
    limit); the soft limit now in force. Sandboxed processes never inherit it: the helper sets
    their own (helper.c, SANDBOX_NOFILE_*). The budgets derived from it (connections, commands)
    are computed after this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < OPEN_FILES_WANTED:
        wanted = min(OPEN_FILES_WANTED, _nr_open())
        with contextlib.suppress(ValueError, OSError):  # no CAP_SYS_RESOURCE (some containers)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
            return wanted
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _nr_open() -> int:
    try:
        with open(NR_OPEN_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return OPEN_FILES_WANTED


def log_open_file_budget(settings: Settings, open_files: int) -> None:
    commands = server_command_limit_of(settings)
    log.info(
        "agentcell open-file limit %d: %d client connections, %d commands at once in all sandboxes",
        open_files,
        settings.connection_limit(),
        commands,
    )
    if not settings.max_commands and commands == MIN_COMMANDS:
        log.warning(
            "the open-file limit (%d) leaves room for fewer than %d commands at once besides %d "
            "connections and %d sandboxes: raise the server's hard limit (LimitNOFILE=, ulimit -Hn) or "
            "lower AGENTCELL_MAX_CONNECTIONS / AGENTCELL_MAX_SANDBOXES",
            open_files,
            MIN_COMMANDS,
            settings.connection_limit(),
            settings.max_sandboxes,
        )


def remove_stale_uploads(state_dir: Path) -> None:
    """Remove the deploy archives a killed server left in `uploads_dir` (api/functions.py saves
    each there, and removes it when its deploy ends: a crash mid-unpack left it for good). Called
    before the app starts, so that no deploy of this server is using one."""
    for leftover in uploads_dir(state_dir).glob("*"):
        try:
            leftover.unlink()
        except OSError as exc:
            log.warning("could not remove the stale upload %s: %s", leftover, exc)


def protect_own_ports(egress: NodeEgress | None, gateway: GatewayServer) -> None:
    """Refuse sandboxes the ports the gateway really listens on (with `--port 0` the settings
    do not know them), as the configured API port is refused from the start."""
    ports = [address[1] for address in gateway.addresses if isinstance(address, tuple)]
    if egress is not None and ports:
        egress.protect_ports(ports)


async def run(settings: Settings, access: AccessLog[AccessRecord]) -> None:
    log_open_file_budget(settings, raise_open_file_limit())
    remove_stale_uploads(settings.state_dir)
    app = create_app(settings)
    run_dir = settings.state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    control_path = run_dir / "control.sock"
    control_path.unlink(missing_ok=True)
    control = ControlServer(
        uvicorn.Config(
            app,
            uds=str(control_path),
            http="httptools",
            lifespan="on",
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers go through the server's own setup (text or JSON)
            access_log=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=3600,  # the gateway pools these connections and closes idle ones itself
        )
    )
    control_task = asyncio.create_task(control.serve(), name="control plane")
    while not control.started:
        if control_task.done():
            control_task.result()
            raise SystemExit("agentcell: the control plane failed to start; see the log above")
        await asyncio.sleep(0.01)

    router = GatewayRouter(
        app.state.scheduler,
        UnixUpstream(str(control_path)),
        settings.fn_domain,
        app.state.telemetry,
        e2b=app.state.e2b_ports,
        auth=app.state.request_auth,
        control_app=app,  # plain requests in-process; upgrades, chunked bodies, Expect via uvicorn
    )
    gateway = GatewayServer(
        router,
        request_timeout_s=settings.request_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_connections=settings.connection_limit(),
        max_connections_per_client=settings.max_connections_per_client,
        access_log=access.add,
    )
    await gateway.start(settings.host, settings.port)
    protect_own_ports(app.state.node_egress, gateway)
    tune_garbage_collector()
    log.info("agentcell listening on %s", gateway.addresses)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([control_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("agentcell shutting down: draining requests")
    await gateway.aclose(
        drain_timeout_s=settings.drain_timeout_s,
        before_abort=commands_stopper(app.state.sandboxes),
        before_abort_s=COMMANDS_STOP_BEFORE_S,
    )
    control.should_exit = True
    await control_task
    access.close()
    control_path.unlink(missing_ok=True)


def serve(argv: list[str] | None = None) -> None:
    settings = Settings(**parse_overrides(argv))  # type: ignore[arg-type]
    handler = setup_logging(settings.log_level, settings.log_format, {"request_id": request_id_var})
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    uvloop.run(run(settings, gateway_access_log(handler.stream, settings.log_format)))
