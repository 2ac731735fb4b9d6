"""TemplateService: the node's templates — build, list, resolve for a sandbox start, delete.

Owns the registry (name → Template, loaded from the layer store's manifests at start, so templates
survive a restart) and the builds in progress. A sandbox start `acquire`s its template and the
sandbox's end `release`s it: a template in use cannot be deleted (Conflict), since removing the
directory would pull the layer from under running instances. Nor can one that a
`TemplateDependent` still needs (a deployed function, a paused sandbox): it would fail to start
later. Builds that were running when the server stopped are not resumed: their staging dirs are
dropped at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from agentcell.errors import Conflict, InvalidArgument, NotFound, QuotaExceeded, Unavailable
from agentcell.protocol.templates import (
    BASE_TEMPLATE,
    TEMPLATE_ROOT,
    Recipe,
    TemplateBuildRequest,
    TemplateInfo,
)
from agentcell.server.clock import Clock
from agentcell.server.sandbox.driver import Mount, SandboxDriver
from agentcell.server.templates.builds import Build, BuildFailed, BuildResources, BuildRunner
from agentcell.server.templates.layers import LayerRefused, LayerStore
from agentcell.server.templates.recipe import layer_dirs_of, template_env

log = logging.getLogger(__name__)

KEPT_BUILDS = 64
"""finished builds remembered for GET /v1/template-builds/{id} (their logs included)"""


@dataclass(slots=True)
class Template:
    info: TemplateInfo
    """as recorded in the manifest (instances: 0)"""
    layer: Path
    users: int = 0


@dataclass(frozen=True, slots=True)
class ResolvedTemplate:
    """What a sandbox of this template starts with, on top of base."""

    name: str
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


class TemplateDependent(Protocol):
    """Something that will start sandboxes from a template later: the scheduler (deployed
    functions) and the paused sandboxes. Registered with `TemplateService.add_dependents` at the
    wiring point, since they are built after (and on top of) the templates."""

    def needs_template(self, name: str) -> str | None:
        """Called by `TemplateService.delete`, with no await between the answer and the removal:
        who needs template `name`, as a phrase of the Conflict message that says what to do
        ("needed by 1 paused sandbox(es) to resume (delete them first)"), or None (the delete may
        go on). Covers every tenant: templates are shared by the whole server."""
        ...


class TemplateService:
    def __init__(
        self,
        driver: SandboxDriver,
        clock: Clock,
        root: Path,
        *,
        max_builds: int = 2,
        resources: BuildResources | None = None,
    ) -> None:
        self._layers = LayerStore(root)
        self._runner = BuildRunner(driver, clock, resources or BuildResources())
        self._clock = clock
        self._max_builds = max_builds
        self._templates: dict[str, Template] = {}
        self._builds: OrderedDict[str, Build] = OrderedDict()
        self._tasks: asyncio.TaskGroup | None = None
        self._dependents: list[TemplateDependent] = []

    def add_dependents(self, *dependents: TemplateDependent) -> None:
        """Wiring: `delete` asks each of these too before it removes a template."""
        self._dependents.extend(dependents)

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Load the registry, then hold the build tasks until cancelled (which cancels builds)."""
        await asyncio.to_thread(self._layers.prepare)
        for name, manifest in (await asyncio.to_thread(self._layers.manifests)).items():
            self._load(name, manifest)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            if started is not None:
                started.set()
            await asyncio.Event().wait()

    def _load(self, name: str, manifest: bytes) -> None:
        try:
            info = TemplateInfo.model_validate_json(manifest)
        except ValidationError as exc:
            log.error("template %s: unreadable manifest, ignored: %s", name, exc)
            return
        self._templates[name] = Template(info, self._layers.layer_path(name))

    # -- templates ------------------------------------------------------------------------------

    def list(self) -> list[TemplateInfo]:
        return [self.get(BASE_TEMPLATE), *(self.get(name) for name in sorted(self._templates))]

    def get(self, name: str) -> TemplateInfo:
        if name == BASE_TEMPLATE:
            return TemplateInfo(name=BASE_TEMPLATE, description="the host system, read-only")
        template = self._find(name)
        return template.info.model_copy(update={"instances": template.users})

    def acquire(self, name: str) -> ResolvedTemplate:
        """Resolve `name` for a sandbox start and count the sandbox as a user until `release`."""
        if name == BASE_TEMPLATE:
            return ResolvedTemplate(BASE_TEMPLATE)
        template = self._find(name)
        template.users += 1
        mount = Mount(str(template.layer), TEMPLATE_ROOT, read_only=True)
        return ResolvedTemplate(name, (mount,), dict(template.info.env))

    def release(self, name: str) -> None:
        template = self._templates.get(name)
        if template is not None and template.users > 0:
            template.users -= 1

    async def delete(self, name: str) -> None:
        """Remove a template nothing uses or needs. Raises InvalidArgument (base), NotFound, or
        Conflict naming every user and dependent, and what to do about each."""
        if name == BASE_TEMPLATE:
            raise InvalidArgument("'base' is the host system and cannot be deleted")
        template = self._find(name)
        running = f"used by {template.users} running sandbox(es) or function instance(s)"
        holds = [f"{running} (kill them or end their sessions first)"] if template.users else []
        holds += [hold for dependent in self._dependents if (hold := dependent.needs_template(name))]
        if holds:
            raise Conflict(f"template {name!r} is {'; '.join(holds)}")
        del self._templates[name]
        await asyncio.to_thread(self._layers.remove, name)
        log.info("template %s deleted", name)

    def _find(self, name: str) -> Template:
        template = self._templates.get(name)
        if template is None:
            known = ", ".join([BASE_TEMPLATE, *sorted(self._templates)])
            building = " (its build is still running)" if self._building(name) else ""
            raise NotFound(f"template {name!r} not found{building}; available: {known}")
        return template

    # -- builds ---------------------------------------------------------------------------------

    def start_build(self, request: TemplateBuildRequest) -> Build:
        if self._tasks is None:
            raise Unavailable("the server is not accepting template builds (starting up or shutting down)")
        if request.name in self._templates:
            raise Conflict(f"template {request.name!r} exists; delete it first to rebuild it")
        if self._building(request.name):
            raise Conflict(f"template {request.name!r} is being built already")
        if sum(b.state == "building" for b in self._builds.values()) >= self._max_builds:
            raise QuotaExceeded(
                f"this node runs at most {self._max_builds} template builds at once", retry_after_s=5
            )
        build = self._runner.new(request)
        self._remember(build)
        self._tasks.create_task(self._run_build(build), name=f"template build {build.id}")
        log.info("template build %s (%s) started: %d step(s)", build.id, build.name, len(build.steps) + 1)
        return build

    def build(self, build_id: str) -> Build:
        build = self._builds.get(build_id)
        if build is None:
            raise NotFound(
                f"template build {build_id!r} not found: builds are kept in memory only (the last"
                f" {KEPT_BUILDS} finished ones) and are forgotten when the server restarts; a build"
                " a restart interrupted published nothing, start it again"
            )
        return build

    def _building(self, name: str) -> bool:
        return any(b.name == name and b.state == "building" for b in self._builds.values())

    def _remember(self, build: Build) -> None:
        self._builds[build.id] = build
        finished = [i for i, b in self._builds.items() if b.state != "building"]
        for build_id in finished[: max(0, len(self._builds) - KEPT_BUILDS)]:
            del self._builds[build_id]

    async def _run_build(self, build: Build) -> None:
        """Build, publish, end the log; on any failure the staging dir goes before the end event."""
        staging = await asyncio.to_thread(self._layers.new_staging, build.id)
        try:
            build_s = await self._runner.run(build, staging)
            info = await self._publish(build, build_s)
        except (BuildFailed, LayerRefused, OSError) as exc:
            await asyncio.to_thread(self._layers.discard, build.id)
            log.info("template build %s (%s) failed", build.id, build.name)  # its output: DEBUG only
            log.debug("template build %s failed: %s", build.id, exc)
            await build.end("failed", self._clock.now(), str(exc))
            return
        except BaseException:  # cancelled: the server is stopping
            await asyncio.shield(asyncio.to_thread(self._layers.discard, build.id))
            await build.end("failed", self._clock.now(), "the server stopped during the build")
            raise
        await build.end("ready", self._clock.now(), template=info)
        log.info("template %s built in %.1f s (%d bytes)", build.name, build_s, info.size_bytes)

    async def _publish(self, build: Build, build_s: float) -> TemplateInfo:
        try:
            size = await asyncio.to_thread(self._layers.seal, build.id)
        except LayerRefused as exc:
            raise BuildFailed(f"the build made {exc}") from None
        if why := self._runner.layer_problem(self._layers.staging(build.id), size):
            raise BuildFailed(f"the build made {why}")
        layer_dirs = await asyncio.to_thread(layer_dirs_of, self._layers.staging(build.id))
        recipe = build.request.recipe
        info = TemplateInfo(
            name=build.name,
            description=build.request.description,
            built_at=datetime.fromtimestamp(self._clock.now(), UTC),
            build_s=round(build_s, 3),
            size_bytes=size,
            env=template_env(recipe, layer_dirs),
            recipe=_without_file_contents(recipe),
        )
        manifest = info.model_dump_json().encode()
        layer = await asyncio.to_thread(self._layers.install, build.id, build.name, manifest)
        self._templates[build.name] = Template(info, layer)
        return info


def _without_file_contents(recipe: Recipe) -> Recipe:
    """The recipe as recorded: file paths stay, their (possibly large) contents do not."""
    files = [f.model_copy(update={"content": "", "content_b64": None}) for f in recipe.files]
    return recipe.model_copy(update={"files": files})
