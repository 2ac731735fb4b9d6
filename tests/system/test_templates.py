"""Templates on the real driver: a recipe built inside a sandbox into a read-only layer, then
sandboxes started from it. No network anywhere: packages come from files made in the test."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import Conflict, NotFound
from agentcell.protocol.commands import CommandRequest
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.protocol.templates import (
    BuildEndEvent,
    BuildLogEvent,
    BuildStepEvent,
    Recipe,
    TemplateBuildRequest,
)
from agentcell.server.clock import SystemClock
from agentcell.server.egress.node import EgressConfig
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.templates.builds import BuildResources
from agentcell.server.templates.service import TemplateService
from tests.packages import simple_index, tiny_npm_package, tiny_wheel
from tests.system.conftest import node_leftovers

pytestmark = pytest.mark.timeout(120)


class Node:
    """A TemplateService and a SandboxService on one LinuxDriver, as the app wires them."""

    def __init__(self, driver: LinuxDriver, root: Path, resources: BuildResources | None = None) -> None:
        self.driver = driver
        self.root = root
        self.templates = TemplateService(driver, SystemClock(), root, resources=resources)
        self.sandboxes = SandboxService(
            driver, SystemClock(), max_sandboxes=10, pids_max=256, stop_grace_s=0.2, templates=self.templates
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Node:
        for work in (self.templates.run, self._sandbox_service):
            started = asyncio.Event()
            self._tasks.append(asyncio.create_task(work(started)))
            await started.wait()
        return self

    async def _sandbox_service(self, started: asyncio.Event) -> None:
        await self.sandboxes.run(0.5, started)

    async def __aexit__(self, *exc: object) -> None:
        await self.sandboxes.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def build(self, name: str, recipe: dict[str, object]) -> tuple[BuildEndEvent, str]:
        build = self.templates.start_build(
            TemplateBuildRequest(name=name, recipe=Recipe.model_validate(recipe))
        )
        output = []
        async for event in build.events():
            if isinstance(event, BuildLogEvent):
                output.append(event.data)
            if isinstance(event, BuildEndEvent):
                return event, "".join(output)
        raise AssertionError("the build log ended without an end event")

    async def sh(self, sandbox_id: str, script: str) -> tuple[int, str]:
        process = await self.sandboxes.start_process(sandbox_id, CommandRequest(cmd=script, timeout_s=30))
        out = []
        async for event in self.sandboxes.run_foreground(process, sandbox_id):
            if event.type == "stdout" or event.type == "stderr":
                out.append(event.data)
        assert process.exit is not None
        return process.exit.exit_code or 0, "".join(out)


@pytest.fixture
async def node(linux_driver: LinuxDriver, tmp_path: Path) -> AsyncIterator[Node]:
    async with Node(linux_driver, tmp_path / "templates") as node:
        yield node


def packages_recipe() -> dict[str, object]:
    wheel_name, wheel = tiny_wheel()
    npm_name, npm = tiny_npm_package()
    return {
        "files": [
            {"path": wheel_name, "content_b64": base64.b64encode(wheel).decode()},
            {"path": npm_name, "content_b64": base64.b64encode(npm).decode()},
            {
                "path": "/opt/template/bin/hello",
                "content": "#!/bin/sh\necho hello from the layer\n",
                "executable": True,
            },
        ],
        "pip": ["acelltiny"],
        "pip_no_index": True,
        "npm": [f"./{npm_name}"],
        "commands": ["echo building as $(id -un); python3 -c 'import acelltiny' && echo imported"],
        "env": {"GREETING": "hi"},
    }


async def test_pip_and_npm_packages_work_in_a_new_instance_with_no_network(node: Node) -> None:
    """The pip package imports and the npm package resolves in a sandbox of the template, whose
    network is loopback only; the layer's bin dir is on PATH and the recipe's env is set."""
    end, output = await node.build("pkgs", packages_recipe())
    assert end.state == "ready", (end.error, output)
    assert "building as user" in output and "imported" in output
    sandbox = await node.sandboxes.create(SandboxCreate(template="pkgs"))
    code, out = await node.sh(
        sandbox.id,
        "python3 -c 'import acelltiny; print(acelltiny.VALUE)';"
        " node -e 'console.log(require(\"acell-tiny\") + 1)'; acell-tiny; hello; echo $GREETING;"
        " python3 -c 'import socket; print(socket.if_nameindex())'",
    )
    assert code == 0, out
    assert out.splitlines() == ["42", "43", "42", "hello from the layer", "hi", "[(1, 'lo')]"]


async def test_the_layer_is_read_only_inside_and_root_owned_on_the_host(node: Node) -> None:
    """Writes into /opt/template fail with EROFS, even where the sandbox user wrote during the build."""
    end, _ = await node.build(
        "ro", {"commands": ["mkdir -p /opt/template/data && echo 1 > /opt/template/data/x"]}
    )
    assert end.state == "ready", end.error
    sandbox = await node.sandboxes.create(SandboxCreate(template="ro"))
    _, out = await node.sh(
        sandbox.id, "echo 2 > /opt/template/data/x; touch /opt/template/new; cat /opt/template/data/x"
    )
    assert "Read-only file system" in out and out.count("Read-only file system") == 2, out
    assert "1" in out.splitlines() and "2" not in out.splitlines()  # stdout and stderr may interleave
    layer = node.root / "ro" / "layer"
    assert {os.lstat(p).st_uid for p in [layer, *layer.rglob("*")]} == {0}


async def test_a_failing_command_fails_the_build_with_its_log_and_registers_nothing(node: Node) -> None:
    """The failing step's output is in the log and the error; no template, no staging dir remain."""
    end, output = await node.build(
        "broken",
        {"commands": ["echo step one > /opt/template/one", "echo about to fail; exit 3", "echo never"]},
    )
    assert end.state == "failed" and end.template is None
    assert end.error is not None and "exited with 3" in end.error and "about to fail" in end.error
    assert "about to fail" in output and "never" not in output
    with pytest.raises(NotFound, match="broken"):
        node.templates.get("broken")
    with pytest.raises(NotFound, match="template 'broken' not found"):
        await node.sandboxes.create(SandboxCreate(template="broken"))
    assert sorted(p.name for p in node.root.iterdir()) == [".builds", ".trash"]
    assert list((node.root / ".builds").iterdir()) == []
    assert [p.name for p in (node.driver.state_dir / "instances").iterdir()] == []


async def test_templates_survive_a_restart_and_delete_waits_for_their_sandboxes(
    node: Node, linux_driver: LinuxDriver
) -> None:
    """A new service on the same state finds the template; delete is refused while a sandbox uses
    it, and removes the layer once none does."""
    end, _ = await node.build("keep", {"commands": ["echo kept > /opt/template/marker"]})
    assert end.state == "ready", end.error
    async with Node(linux_driver, node.root) as again:
        assert again.templates.get("keep").built_at == end.template.built_at if end.template else False
        sandbox = await again.sandboxes.create(SandboxCreate(template="keep"))
        assert await again.sh(sandbox.id, "cat /opt/template/marker") == (0, "kept\n")
        assert again.templates.get("keep").instances == 1
        with pytest.raises(Conflict, match="used by 1 running sandbox"):
            await again.templates.delete("keep")
        await again.sandboxes.kill(sandbox.id)
        await again.templates.delete("keep")
        assert not (node.root / "keep").exists()
        with pytest.raises(NotFound):
            again.templates.get("keep")


@pytest.fixture
async def mirror_node(tmp_path: Path, prebuilt_helper: Path) -> AsyncIterator[tuple[Node, str]]:
    """A node whose pip mirror caches a PEP 503 index served on the host's loopback; (node, index
    address as an allow entry)."""
    wheel_name, wheel = tiny_wheel(value=77)
    (tmp_path / "index").mkdir()
    with simple_index({wheel_name: wheel}, tmp_path / "index") as index_url:
        state = tmp_path / "mirror-state"
        (state / "bin").mkdir(parents=True)
        shutil.copy2(prebuilt_helper, state / "bin" / prebuilt_helper.name)
        config = EgressConfig(cache_dir=state / "package-cache", pip_index_url=index_url)
        driver = LinuxDriver(state, close_grace_s=0.5, egress=config)
        try:
            async with Node(driver, state / "templates") as node:
                yield node, index_url.split("/")[2]
        finally:
            await driver.aclose()
            assert node_leftovers(driver) == [], "the driver left part of its node behind"


async def test_a_build_with_an_allowlist_installs_from_a_local_index_and_instances_need_no_network(
    mirror_node: tuple[Node, str],
) -> None:
    """The build's egress policy names the loopback index: pip resolves `acelltiny` through the
    node's mirror; a sandbox of the template (egress none) imports it with no route out."""
    node, index_address = mirror_node
    request = TemplateBuildRequest(
        name="from-index",
        recipe=Recipe(pip=["acelltiny==0.1"]),
        network=NetworkPolicy(egress="allowlist", allow=[index_address]),
    )
    build = node.templates.start_build(request)
    events = [event async for event in build.events()]
    end = events[-1]
    assert isinstance(end, BuildEndEvent) and end.state == "ready", (end, events)
    sandbox = await node.sandboxes.create(SandboxCreate(template="from-index"))
    code, out = await node.sh(
        sandbox.id,
        "python3 -c 'import acelltiny; print(acelltiny.VALUE)';"
        f" curl -sS --max-time 2 http://{index_address}/simple/ >/dev/null 2>&1 || echo no route",
    )
    assert (code, out) == (0, "77\nno route\n")


async def test_a_server_stop_during_a_build_leaves_no_template_and_no_build_sandbox(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    """Stopping the service cancels the build: its sandbox stops, its staging dir goes, and the
    next start finds no trace (the fixture checks the driver's cgroups and state files)."""
    root = tmp_path / "templates"
    async with Node(linux_driver, root) as node:
        build = node.templates.start_build(
            TemplateBuildRequest(name="cut", recipe=Recipe(commands=["touch /opt/template/half; sleep 60"]))
        )
        async for event in build.events():
            if isinstance(event, BuildStepEvent) and event.index == 2:
                break
        await asyncio.sleep(0.3)
    assert build.state == "failed" and build.error == "the server stopped during the build"
    assert list((root / ".builds").iterdir()) == [] and not (root / "cut").exists()
    assert [p.name for p in (linux_driver.state_dir / "instances").iterdir()] == []
    async with Node(linux_driver, root) as again:  # builds live in memory: the restart forgot it
        with pytest.raises(NotFound, match="forgotten when the server restarts"):
            again.templates.build(build.id)


async def test_a_step_that_overfills_the_layer_is_killed_and_fails_the_build(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    """The layer lives on the node's disk: past its size limit the running step is killed."""
    limits = BuildResources(layer_bytes=1 << 20, layer_check_s=0.1)
    async with Node(linux_driver, tmp_path / "templates", limits) as node:
        end, _ = await node.build("big", {"commands": ["head -c 4M /dev/zero > /opt/template/big; sleep 60"]})
        assert end.state == "failed" and end.error is not None and "larger than 1 MiB" in end.error
        assert list((tmp_path / "templates" / ".builds").iterdir()) == []
