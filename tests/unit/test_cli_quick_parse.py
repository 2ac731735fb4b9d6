"""Which command lines `agentcell.cli.quick` answers itself, and the request it makes of them; every
other line is the full command's (click's parsing, the SDK's checks and words)."""

from __future__ import annotations

import pytest

from agentcell.cli.quick import ExecLine, _parse_create, _parse_exec
from agentcell.client.quick import NotQuick, Server, create_sandbox

EMPTY: dict[str, dict[str, str]] = {"env": {}, "metadata": {}}


@pytest.mark.parametrize(
    ("argv", "connection", "body"),
    [
        (["sandbox", "create"], {}, EMPTY),
        (
            ["--url", "http://h:1", "--api-key=k", "sandbox", "create", "--template=py"],
            {"api_url": "http://h:1", "api_key": "k"},
            {**EMPTY, "template": "py"},
        ),
        (
            ["sandbox", "create", "--env", "A=1", "--env=B=x=y", "--metadata", "who=me", "--env", "C="],
            {},
            {"env": {"A": "1", "B": "x=y", "C": ""}, "metadata": {"who": "me"}},
        ),
    ],
)
def test_plain_creates_are_answered_here(
    argv: list[str], connection: dict[str, str], body: dict[str, object]
) -> None:
    assert _parse_create(argv) == (connection, body)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--version"],
        ["sandbox", "ls"],
        ["sandbox", "create", "--json"],
        ["sandbox", "create", "--help"],
        ["sandbox", "create", "--cpu", "2"],
        ["sandbox", "create", "--timeout", "10m"],
        ["sandbox", "create", "--template"],  # click's "requires an argument"
        ["sandbox", "create", "--template", "a", "--template", "b"],
        ["sandbox", "create", "--env", "=x"],  # click's "expected KEY=VALUE"
        ["sandbox", "create", "--env", "novalue"],
        ["sandbox", "create", "--env", "--json"],
        ["sandbox", "create", "extra"],
        ["--url", "--api-key", "k", "sandbox", "create"],
        ["--url"],
        ["exec", "sbx_1", "--", "sandbox", "create"],
        ["--url=http://h:1", "sandbox", "--", "create"],
    ],
)
def test_every_other_create_goes_to_the_full_command(argv: list[str]) -> None:
    assert _parse_create(argv) is None


@pytest.mark.parametrize(
    ("argv", "connection", "line"),
    [
        (["exec", "sbx_1", "--", "ls -l | wc"], {}, ExecLine("sbx_1", "ls -l | wc")),
        (["exec", "sbx_1", "ls", "--", "-l"], {}, ExecLine("sbx_1", ["ls", "-l"])),
        (["exec", "sbx_1", "echo", "-", "x"], {}, ExecLine("sbx_1", ["echo", "-", "x"])),
        (
            [
                "--api-key=k",
                "--url",
                "http://h:1",
                "exec",
                "--env",
                "A=1",
                "sbx_1",
                "--env=B=x=y",
                "--cwd=/tmp",
                "--timeout",
                "2.5",
                "-n",
                "--",
                "env",
                "--env=C",
                "--",
                "-n",
            ],
            {"api_url": "http://h:1", "api_key": "k"},
            ExecLine("sbx_1", ["env", "--env=C", "--", "-n"], {"A": "1", "B": "x=y"}, "/tmp", 2.5, True),
        ),
        (
            ["exec", "--no-stdin", "sbx_1", "true", "--timeout=0"],
            {},
            ExecLine("sbx_1", "true", timeout_s=0.0, no_stdin=True),
        ),
        (["exec", "sbx_1", "--env", "A=", "--env", "A=2", "true"], {}, ExecLine("sbx_1", "true", {"A": "2"})),
        (
            ["exec", "sbx_1", "echo", "-n", "hi"],  # before `--`, -n is exec's own, as click takes it
            {},
            ExecLine("sbx_1", ["echo", "hi"], no_stdin=True),
        ),
    ],
)
def test_plain_execs_are_answered_here(argv: list[str], connection: dict[str, str], line: ExecLine) -> None:
    assert _parse_exec(argv) == (connection, line)


@pytest.mark.parametrize(
    "argv",
    [
        ["exec"],
        ["exec", "sbx_1"],  # click's "Missing argument"
        ["exec", "sbx_1", "--"],
        ["exec", "--json", "sbx_1", "true"],
        ["exec", "sbx_1", "true", "--json"],
        ["exec", "-h"],
        ["exec", "sbx_1", "--help"],
        ["exec", "sbx_1", "ls", "-l"],  # click's "No such option: -l"
        ["exec", "sbx_1", "-nx", "true"],
        ["exec", "sbx_1", "--no-stdin=1", "true"],
        ["exec", "sbx_1", "--cwd", "/a", "--cwd", "/b", "true"],
        ["exec", "sbx_1", "--timeout", "1", "--timeout=2", "true"],
        ["exec", "sbx_1", "--timeout", "1e3", "true"],
        ["exec", "sbx_1", "--timeout", "inf", "true"],
        ["exec", "sbx_1", "--timeout", "-1", "true"],
        ["exec", "sbx_1", "--timeout", "", "true"],
        ["exec", "sbx_1", "--timeout", "\u0663", "true"],  # a digit to float(), not to us
        ["exec", "sbx_1", "--env", "novalue", "true"],
        ["exec", "sbx_1", "--env", "=x", "true"],
        ["exec", "sbx_1", "--cwd", "-x", "true"],  # click takes "-x" as the value: left to it
        ["exec", "sbx_1", "true", "--cwd"],
        ["exec", "-1", "true"],
        ["--url", "exec", "sbx_1", "true"],
        ["--token", "t", "exec", "sbx_1", "true"],
        ["sandbox", "exec", "sbx_1", "true"],
    ],
)
def test_every_other_exec_goes_to_the_full_command(argv: list[str]) -> None:
    assert _parse_exec(argv) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:1",  # TLS: httpx's CA handling
        "http://user:secret@127.0.0.1:1",  # httpx sends these as Basic auth
        "http://127.0.0.1:1/?x=1",
        "ftp://127.0.0.1:1",  # the SDK's refusal, in its words
    ],
)
def test_servers_the_sdk_reaches_differently_are_left_to_it(url: str) -> None:
    """Decided before any connection is tried (port 1: nothing listens there), for a create and
    for an exec (whose piped stdin is then not read either)."""
    with pytest.raises(NotQuick):
        create_sandbox({}, url, "key")
    with pytest.raises(NotQuick):
        Server.resolve(url, "key")


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_leaves_the_call_to_the_sdk(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx would send through it."""
    monkeypatch.setenv(name, "http://127.0.0.1:9")
    with pytest.raises(NotQuick):
        Server.resolve("http://127.0.0.1:1", "key")
