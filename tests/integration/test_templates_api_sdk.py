"""Templates through the SDK and the CLI against a real server: a recipe file with local `src`
files built by `agentcell template build`, then used by `AsyncSandbox.create(template=...)`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agentcell.client import (
    AsyncAgentcell,
    AsyncSandbox,
    ConflictError,
    NotFoundError,
    TemplateBuildError,
    load_recipe,
)
from tests.packages import tiny_npm_package, tiny_wheel

AGENTCELL = str(Path(sys.executable).parent / "agentcell")


def agentcell(server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCELL, "--url", server_url, *args],
        text=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def recipe_dir(root: Path, value: int) -> Path:
    """A recipe directory as an operator keeps one: recipe.json plus the local packages it names."""
    root.mkdir()
    wheel_name, wheel = tiny_wheel(value=value)
    npm_name, npm = tiny_npm_package(value=value)
    (root / "wheels").mkdir()
    (root / "wheels" / wheel_name).write_bytes(wheel)
    (root / npm_name).write_bytes(npm)
    recipe = {
        "files": [{"src": f"wheels/{wheel_name}", "path": wheel_name}, {"src": npm_name}],
        "pip": ["acelltiny"],
        "pip_no_index": True,
        "npm": [f"./{npm_name}"],
        "commands": ["echo 'print(\"hello from the recipe\")' > /opt/template/hello.py"],
        "env": {"TEMPLATE_FLAVOUR": "tiny"},
    }
    (root / "recipe.json").write_text(json.dumps(recipe))
    return root / "recipe.json"


def test_cli_builds_a_recipe_file_streaming_its_log_and_lists_it(server_url: str, tmp_path: Path) -> None:
    """`template build` prints step lines and the build's output; the name defaults to the
    recipe's directory; `template ls` shows it; `template rm` deletes it."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    built = agentcell(server_url, "template", "build", str(recipe_dir(tmp_path / name, value=5)))
    shown = f"stdout:\n{built.stdout}\nstderr:\n{built.stderr}"
    assert built.returncode == 0, shown
    assert "[1/4] files (2)" in built.stderr and "[3/4] npm install" in built.stderr, shown
    assert "Successfully installed acelltiny-0.1" in built.stdout, shown
    assert f"template {name} ready in" in built.stderr, shown
    listed = agentcell(server_url, "template", "ls")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].startswith("base"), listed
    assert any(line.startswith(name) for line in listed.stdout.splitlines()), listed.stdout
    record = json.loads(agentcell(server_url, "template", "get", name).stdout)
    assert record["env"]["TEMPLATE_FLAVOUR"] == "tiny" and record["recipe"]["files"][0]["content"] == ""
    again = agentcell(server_url, "template", "build", "--name", name, str(tmp_path / name / "recipe.json"))
    assert again.returncode == 1 and "delete it first" in again.stderr, again
    assert agentcell(server_url, "template", "rm", name).returncode == 0
    gone = agentcell(server_url, "template", "rm", name)
    assert gone.returncode == 1 and "not found" in gone.stderr, gone


def test_cli_reports_a_failed_build(server_url: str, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "recipe.json").write_text(json.dumps({"commands": ["echo nope; false"]}))
    built = agentcell(server_url, "template", "build", str(tmp_path / "bad" / "recipe.json"))
    assert built.returncode == 1
    assert "nope" in built.stdout and "failed to build" in built.stderr and "exited with 1" in built.stderr
    assert agentcell(server_url, "template", "get", "bad").returncode == 1


@pytest.mark.timeout(120)
async def test_sdk_builds_and_sandboxes_start_from_the_template(server_url: str, tmp_path: Path) -> None:
    """client.templates.build returns the template; AsyncSandbox.create(template=...) sees its
    packages and env; a failing recipe raises TemplateBuildError with the log."""
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    events: list[str] = []
    async with AsyncAgentcell(api_url=server_url) as client:
        info = await client.templates.build(
            name, load_recipe(recipe_dir(tmp_path / name, value=9)), on_event=lambda e: events.append(e.type)
        )
        assert info.name == name and info.size_bytes > 0 and events[-1] == "end" and "step" in events
        assert name in [t.name for t in await client.templates.list()]
        async with AsyncSandbox.create(template=name, api_url=server_url) as sbx:
            result = await sbx.commands.run(
                "python3 -c 'import acelltiny; print(acelltiny.VALUE)'; python3 /opt/template/hello.py;"
                " node -p 'require(\"acell-tiny\")'; echo $TEMPLATE_FLAVOUR"
            )
            assert result.stdout.split("\n") == ["9", "hello from the recipe", "9", "tiny", ""], result
            assert (await client.templates.get(name)).instances == 1
            with pytest.raises(ConflictError):
                await client.templates.delete(name)
        assert await client.templates.delete(name) is True
        with pytest.raises(NotFoundError, match=name):
            await AsyncSandbox.create(template=name, api_url=server_url)
        with pytest.raises(TemplateBuildError, match="exited with 4") as failed:
            await client.templates.build(f"{name}-bad", {"commands": ["echo the log; exit 4"]})
        assert "the log" in failed.value.log
