"""The `agentcell` command as a new user meets it (README quickstart, docs/sdk.md): `cp` to a
directory written with a trailing slash, to a missing directory, and a server that needs a key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENTCELL = str(Path(sys.executable).parent / "agentcell")


def agentcell(
    server_url: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCELL, "--url", server_url, *args], text=True, capture_output=True, timeout=90,
        stdin=subprocess.DEVNULL, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.fixture
def sandbox_id(server_url: str) -> Iterator[str]:
    created = agentcell(server_url, "sandbox", "create", "--metadata", "suite=test_hunt_cli_docs")
    assert created.returncode == 0, created.stderr
    sandbox = created.stdout.strip()
    put = subprocess.run(
        [AGENTCELL, "--url", server_url, "exec", sandbox, "--", "sh", "-c", "echo hello > data.csv"],
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    yield sandbox
    agentcell(server_url, "sandbox", "kill", sandbox)


def test_cp_to_a_new_directory_with_a_slash_lands_inside_it(
    server_url: str, sandbox_id: str, tmp_path: Path
) -> None:
    """`cp ID:data.csv ./newdir/` makes newdir and puts data.csv in it, as the upload direction
    does for `cp ./data.csv ID:newdir/` (it used to write a file named `newdir`)."""
    done = agentcell(server_url, "cp", f"{sandbox_id}:data.csv", "./newdir/", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "newdir" / "data.csv").read_text() == "hello\n"


def test_cp_into_a_missing_directory_names_it(server_url: str, sandbox_id: str, tmp_path: Path) -> None:
    """Exit 1 with an error naming the missing directory, never a temporary file's name."""
    done = agentcell(server_url, "cp", f"{sandbox_id}:data.csv", "./nodir/copy.csv", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: nodir: no such directory"), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_missing_key_says_how_to_give_one(server_url: str, tmp_path: Path) -> None:
    """No AGENTCELL_API_KEY and no readable admin.key: the error names the variable, --api-key and
    where the admin key was looked for."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTCELL_API_KEY"}
    env["AGENTCELL_STATE_DIR"] = str(tmp_path)
    done = agentcell(server_url, "sandbox", "ls", env=env)
    assert done.returncode == 1
    assert "AGENTCELL_API_KEY" in done.stderr and "--api-key" in done.stderr, done.stderr
    assert str(tmp_path / "admin.key") in done.stderr, done.stderr


def test_a_failed_template_build_says_so_once(server_url: str, tmp_path: Path) -> None:
    """A step that fails silently: one `error:` line naming the step and its exit code, not that
    line twice (once as `build failed:`) with an empty `: ` tail."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"commands": ["exit 3"]}')
    done = agentcell(server_url, "template", "build", str(recipe), "--name", "hunt-cli-fails")
    assert done.returncode == 1
    failures = [line for line in done.stderr.splitlines() if "exited with 3" in line]
    assert failures == ["error: template 'hunt-cli-fails' failed to build: step 'run exit 3' exited with 3 "
                        "and printed nothing"], done.stderr  # fmt: skip
