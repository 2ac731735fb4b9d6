"""Routing-key extraction: which function, which session, and refusal of malformed keys."""

from __future__ import annotations

import pytest

from agentcell.errors import InvalidArgument
from agentcell.protocol.functions import Affinity
from agentcell.server.gateway.keys import MCP_DIGEST_PREFIX, function_target, mcp_session_key, session_key


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        (b"/fn/chat/ask", None, ("chat", b"/ask", b"/fn/chat")),
        (b"/fn/chat", None, ("chat", b"/", b"/fn/chat")),
        (b"/fn/chat/", None, ("chat", b"/", b"/fn/chat")),
        (b"/ask", b"chat.fn.local", ("chat", b"/ask", b"")),
        (b"/ask", b"chat.fn.local:8700", ("chat", b"/ask", b"")),
        (b"/ask", b"CHAT.FN.LOCAL", ("chat", b"/ask", b"")),
        (b"/fn/other/x", b"chat.fn.local", ("chat", b"/fn/other/x", b"")),  # the host wins
        (b"/fn/other/x", b"fn.local", ("other", b"/x", b"/fn/other")),
    ],
)
def test_function_target_by_path_and_host(
    path: bytes, host: bytes | None, expected: tuple[str, bytes, bytes]
) -> None:
    target = function_target(path, host, b"fn.local")
    assert target is not None
    assert (target.name, target.path, target.mount) == expected


@pytest.mark.parametrize(
    ("path", "host"),
    [
        (b"/v1/sandboxes", None),
        (b"/fn/Bad_Name/x", None),
        (b"/fn//x", None),
        (b"/x", b"chat.other.domain"),
        (b"/x", b"a.b.fn.local"),
        (b"/x", b"fn.local"),
    ],
)
def test_not_a_function_request(path: bytes, host: bytes | None) -> None:
    assert function_target(path, host, b"fn.local") is None


def test_header_key_and_absent_key() -> None:
    affinity = Affinity(kind="header", header="X-Session")
    assert affinity.header == "x-session"
    assert session_key(affinity, b"alice-1", None) == "alice-1"
    assert session_key(affinity, None, None) is None


@pytest.mark.parametrize(
    "bad", [b"", b"a" * 129, b"-starts-with-dash", b"has space", b"semi;colon", b"\xff\xfe", b"../x"]
)
def test_malformed_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(InvalidArgument, match="session key"):
        session_key(Affinity(kind="header"), bad, None)


def test_cookie_key() -> None:
    affinity = Affinity(kind="cookie", cookie="sid")
    assert session_key(affinity, None, b"theme=dark; sid=bob-7; x=1") == "bob-7"
    assert session_key(affinity, None, b"theme=dark") is None
    with pytest.raises(InvalidArgument):
        session_key(affinity, None, b"sid=bad value")


def test_none_affinity_ignores_keys() -> None:
    assert session_key(Affinity(kind="none"), b"alice", b"agentcell_session=x") is None


@pytest.mark.parametrize("bad", [b"", b"has space", b"\xff\xfe", b"tab\tinside"])
def test_malformed_mcp_session_ids_name_the_mcp_header(bad: bytes) -> None:
    with pytest.raises(InvalidArgument, match="mcp-session-id"):
        session_key(Affinity(kind="mcp"), bad, None)


def test_any_mcp_session_id_the_spec_allows_has_a_session_key() -> None:
    mcp = Affinity(kind="mcp")
    assert session_key(mcp, b"abc123", None) == "abc123"  # a plain key routes as itself
    for unusual in (b"c2Vzc2lvbi8xMjM+PzQ1Ng==", b"eyJ." + b"x" * 300, b"../etc", b"-dash"):
        key = session_key(mcp, unusual, None)
        assert key is not None and key.startswith(MCP_DIGEST_PREFIX) and len(key) <= 128
        session_key(Affinity(kind="header"), key.encode(), None)  # a valid session key
    digest = session_key(mcp, b"c2Vzc2lvbi8xMjM+PzQ1Ng==", None)
    assert digest is not None and session_key(mcp, digest.encode(), None) != digest  # no aliasing
    assert mcp_session_key("a/b") == "a/b" and mcp_session_key("a+b") != "a+b"
