"""Which command lines `agentcell.cli.quick` answers itself, and the request it makes of them; every
other line is the full command's (click's parsing, the SDK's checks and words)."""

from __future__ import annotations

import pytest

from agentcell.cli.quick import _parse
from agentcell.client.quick import NotQuick, create_sandbox

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
    assert _parse(argv) == (connection, body)


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
    ],
)
def test_everything_else_goes_to_the_full_command(argv: list[str]) -> None:
    assert _parse(argv) is None


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
    """Decided before any connection is tried (port 1: nothing listens there)."""
    with pytest.raises(NotQuick):
        create_sandbox({}, url, "key")
