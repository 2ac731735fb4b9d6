"""create_app: the one wiring point. Builds the concrete driver, store, services and routes from
Settings; the lifespan starts and stops their background work in a fixed order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI

from agentcell import __version__
from agentcell.server.api import code, commands, files, functions, publish, sandboxes, sessions, usage
from agentcell.server.api import snapshots as snapshots_api
from agentcell.server.api import templates as templates_api
from agentcell.server.api import tenants as tenants_api
from agentcell.server.api import workspaces as workspaces_api
from agentcell.server.api.auth import AuthMiddleware, audited_actor
from agentcell.server.api.errors import RequestIdMiddleware, install_error_handlers
from agentcell.server.api.functions import uploads_dir
from agentcell.server.api.lean import install_lean_routes
from agentcell.server.api.limits import BodyLimitMiddleware
from agentcell.server.api.mcp_lazy import LazyMcp
from agentcell.server.api.observability import FASTAPI_TELEMETRY_OFF, install_observability
from agentcell.server.api.publish import Publisher
from agentcell.server.auth.access import RateLimiter, RequestAuth
from agentcell.server.auth.quotas import QuotaGuard
from agentcell.server.auth.tenants import TenantService
from agentcell.server.clock import Clock, SystemClock
from agentcell.server.e2b.mount import PREFIX as E2B_PREFIX
from agentcell.server.e2b.mount import e2b_app
from agentcell.server.e2b.ports import E2bPorts
from agentcell.server.egress.node import EgressConfig, NodeEgress, ports_of
from agentcell.server.interpreter.context import InterpreterLimits
from agentcell.server.interpreter.contexts import Interpreter
from agentcell.server.meta.history import HistoryRetention
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.meta.store import MetaStore
from agentcell.server.node_secrets import node_secret
from agentcell.server.observability.audit import AuditLog
from agentcell.server.observability.telemetry import Telemetry, build_telemetry
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.command_budget import CommandBudget, server_command_limit_of
from agentcell.server.scheduler.function_quota import FunctionQuota
from agentcell.server.scheduler.metering import UsageLedger
from agentcell.server.scheduler.node_capacity import NodeCapacity
from agentcell.server.scheduler.processes import CommandLimits
from agentcell.server.scheduler.sandbox_metrics import SandboxMetrics
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandbox_pool import SandboxPool, default_spec
from agentcell.server.scheduler.sandbox_snapshots import SandboxSnapshots
from agentcell.server.scheduler.sandboxes import SandboxService, new_sandbox_id
from agentcell.server.scheduler.scheduler import Scheduler, SchedulerLimits
from agentcell.server.scheduler.terminals import TerminalService
from agentcell.server.scheduler.usage import PriceTable
from agentcell.server.scheduler.watch_streams import WatchStreams
from agentcell.server.scheduler.workspaces import WorkspaceKeeper
from agentcell.server.settings import Settings
from agentcell.server.storage.objects import ObjectStore, open_object_store
from agentcell.server.storage.snapshots import Snapshots
from agentcell.server.templates.builds import BuildResources
from agentcell.server.templates.service import TemplateService

log = logging.getLogger(__name__)

HISTORY_PRUNE_INTERVAL_S = 3600.0


def build_driver(settings: Settings) -> SandboxDriver:
    if settings.driver == "fake":
        from agentcell.server.sandbox.fake import FakeDriver

        # under the state dir, not a temp dir of its own: a server killed before its shutdown
        # (tests kill many) left that temp dir behind for good
        return FakeDriver(settings.state_dir / "fake-sandboxes")
    from agentcell.server.sandbox.linux.driver import LinuxDriver, become_subreaper

    become_subreaper()
    return LinuxDriver(settings.state_dir, egress=build_egress_config(settings))


def build_egress_config(settings: Settings) -> EgressConfig:
    """The egress proxy and, with `package_cache`, mirrors of the host's configured pip index and
    npm registry, cached under the state dir."""
    cache = settings.package_cache
    return EgressConfig(
        proxy_port=settings.egress_proxy_port,
        cache_dir=settings.state_dir / "package-cache" if cache else None,
        pip_index_url=settings.host_pip_index_url() if cache else None,
        npm_registry_url=settings.host_npm_registry() if cache else None,
        # the API, and the backends holding every tenant's data when they run on this host
        protected_ports=((settings.port,) if settings.port else ())
        + ports_of(settings.s3_endpoint, settings.otlp_endpoint),
    )


def node_egress_of(driver: SandboxDriver) -> NodeEgress | None:
    """The driver's egress proxy, if it runs one (the Linux driver's; the fake driver has none)."""
    egress = getattr(driver, "egress", None)
    return egress if isinstance(egress, NodeEgress) else None


def build_object_store(settings: Settings) -> ObjectStore:
    from agentcell.server.storage.s3 import S3ObjectStore  # (as open_object_store: only if used)

    store = open_object_store(
        settings.store or f"file://{settings.state_dir / 'objects'}",
        s3_endpoint=settings.s3_endpoint,
        s3_region=settings.s3_region,
        s3_access_key=settings.s3_access_key,
        s3_secret_key=settings.s3_secret_key,
    )
    if isinstance(store, S3ObjectStore) and settings.s3_timeout_s is not None:
        # (open_object_store takes no timeout; the unused client holds no connection yet)
        return S3ObjectStore(store.config, timeout_s=settings.s3_timeout_s)
    return store


async def _start(work: Coroutine[Any, Any, None], name: str, started: asyncio.Event) -> asyncio.Task[None]:
    """Run `work` as a task and return once it set `started` (or raise what it failed with)."""
    task = asyncio.create_task(work, name=name)
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        raise RuntimeError(f"{name} stopped during start-up")
    return task


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    settings: Settings,
    *,
    driver: SandboxDriver | None = None,
    store: MetaStore | None = None,
    clock: Clock | None = None,
    objects: ObjectStore | None = None,
    telemetry: Telemetry | None = None,
) -> FastAPI:
    clock = clock or SystemClock()
    telemetry = telemetry or build_telemetry(
        settings.metrics, settings.otlp_endpoint, settings.trace_sample_ratio
    )
    driver = driver or build_driver(settings)
    store = store or SqliteMetaStore(settings.state_dir / "meta.db")
    objects = objects or build_object_store(settings)
    tenants = TenantService(store, clock)
    quotas = QuotaGuard(tenants.quotas)

    def storage_quota(tenant: str) -> int | None:
        """The tenant's own quota (0: nothing may be stored), else the node's (0 there: unlimited)."""
        quota_mb = tenants.quotas(tenant).max_storage_mb
        if quota_mb is None:
            quota_mb = settings.tenant_storage_quota_mb or None
        return None if quota_mb is None else quota_mb << 20

    history = HistoryRetention(store, clock, retention_s=settings.history_retention_days * 86400)
    snapshots = Snapshots(objects, clock)
    workspaces = WorkspaceKeeper(
        driver, snapshots, store, clock, quota_bytes=storage_quota, node=str(settings.state_dir.resolve())
    )
    templates = TemplateService(
        driver,
        clock,
        settings.state_dir / "templates",
        max_builds=settings.max_template_builds,
        resources=BuildResources(layer_bytes=settings.max_template_mb << 20),
    )
    command_budget = CommandBudget(server_command_limit_of(settings))  # commands and kernels share it
    interpreter = Interpreter(
        driver,
        clock,
        InterpreterLimits(
            max_contexts=settings.code_max_contexts,
            max_output_bytes=settings.code_max_output_bytes,
            interrupt_grace_s=settings.code_interrupt_grace_s,
        ),
        budget=command_budget,
    )
    pool = SandboxPool(
        driver,
        clock,
        size=settings.sandbox_pool,
        max_size=settings.sandbox_pool_max,
        spec=default_spec(settings.default_pids_max),
        new_id=new_sandbox_id,
        registry=telemetry.registry,
    )
    ledger = UsageLedger(store)  # one for sessions and sandboxes: a usage read sees both's queued rows
    # sandboxes and function instances share the node's room (the pool's idle ones live in what is left)
    capacity = NodeCapacity(settings.max_sandboxes, registry=telemetry.registry)
    sandbox_service = SandboxService(
        driver,
        clock,
        pids_max=settings.default_pids_max,
        stop_grace_s=settings.stop_grace_s,
        templates=templates,
        interpreter=interpreter,
        ledger=ledger,
        usage_interval_s=settings.usage_interval_s,
        telemetry=telemetry,
        quotas=quotas,
        pool=pool,
        capacity=capacity,
        command_limits=CommandLimits(
            settings.sandbox_max_commands,
            settings.sandbox_max_stdin_bytes,
            server=command_budget,
        ),
        traffic_secret=node_secret(settings.state_dir, "traffic-token-key"),
    )
    pauses = SandboxPauses(
        sandbox_service,
        driver,
        snapshots,
        store,
        workspaces,
        clock,
        retention_s=settings.paused_sandbox_retention_s,
    )
    sandbox_snapshots = SandboxSnapshots(sandbox_service, pauses, driver, snapshots, store, workspaces, clock)
    sandbox_metrics = SandboxMetrics(sandbox_service, driver, clock)
    terminals = TerminalService(driver, sandbox_service, clock)
    scheduler = Scheduler(
        driver,
        store,
        clock,
        settings.state_dir / "functions",
        SchedulerLimits(
            pids_max=settings.default_pids_max,
            stop_grace_s=settings.stop_grace_s,
            max_waiting=settings.max_waiting_requests,
            wait_timeout_s=settings.wait_timeout_s,
            start_concurrency=settings.start_concurrency,
            usage_interval_s=settings.usage_interval_s,
        ),
        workspaces,
        templates=templates,
        telemetry=telemetry,
        quotas=quotas,
        ledger=ledger,
        capacity=capacity,
    )
    templates.add_dependents(scheduler, pauses)  # functions and paused sandboxes start from them later
    templates.add_dependents(sandbox_snapshots)  # and sandboxes from snapshots

    audit = AuditLog(store, clock)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.open()
        await tenants.load()
        if settings.auth == "keys":
            key_file = settings.state_dir / "admin.key"
            if (key := await tenants.bootstrap(key_file, settings.admin_key)) is not None:
                log.warning("the admin API key (shown once; also in %s, mode 0600): %s", key_file, key)
        # Order matters: templates are loaded before re-adopted instances count their users; the
        # scheduler re-adopts its instances before the sandbox service reaps whatever else an
        # earlier server left behind.
        templates_task = await _start(templates.run(ready := asyncio.Event()), "templates", ready)
        functions_task = await _start(
            scheduler.run(settings.reap_interval_s, ready := asyncio.Event()), "scheduler", ready
        )
        sandboxes_task = await _start(
            sandbox_service.run(settings.reap_interval_s, ready := asyncio.Event()), "sandbox service", ready
        )
        pauses_task = await _start(
            pauses.run(settings.reap_interval_s, ready := asyncio.Event()), "paused sandboxes", ready
        )
        await sandbox_snapshots.load()  # before the sweep of unfinished saves
        history_task = await _start(
            history.run(HISTORY_PRUNE_INTERVAL_S, ready := asyncio.Event()), "history", ready
        )
        pool_task = await _start(pool.run(ready := asyncio.Event()), "sandbox pool", ready)  # after the reap
        # after the reap, the adopted sessions and the loaded paused sandboxes, which it spares
        sweep_task = asyncio.create_task(workspaces.sweep_unfinished(), name="unfinished saves")
        try:
            yield
        finally:
            await mcp.aclose()
            await _cancel(sweep_task)
            await _cancel(templates_task)  # builds in progress stop their sandboxes and are dropped
            await _cancel(pool_task)
            await _cancel(history_task)
            await pool.aclose()
            await sandbox_service.aclose()
            await interpreter.aclose()
            await scheduler.aclose()
            await _cancel(pauses_task)
            await _cancel(sandboxes_task)
            await _cancel(functions_task)
            await driver.aclose()
            await objects.aclose()
            await audit.aclose()  # the entries of the last requests
            await store.aclose()
            await telemetry.aclose()

    app = FastAPI(title="agentcell", version=__version__, lifespan=lifespan, telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.settings = settings
    app.state.sandboxes = sandbox_service
    app.state.pauses = pauses
    app.state.terminals = terminals
    app.state.watches = WatchStreams(sandbox_service)  # the native API's (api/files.py)
    envd_secret = node_secret(settings.state_dir, "envd-token-key")
    e2b = e2b_app(sandbox_service, clock, pauses, sandbox_metrics, terminals, envd_secret)
    e2b.control.state.snapshots = sandbox_snapshots  # E2B's snapshots and fork
    app.state.snapshots = sandbox_snapshots  # the native API's (api/snapshots.py)
    app.state.e2b_ports = E2bPorts(sandbox_service, pauses, driver, settings.e2b_domain)
    app.state.scheduler = scheduler
    app.state.node_egress = node_egress_of(driver)  # main.py protects the ports it binds
    app.state.workspaces = workspaces
    app.state.prices = PriceTable(
        cpu_core_s=settings.price_cpu_core_s,
        memory_gib_s=settings.price_memory_gib_s,
        idle_memory_gib_s=settings.price_idle_memory_gib_s,
        storage_gib_h=settings.price_storage_gib_h,
    )
    app.state.templates = templates
    app.state.tenants = tenants
    function_quota = FunctionQuota(  # tenants' max_functions and max_code_mb, at deploys
        settings.state_dir / "functions", tenants.quotas, lambda: [f.name for f in scheduler.functions()]
    )
    app.state.function_quota = function_quota
    publisher = Publisher(sandbox_service, scheduler, function_quota, uploads_dir(settings.state_dir), clock)
    app.state.publisher = publisher
    mcp = LazyMcp(sandbox_service, pauses, publisher)  # built on the first /mcp request
    limiter = RateLimiter(clock, lambda tenant: tenants.quotas(tenant).max_rps)
    request_auth = RequestAuth(tenants.ring, limiter, required=settings.auth == "keys")
    app.state.request_auth = request_auth
    install_error_handlers(app)
    routers = (
        sandboxes,
        snapshots_api,
        commands,
        code,
        files,
        functions,
        publish,
        sessions,
        workspaces_api,
        templates_api,
        usage,
        tenants_api,
    )
    for module in routers:
        app.include_router(module.router)
    app.router.routes.extend(mcp.routes())
    # the E2B-compatible API (docs/e2b.md)
    app.mount(E2B_PREFIX, e2b)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    install_lean_routes(app, [module.router for module in routers])
    app.add_middleware(AuthMiddleware, auth=request_auth)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)
    install_observability(app, telemetry, audit, metrics_enabled=settings.metrics, actor_of=audited_actor)
    app.add_middleware(RequestIdMiddleware)
    return app
