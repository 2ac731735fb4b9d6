"""Publishing: what an agent built in a sandbox becomes a function (POST
/v1/sandboxes/{id}/publish, and the MCP server's `publish_sandbox` tool).

A directory of the running sandbox is packed as a deploy's archive is (every file readable by the
sandbox user, or a 403 naming the one that is not), and deployed as the next version of the
function: a service with its own URL (`/fn/{name}/`), scaled from zero, whose version remembers
the sandbox it came from (`config.published_from`). The sandbox runs on, untouched.
"""

from __future__ import annotations

import os
import posixpath
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request

from agentcell.errors import InvalidArgument, NotFound, PayloadTooLarge
from agentcell.protocol.files import wire_text
from agentcell.protocol.functions import FunctionConfig, FunctionInfo, PublishedFrom, SandboxPublish
from agentcell.server.api.archive import archive_entries, tar_of
from agentcell.server.api.deps import Sandboxes
from agentcell.server.api.functions import MAX_ARCHIVE_BYTES, deploy_archive, save_archive
from agentcell.server.api.tenancy import function_name
from agentcell.server.clock import Clock
from agentcell.server.sandbox.driver import SANDBOX_HOME, SANDBOX_PATH, FileStat, SandboxFiles
from agentcell.server.scheduler.function_quota import FunctionQuota
from agentcell.server.scheduler.lifecycle import CODE_DIR
from agentcell.server.scheduler.sandboxes import Sandbox, SandboxService
from agentcell.server.scheduler.scheduler import Scheduler as FunctionScheduler

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["functions"])
PACKAGES = f"{SANDBOX_HOME}/.local"
PACKAGES_ENV = {
    "PYTHONUSERBASE": f"{CODE_DIR}/.local",
    "PATH": f"{CODE_DIR}/.local/bin:{SANDBOX_PATH}",
    "NODE_PATH": f"{CODE_DIR}/.local/lib/node_modules",
}
"""how a function finds the run-time installs published with its code"""
Tree = tuple[str, list[FileStat]]
"""a listed tree of the sandbox, and the directory its archive names are relative to"""


class Publisher:
    """Packs a directory of a sandbox and deploys it as a function's next version."""

    def __init__(
        self,
        sandboxes: SandboxService,
        scheduler: FunctionScheduler,
        quota: FunctionQuota,
        uploads: Path,
        clock: Clock,
    ) -> None:
        self._sandboxes = sandboxes
        self._scheduler = scheduler
        self._quota = quota
        self._uploads = uploads
        self._clock = clock

    async def publish(self, sandbox_id: str, request: SandboxPublish) -> FunctionInfo:
        """Raises NotFound (the sandbox, the path), NotRunning, InvalidArgument (not a directory),
        PermissionDenied (a file the sandbox user may not read), PayloadTooLarge (over 512 MiB),
        and what a deploy raises."""
        sandbox = self._sandboxes.running(sandbox_id)
        qualified = function_name(request.function)
        self._quota.check_count(qualified)  # before packing: it may be large
        files = self._sandboxes.files(sandbox.id)
        root = await files.stat(request.path)
        if root.type != "dir":
            raise InvalidArgument(
                f"{wire_text(root.path)} is not a directory: publish the directory that holds the "
                "code (it becomes /code)"
            )
        try:
            trees: list[Tree] = [(root.path, await archive_entries(files, root))]
        except PayloadTooLarge:  # (its advice is a download's)
            raise PayloadTooLarge(
                f"{wire_text(root.path)} holds more entries than one archive may (the listing "
                "limit): publish the directory of the project itself"
            ) from None
        carried = request.packages and await self._carry_packages(files, root.path, trees)
        os.makedirs(self._uploads, exist_ok=True)
        try:
            archive = await save_archive(tar_of(files, trees), self._uploads)
        except PayloadTooLarge:
            raise PayloadTooLarge(
                f"{wire_text(root.path)} is larger than {MAX_ARCHIVE_BYTES >> 20} MiB as an archive"
                f"{' with ~/.local' if carried else ''}: publish a smaller directory"
                f"{', leave the packages out (packages: false)' if carried else ''} and install "
                "dependencies at start-up, or build a template"
            ) from None
        config = self._published_config(request, sandbox, root.path, carried)
        return await deploy_archive(self._quota, self._scheduler, qualified, config, archive)

    @staticmethod
    async def _carry_packages(files: SandboxFiles, root: str, trees: list[Tree]) -> bool:
        """Add ~/.local (what `pip install` and `npm -g` put there) to the archive as `.local`,
        unless the published directory holds it, or a `.local` of its own, already. Whether the
        code has the packages at /code/.local."""
        own = posixpath.join(root, ".local")
        if root == SANDBOX_HOME:
            return any(entry.path == PACKAGES for entry in trees[0][1])
        inside = root == PACKAGES or root.startswith(PACKAGES + "/")
        if inside or any(entry.path == own for entry in trees[0][1]):
            return False
        try:
            packages = await files.stat(PACKAGES)
        except NotFound:
            return False
        if packages.type != "dir":
            return False
        trees.append((SANDBOX_HOME, await archive_entries(files, packages)))
        return True

    def _published_config(
        self, request: SandboxPublish, sandbox: Sandbox, path: str, packages: bool
    ) -> FunctionConfig:
        created = sandbox.request
        source = PublishedFrom(
            sandbox_id=sandbox.id,
            path=wire_text(path),
            template=created.template,
            sandbox_metadata=created.metadata,
            published_at=datetime.fromtimestamp(self._clock.now(), UTC),
        )
        update: dict[str, object] = {"published_from": source}
        if packages:  # (a variable the config sets itself is left as it is)
            update["env"] = {**PACKAGES_ENV, **request.config.env}
        if "template" not in request.config.model_fields_set:
            update["template"] = created.template  # (what the code was built and tried on)
        return request.config.model_copy(update=update)


@router.post("/publish")
async def publish(sandbox_id: str, body: SandboxPublish, request: Request, _woken: Sandboxes) -> FunctionInfo:
    """Deploy the directory `path` of the sandbox as the next version of function `function`
    (made if new). 404 for an unknown sandbox or path, 409 when the sandbox is not running, 400
    when `path` is not a directory, 403 when it holds a file the sandbox user may not read, 413
    past 512 MiB. (`_woken`: a paused sandbox with `auto_resume` resumes first, as for any work.)"""
    publisher: Publisher = request.app.state.publisher
    return await publisher.publish(sandbox_id, body)
