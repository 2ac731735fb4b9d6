"""The `agentcell` command as a subprocess against a real server (`server_url`, from conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

AGENTCELL = str(Path(sys.executable).parent / "agentcell")
RUN = f"run={uuid.uuid4().hex[:12]}"


def agentcell(server_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCELL, "--url", server_url, *args], input=stdin, text=True, capture_output=True, timeout=90,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
def sandbox_id(server_url: str) -> Iterator[str]:
    created = agentcell(server_url, "sandbox", "create", "--metadata", RUN, "--env", "GREETING=hi")
    assert created.returncode == 0, created.stderr
    yield created.stdout.strip()
    agentcell(server_url, "sandbox", "kill", created.stdout.strip())


def test_create_prints_an_id(sandbox_id: str) -> None:
    """`sandbox create` prints just the new id."""
    assert sandbox_id.startswith("sbx_") and sandbox_id.isprintable() and " " not in sandbox_id


def test_exec_prints_output_and_keeps_streams_apart(server_url: str, sandbox_id: str) -> None:
    """stdout and stderr of the command land on ours, separately."""
    done = agentcell(server_url, "exec", sandbox_id, "--", "sh", "-c", "echo $((6*7)); echo $GREETING >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, "42\n", "hi\n")


def test_exec_propagates_the_exit_code(server_url: str, sandbox_id: str) -> None:
    """`exec` exits with the command's exit code."""
    assert agentcell(server_url, "exec", sandbox_id, "--", "sh", "-c", "exit 3").returncode == 3


def test_exec_options_and_piped_stdin(server_url: str, sandbox_id: str) -> None:
    """--env/--cwd/--timeout apply; piped stdin is sent; one argument is a shell line."""
    done = agentcell(
        server_url, "exec", sandbox_id, "--env", "A=1", "--cwd", "/tmp", "--", "sh", "-c", "echo $A; pwd"
    )
    assert done.stdout == "1\n/tmp\n"
    assert agentcell(server_url, "exec", sandbox_id, "--", "cat", stdin="from stdin").stdout == "from stdin"
    assert agentcell(server_url, "exec", sandbox_id, "--", "echo $((1+1)) | cat").stdout == "2\n"
    timed_out = agentcell(server_url, "exec", sandbox_id, "--timeout", "1", "--", "sleep", "30")
    assert timed_out.returncode != 0 and "timed out" in timed_out.stderr


def test_exec_streams_live(server_url: str, sandbox_id: str) -> None:
    """The first line reaches our stdout while the command is still sleeping."""
    argv = [
        AGENTCELL,
        "--url",
        server_url,
        "exec",
        sandbox_id,
        "--",
        "sh",
        "-c",
        "echo first; sleep 3; echo second",
    ]
    started = time.monotonic()
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        first_after_s = time.monotonic() - started
        assert proc.stdout.read() == "second\n"
    assert proc.returncode == 0 and first_after_s < 2.5


def test_cp_file_both_ways(server_url: str, sandbox_id: str, tmp_path: Path) -> None:
    """A file goes up and comes back identical; an existing local directory receives it by name."""
    local = tmp_path / "data.bin"
    local.write_bytes(bytes(range(256)) * 4096)
    up = agentcell(server_url, "cp", str(local), f"{sandbox_id}:/home/user/in/data.bin", "--json")
    assert up.returncode == 0, up.stderr
    report = json.loads(up.stdout)
    assert report["bytes"] == local.stat().st_size and report["type"] == "file"
    assert (
        agentcell(server_url, "exec", sandbox_id, "--", "wc", "-c", "in/data.bin").stdout.split()[0]
        == "1048576"
    )
    down = agentcell(server_url, "cp", f"{sandbox_id}:/home/user/in/data.bin", str(tmp_path / "back.bin"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    (tmp_path / "into").mkdir()
    assert agentcell(server_url, "cp", f"{sandbox_id}:in/data.bin", str(tmp_path / "into")).returncode == 0
    assert (tmp_path / "into" / "data.bin").read_bytes() == local.read_bytes()


def test_cp_directory_both_ways(server_url: str, sandbox_id: str, tmp_path: Path) -> None:
    """A directory is uploaded recursively and downloaded through the archive, unchanged."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top")
    (tree / "a" / "b" / "deep.txt").write_text("deep")
    up = agentcell(server_url, "cp", str(tree), f"{sandbox_id}:/home/user/copy")
    assert up.returncode == 0, up.stderr
    listing = agentcell(server_url, "exec", sandbox_id, "--", "find copy -type f | sort").stdout
    assert listing == "copy/a/b/deep.txt\ncopy/top.txt\n"
    down = agentcell(server_url, "cp", f"{sandbox_id}:/home/user/copy", str(tmp_path / "back"), "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["type"] == "dir"
    assert (tmp_path / "back" / "a" / "b" / "deep.txt").read_text() == "deep"
    assert (tmp_path / "back" / "top.txt").read_text() == "top"


def test_cp_of_a_tree_never_follows_a_link_out_of_it(
    server_url: str, sandbox_id: str, tmp_path: Path
) -> None:
    """A cloned tree's symlink to a host secret does not carry the secret into the sandbox, be
    the copy a new name or into an existing directory; links inside the tree still work."""
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "readme.txt").write_text("hello")
    (tree / "leak").symlink_to(secret)
    (tree / "alias").symlink_to("readme.txt")
    for dst in ("/home/user/repo-copy", "/home/user/"):
        up = agentcell(server_url, "cp", str(tree), f"{sandbox_id}:{dst}")
        assert up.returncode == 0 and "leak" in up.stderr, up.stderr
    found = agentcell(server_url, "exec", sandbox_id, "--", "grep -rl 'host secret' . || echo none").stdout
    assert found == "none\n"
    copied = agentcell(server_url, "exec", sandbox_id, "--", "cat repo-copy/alias repo/alias").stdout
    assert copied == "hellohello"


def test_ls_get_timeout_and_kill(server_url: str, sandbox_id: str) -> None:
    """ls (table and JSON), get, timeout and kill act on the same sandbox."""
    table = agentcell(server_url, "sandbox", "ls", "--metadata", RUN)
    assert table.returncode == 0 and sandbox_id in table.stdout and table.stdout.startswith("ID")
    listed = json.loads(agentcell(server_url, "sandbox", "ls", "--json").stdout)
    assert sandbox_id in {s["id"] for s in listed}
    got = json.loads(agentcell(server_url, "sandbox", "get", sandbox_id).stdout)
    assert got["id"] == sandbox_id and got["state"] == "running"
    renewed = agentcell(server_url, "sandbox", "timeout", sandbox_id, "900", "--json")
    assert json.loads(renewed.stdout)["expires_at"] > got["expires_at"]
    assert agentcell(server_url, "sandbox", "kill", sandbox_id).returncode == 0
    after = agentcell(server_url, "sandbox", "ls", "--metadata", RUN, "--state", "running", "--json")
    assert sandbox_id not in {s["id"] for s in json.loads(after.stdout)}


def test_unknown_sandbox_is_error_exit_1(server_url: str) -> None:
    """An unknown sandbox id is `error: …` on stderr and exit 1."""
    for args in (
        ["sandbox", "get", "sbx_nope"],
        ["exec", "sbx_nope", "--", "true"],
        ["sandbox", "kill", "sbx_nope"],
    ):
        done = agentcell(server_url, *args)
        assert done.returncode == 1 and done.stderr.startswith("error: "), (args, done.stderr)


def test_usage_errors_exit_2(server_url: str) -> None:
    """Unknown flags and two local paths are usage errors: exit 2."""
    assert agentcell(server_url, "sandbox", "create", "--no-such-flag").returncode == 2
    assert agentcell(server_url, "cp", "local-a", "local-b").returncode == 2


def test_unreachable_server_is_error_exit_1() -> None:
    """No server: `error: cannot connect … <url>` and exit 1."""
    done = agentcell("http://127.0.0.1:1", "sandbox", "ls")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to the agentcell server at http://127.0.0.1:1")
