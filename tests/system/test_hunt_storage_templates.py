"""A template build's layer lives on the node's own disk, written by hostile recipe commands: its
size limit must hold whatever shape the tree has (long paths, deep trees, many empty entries, a
step that ends before the watchdog looks), the seal must reach every file, and no tree may break
the template service itself."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.templates.builds import BuildResources
from tests.system.test_templates import Node

pytestmark = pytest.mark.timeout(120)

# cd down a chain of 250-byte names until the path is longer than PATH_MAX (4096 bytes).
LONG_PATH = (
    'cd /opt/template && n=$(printf "d%.0s" $(seq 250)) && '
    'for i in $(seq 18); do mkdir "$n" && cd "$n" || exit 1; done'
)


async def test_a_step_that_overfills_the_layer_and_ends_at_once_fails_the_build(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    """The watchdog looks every few seconds; a step done before it looks is measured at the end."""
    limits = BuildResources(layer_bytes=1 << 20, layer_check_s=60)
    async with Node(linux_driver, tmp_path / "templates", limits) as node:
        end, _ = await node.build("quick", {"commands": ["head -c 4M /dev/zero > /opt/template/big"]})
        assert end.state == "failed" and end.error is not None and "larger than 1 MiB" in end.error
        assert not (tmp_path / "templates" / "quick").exists()


async def test_bytes_below_a_path_longer_than_path_max_count(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    limits = BuildResources(layer_bytes=1 << 20, layer_check_s=0.1)
    async with Node(linux_driver, tmp_path / "templates", limits) as node:
        end, _ = await node.build(
            "long", {"commands": [f"{LONG_PATH} && head -c 4M /dev/zero > big; sleep 20"]}
        )
        assert end.state == "failed" and end.error is not None and "larger than 1 MiB" in end.error


async def test_many_empty_entries_count_against_the_layer(linux_driver: LinuxDriver, tmp_path: Path) -> None:
    """Empty files and directories cost the node's disk inodes and blocks too."""
    limits = BuildResources(layer_bytes=1 << 20, layer_check_s=0.1)
    script = "cd /opt/template && mkdir d && cd d && seq 3000 | xargs touch && mkdir $(seq 3001 3500)"
    async with Node(linux_driver, tmp_path / "templates", limits) as node:
        end, _ = await node.build("empty", {"commands": [f"{script}; sleep 20"]})
        assert end.state == "failed" and end.error is not None and "larger than 1 MiB" in end.error


async def test_the_seal_reaches_files_below_a_path_longer_than_path_max(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    async with Node(linux_driver, tmp_path / "templates") as node:
        script = f"{LONG_PATH} && echo x > tool && chmod 4777 tool && mkfifo pipe"
        end, _ = await node.build("sealed", {"commands": [script]})
        assert end.state == "ready", end.error
        layer = tmp_path / "templates" / "sealed" / "layer"
        odd = await asyncio.to_thread(
            subprocess.run,
            ["find", str(layer), "(", "-not", "-uid", "0", "-o", "-perm", "/6022", "-o", "-type", "p", ")"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert odd.stdout == ""


async def test_a_layer_too_deep_to_walk_fails_its_build_and_the_service_builds_on(
    linux_driver: LinuxDriver, tmp_path: Path
) -> None:
    limits = BuildResources(layer_check_s=0.1)
    async with Node(linux_driver, tmp_path / "templates", limits) as node:
        deep = "cd /opt/template && for i in $(seq 1500); do mkdir d && cd d || exit 1; done; sleep 2"
        end, _ = await node.build("deep", {"commands": [deep]})
        assert end.state == "failed" and end.error is not None and "levels deep" in end.error
        assert list((tmp_path / "templates" / ".builds").iterdir()) == []
        end, _ = await node.build("after", {"commands": ["echo hi > /opt/template/hi"]})
        assert end.state == "ready", end.error
