"""Templates without a sandbox: recipe validation, build steps, the env, the bounded build log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agentcell.protocol.templates import BuildEndEvent, BuildLogEvent, BuildStepEvent, Recipe, RecipeFile
from agentcell.server.templates.buildlog import BuildLog
from agentcell.server.templates.recipe import build_steps, layer_dirs_of, template_env


def test_package_names_travel_as_arguments_after_a_double_dash() -> None:
    """No recipe value is pasted into a script; names that look like options are refused."""
    recipe = Recipe(
        apt=["sl"], pip=["numpy>=1.26,<3", "pandas[excel]"], npm=["@scope/pkg@^1.2"], commands=["echo $HOME"]
    )
    steps = build_steps(recipe)
    assert [s.name.split()[0] for s in steps] == ["apt", "pip", "npm", "run"]
    apt, pip, npm, run = (s.argv for s in steps)
    assert apt[:2] == ["/bin/bash", "-c"] and apt[3:] == ["apt", "sl"] and "sl" not in apt[2]
    assert pip[-3:] == ["--", "numpy>=1.26,<3", "pandas[excel]"]
    assert npm[-2:] == ["--", "@scope/pkg@^1.2"]
    assert run == ["/bin/bash", "-c", "echo $HOME"]
    for bad in (
        {"pip": ["-e ."]},
        {"pip": ["x @ https://evil/x.whl"]},
        {"npm": ["--prefix=/"]},
        {"apt": ["../x"]},
        {"env": {"A": "x\x00y"}},  # a NUL cannot reach a process's environment or arguments
        {"commands": ["echo a\x00b"]},
    ):
        with pytest.raises(ValidationError):
            Recipe.model_validate(bad)


def test_local_packages_must_come_with_the_recipe_and_files_stay_in_their_places() -> None:
    with pytest.raises(ValidationError, match="not among the recipe's files"):
        Recipe(pip=["./a-1-py3-none-any.whl"])
    ok = Recipe(pip=["./a-1-py3-none-any.whl"], files=[RecipeFile(path="a-1-py3-none-any.whl", content="x")])
    assert "--find-links" in build_steps(ok)[0].argv
    assert RecipeFile(path="w/a.whl", content="").build_path() == "/home/user/build/w/a.whl"
    assert RecipeFile(path="/opt/template/etc/x", content="").build_path() == "/opt/template/etc/x"
    for path in ("/etc/x", "a/../b", "./a", "/opt/template", "a/", "/opt/templatex/y"):
        with pytest.raises(ValidationError):
            RecipeFile(path=path, content="")


def test_instances_get_only_the_layer_dirs_that_exist_and_the_recipe_env_wins(tmp_path: Path) -> None:
    (tmp_path / "python" / "bin").mkdir(parents=True)
    (tmp_path / "node").mkdir()
    os.symlink("/usr", tmp_path / "node" / "lib")  # a symlink out of the layer is not followed
    (tmp_path / "bin").symlink_to("/usr/bin")
    dirs = layer_dirs_of(tmp_path)
    assert dirs == {"python", "python/bin"}
    env = template_env(Recipe(commands=["true"], env={"PYTHONPATH": "/mine"}), dirs)
    assert env["PATH"].startswith("/opt/template/python/bin:/home/user/.local/bin:")
    assert env["PYTHONPATH"] == "/mine" and "NODE_PATH" not in env and "LD_LIBRARY_PATH" not in env


async def test_the_build_log_is_bounded_and_a_late_follower_is_told_what_it_missed() -> None:
    log = BuildLog(limit_bytes=1000)
    await log.append(BuildStepEvent(index=1, total=1, name="run"))
    for _ in range(50):
        await log.append(BuildLogEvent(stream="stdout", data="x" * 100))
    await log.append(BuildEndEvent(state="ready"))
    seen = [event async for event in log.follow()]
    assert isinstance(seen[0], BuildLogEvent) and "4000 bytes of earlier output dropped" in seen[0].data
    assert sum(len(e.data) for e in seen[1:] if isinstance(e, BuildLogEvent)) <= 1000
    assert isinstance(seen[-1], BuildEndEvent)


async def test_a_live_follower_sees_every_event_in_order() -> None:
    log = BuildLog()
    follower = asyncio.ensure_future(_collect(log))
    for i in range(5):
        await log.append(BuildLogEvent(stream="stdout", data=str(i)))
        await asyncio.sleep(0)
    await log.append(BuildEndEvent(state="failed", error="boom"))
    events = await follower
    assert "".join(e.data for e in events if isinstance(e, BuildLogEvent)) == "01234"
    assert events[-1] == BuildEndEvent(state="failed", error="boom")


async def _collect(log: BuildLog) -> list[BuildLogEvent | BuildStepEvent | BuildEndEvent]:
    return [event async for event in log.follow()]
