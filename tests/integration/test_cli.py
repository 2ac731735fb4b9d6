"""The `agentcell` command as a subprocess against a real server (`server_url`, from conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

AGENTCELL = str(Path(sys.executable).parent / "agentcell")
RUN = f"run={uuid.uuid4().hex[:12]}"


def agentcell(server_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AGENTCELL, "--url", server_url, *args], input=stdin, text=True, capture_output=True, timeout=90,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip


def ok(server_url: str, *args: str) -> str:
    done = agentcell(server_url, *args)
    assert done.returncode == 0, f"agentcell {' '.join(args)}: {done.stderr}"
    return done.stdout


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


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
    """Unknown flags, two local paths and bad option values are usage errors: exit 2, the bad
    value's option named (the server's own refusals are exit 1)."""
    assert agentcell(server_url, "sandbox", "create", "--no-such-flag").returncode == 2
    assert agentcell(server_url, "cp", "local-a", "local-b").returncode == 2
    for args, option in [
        (["sandbox", "create", "--timeout", "-5"], "'--timeout'"),
        (["sandbox", "create", "--memory-mb", "0"], "'--memory-mb'"),
        (["sandbox", "timeout", "sbx_nope", "-5"], "'DURATION'"),
        (["exec", "sbx_nope", "--timeout", "-5", "--", "true"], "'--timeout'"),
        (["tenant", "create", "acme", "--max-storage", "-1G"], "'--max-storage'"),
    ]:
        done = agentcell(server_url, *args)
        assert done.returncode == 2 and f"Invalid value for {option}" in done.stderr, (args, done.stderr)
    below = agentcell(server_url, "sandbox", "create", "--memory-mb", "1")  # the CLI knows the minimum
    assert below.returncode == 2 and "'--memory-mb': 1 is not in the range x>=32" in below.stderr, (
        below.stderr
    )
    refused = agentcell(server_url, "sandbox", "create", "--memory-mb", "300000")  # above the server's max
    assert refused.returncode == 1 and refused.stderr.startswith("error: memory_mb"), refused.stderr


def test_exec_json_is_one_document_and_keeps_the_exit_code(server_url: str, sandbox_id: str) -> None:
    """exec --json streams nothing and prints the whole result at the end; the exit code is still
    the command's."""
    done = agentcell(server_url, "exec", sandbox_id, "--json", "--", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.stderr) == (3, "")
    result = json.loads(done.stdout)
    assert (result["stdout"], result["stderr"], result["exit_code"]) == ("out\n", "err\n", 3)
    assert (result["timed_out"], result["error"], result["signal"]) == (False, None, None)
    slow = agentcell(server_url, "exec", sandbox_id, "--json", "--timeout", "1", "--", "sleep", "30")
    timed_out = json.loads(slow.stdout)
    outcome = (slow.returncode, timed_out["exit_code"], timed_out["signal"], timed_out["timed_out"])
    assert outcome == (137, 137, 9, True)  # SIGKILLed at its --timeout, as a shell reports it


def test_run_code_json(server_url: str, sandbox_id: str) -> None:
    """run-code --json prints the Execution (value, logs, error) and exits 0, or 1 on an error."""
    done = agentcell(server_url, "run-code", sandbox_id, "--json", "print('a'); 6 * 7")
    assert done.returncode == 0, done.stderr
    execution = json.loads(done.stdout)
    assert (execution["text"], execution["logs"]["stdout"], execution["status"]) == ("42", ["a\n"], "ok")
    failed = agentcell(server_url, "run-code", sandbox_id, "--json", "1/0")
    assert failed.returncode == 1 and json.loads(failed.stdout)["error"]["name"] == "ZeroDivisionError"


def test_sandbox_json_and_durations(server_url: str) -> None:
    """--timeout takes durations; pause, resume, timeout and get print the sandbox with --json."""
    created = json.loads(ok(server_url, "sandbox", "create", "--timeout", "2m", "--metadata", RUN, "--json"))
    sandbox_id = created["id"]
    try:
        assert 115 <= seconds_between(created["created_at"], created["expires_at"]) <= 120
        paused = json.loads(ok(server_url, "sandbox", "pause", sandbox_id, "--json"))
        assert (paused["id"], paused["state"]) == (sandbox_id, "paused")
        resumed = json.loads(ok(server_url, "sandbox", "resume", sandbox_id, "--timeout", "1h", "--json"))
        assert resumed["state"] == "running"
        assert seconds_between(created["created_at"], resumed["expires_at"]) > 3500
        renewed = json.loads(ok(server_url, "sandbox", "timeout", sandbox_id, "15m", "--json"))
        assert renewed["expires_at"] < resumed["expires_at"]
        assert json.loads(ok(server_url, "sandbox", "get", sandbox_id, "--json"))["state"] == "running"
    finally:
        agentcell(server_url, "sandbox", "kill", sandbox_id)


def test_tenant_key_and_usage_json(server_url: str) -> None:
    """tenant and key commands print JSON with --json (key create: the key itself with its id);
    usage --json is --format json."""
    tenant = "cli-" + uuid.uuid4().hex[:8]
    created = json.loads(ok(server_url, "tenant", "create", tenant, "--max-sessions", "5", "--json"))
    try:
        assert (created["name"], created["quotas"]["max_sessions"]) == (tenant, 5)
        assert tenant in {t["name"] for t in json.loads(ok(server_url, "tenant", "ls", "--json"))}
        key = json.loads(ok(server_url, "key", "create", tenant, "--scope", "invoke", "--json"))
        assert key["key"] and (key["tenant"], key["scopes"]) == (tenant, ["invoke"])
        listed = json.loads(ok(server_url, "key", "ls", tenant, "--json"))
        assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
        revoked = json.loads(ok(server_url, "key", "revoke", key["id"], "--json"))
        assert revoked["id"] == key["id"] and revoked["revoked_at"]
    finally:
        agentcell(server_url, "tenant", "rm", tenant)
    report = json.loads(ok(server_url, "usage", "--by", "tenant", "--json"))
    assert (
        report.keys() == json.loads(ok(server_url, "usage", "--format", "json")).keys() >= {"lines", "total"}
    )


def test_template_build_json(server_url: str, tmp_path: Path) -> None:
    """template build --json keeps stdout for the template's record (the log goes to stderr);
    get and ls take --json."""
    recipe = tmp_path / "cli-json" / "recipe.json"
    recipe.parent.mkdir()
    recipe.write_text(json.dumps({"commands": ["echo built-here; echo hi > /opt/template/x"]}))
    name = "cli-json-" + uuid.uuid4().hex[:6]
    built = agentcell(server_url, "template", "build", str(recipe), "--name", name, "--json")
    try:
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["name"] == name and "built-here" in built.stderr
        assert json.loads(ok(server_url, "template", "get", name, "--json"))["name"] == name
        assert name in {t["name"] for t in json.loads(ok(server_url, "template", "ls", "--json"))}
    finally:
        agentcell(server_url, "template", "rm", name)


def test_unreachable_server_is_error_exit_1() -> None:
    """No server: `error: cannot connect … <url>` and exit 1."""
    done = agentcell("http://127.0.0.1:1", "sandbox", "ls")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to the agentcell server at http://127.0.0.1:1")
