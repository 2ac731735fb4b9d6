"""A command that cannot start says why, before it is answered, on real sandboxes: a working
directory the sandbox's user cannot enter (missing, a file, no permission) is a 400
invalid_argument naming the directory and the sandbox, from the REST API, the SDK and the E2B SDK,
for foreground, background and terminal commands alike, and the command never runs; an empty
argv[0] is a 400 at validation. A program that is not there keeps a shell's answer — exit 127 with
"<name>: command not found" on stderr (126 and "bad interpreter" for a script whose #! interpreter
is missing) — and is looked up on the command's own PATH."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import InvalidArgumentException, Sandbox

from agentcell.client import AsyncSandbox
from agentcell.client.errors import InvalidArgumentError
from tests.conftest import ServerProcess
from tests.integration.conftest import e2b_variables


def events_of(reply: httpx.Response) -> list[dict[str, object]]:
    assert reply.status_code == 200, reply.text
    return [httpx.Response(200, content=line).json() for line in reply.text.splitlines()]


def stderr_of(events: list[dict[str, object]]) -> str:
    return "".join(str(e["data"]) for e in events if e["type"] == "stderr")


@pytest.mark.parametrize(
    ("cwd", "why"),
    [
        ("/nope", "cwd /nope does not exist"),
        ("/etc/hostname", "cwd /etc/hostname is not a directory"),
        ("/home/user/locked", "cwd /home/user/locked may not be entered by the sandbox's user (uid 1000)"),
        ("missing/below/home", "cwd /home/user/missing/below/home does not exist"),
    ],
)
def test_a_bad_cwd_is_a_400_naming_it_and_the_sandbox(
    api: httpx.Client, rest_sandbox: str, cwd: str, why: str
) -> None:
    base = f"/v1/sandboxes/{rest_sandbox}"
    prepared = events_of(api.post(f"{base}/commands", json={"cmd": "mkdir -m 000 -p locked"}))
    assert prepared[-1]["exit_code"] == 0
    for body in (
        {"argv": ["touch", "/tmp/ran"], "cwd": cwd},
        {"argv": ["touch", "/tmp/ran"], "cwd": cwd, "background": True},
        {"argv": ["touch", "/tmp/ran"], "cwd": cwd, "background": True, "pty": {"rows": 24, "cols": 80}},
    ):
        refused = api.post(f"{base}/commands", json=body)
        assert refused.status_code == 400, refused.text
        error = refused.json()
        assert error["code"] == "invalid_argument"
        assert error["message"].startswith(f"{why} in sandbox {rest_sandbox}"), error["message"]
    assert api.get(f"{base}/processes").json()["processes"] == []
    assert api.get(f"{base}/files/stat", params={"path": "/tmp/ran"}).status_code == 404


def test_an_empty_argv0_is_refused_at_validation(api: httpx.Client, rest_sandbox: str) -> None:
    refused = api.post(f"/v1/sandboxes/{rest_sandbox}/commands", json={"argv": ["", "x"]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "invalid_argument"
    assert "argv[0] must name the program to run" in refused.json()["message"]


def test_a_missing_program_is_127_with_command_not_found(api: httpx.Client, rest_sandbox: str) -> None:
    base = f"/v1/sandboxes/{rest_sandbox}/commands"
    events = events_of(api.post(base, json={"argv": ["no-such-program", "--help"]}))
    assert [e["type"] for e in events] == ["start", "stderr", "end"]
    assert stderr_of(events) == "no-such-program: command not found\n"
    assert events[-1]["exit_code"] == 127 and events[-1]["error"] is None
    events = events_of(api.post(base, json={"argv": ["/usr/bin/no-such-program"]}))
    assert stderr_of(events) == "/usr/bin/no-such-program: No such file or directory\n"
    assert events[-1]["exit_code"] == 127
    events = events_of(api.post(base, json={"argv": ["/etc/hostname"]}))
    assert stderr_of(events) == "/etc/hostname: Permission denied\n"
    assert events[-1]["exit_code"] == 126
    script = "mkdir -p .local/bin && printf '#!/no/such/interpreter\\n' > .local/bin/odd"
    events_of(api.post(base, json={"cmd": f"{script} && chmod +x .local/bin/odd"}))
    for argv0 in ("odd", "/home/user/.local/bin/odd"):  # there, but its #! interpreter is not
        events = events_of(api.post(base, json={"argv": [argv0]}))
        assert stderr_of(events) == (
            "/home/user/.local/bin/odd: bad interpreter (its #! line) or loader: No such file or directory\n"
        )
        assert events[-1]["exit_code"] == 126
    events = events_of(api.post(base, json={"cmd": "no-such-program"}))  # bash says it its own way
    assert "no-such-program: command not found" in stderr_of(events) and events[-1]["exit_code"] == 127


def test_a_program_is_looked_up_on_the_commands_path(api: httpx.Client, rest_sandbox: str) -> None:
    """As a shell would: ~/.local/bin is on the sandbox's PATH, and a PATH in the request's env
    replaces it."""
    base = f"/v1/sandboxes/{rest_sandbox}/commands"
    script = "mkdir -p .local/bin tools && printf '#!/bin/sh\\necho hello from $0\\n' > tools/greet"
    events_of(api.post(base, json={"cmd": f"{script} && chmod +x tools/greet && cp tools/greet .local/bin/"}))
    events = events_of(api.post(base, json={"argv": ["greet"]}))
    assert events[-1]["exit_code"] == 0, stderr_of(events)
    assert events[1]["data"] == "hello from /home/user/.local/bin/greet\n"
    events = events_of(api.post(base, json={"argv": ["greet"], "env": {"PATH": "/home/user/tools"}}))
    assert events[1]["data"] == "hello from /home/user/tools/greet\n"


async def test_the_sdk_raises_invalid_argument_for_a_bad_cwd(server_url: str) -> None:
    async with AsyncSandbox.create(api_url=server_url) as sbx:
        with pytest.raises(InvalidArgumentError, match=f"cwd /nope does not exist in sandbox {sbx.id}"):
            await sbx.commands.run(["pwd"], cwd="/nope")
        with pytest.raises(InvalidArgumentError, match="cwd /nope does not exist"):
            await sbx.commands.run("pwd", cwd="/nope", background=True)
        with pytest.raises(InvalidArgumentError, match=r"argv\[0\] must name the program"):
            await sbx.commands.run(["", "x"])
        result = await sbx.commands.run(["no-such-program"])
        assert (result.exit_code, result.stderr) == (127, "no-such-program: command not found\n")
        assert (await sbx.commands.run(["pwd"], cwd="/tmp")).stdout == "/tmp\n"


@pytest.fixture
def e2b_sandbox(shared_server: ServerProcess) -> Iterator[Sandbox]:
    with e2b_variables(shared_server.url):
        sandbox = Sandbox.create(timeout=60)
        try:
            yield sandbox
        finally:
            sandbox.kill()


def test_the_e2b_sdk_raises_invalid_argument_for_a_bad_cwd(e2b_sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgumentException, match="cwd /nope does not exist in sandbox"):
        e2b_sandbox.commands.run("pwd", cwd="/nope")
    with pytest.raises(InvalidArgumentException, match="cwd /etc/hostname is not a directory"):
        e2b_sandbox.commands.run("pwd", cwd="/etc/hostname", background=True)
    assert e2b_sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
