"""Files API errors on special files and two-path moves say what is wrong with which path: an
archive of a FIFO is refused rather than answered with an empty tar, listing something that is not
a directory names what it is, and a refused move names both of its paths. A real server, real
sandboxes; the trees are made by commands in them."""

from __future__ import annotations

import json

import httpx
import pytest


@pytest.fixture
def sandbox(api: httpx.Client, rest_sandbox: str) -> str:
    reply = api.post(
        f"/v1/sandboxes/{rest_sandbox}/commands",
        json={"cmd": "cd /tmp && mkfifo fifo && touch file && mkdir ro && touch ro/f && chmod 500 ro"},
    )
    assert json.loads(reply.text.splitlines()[-1])["exit_code"] == 0, reply.text
    return rest_sandbox


def error(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    message: str = reply.json()["message"]
    return message


def test_an_archive_of_a_fifo_is_refused(api: httpx.Client, sandbox: str) -> None:
    reply = api.get(f"/v1/sandboxes/{sandbox}/files/archive", params={"path": "/tmp/fifo"})
    message = error(reply, 400)
    assert "/tmp/fifo" in message and "FIFO" in message and "archive a file or directory" in message


@pytest.mark.parametrize(("path", "kind"), [("/tmp/fifo", "a FIFO"), ("/tmp/file", "a regular file")])
def test_listing_a_non_directory_says_what_it_is(
    api: httpx.Client, sandbox: str, path: str, kind: str
) -> None:
    message = error(api.get(f"/v1/sandboxes/{sandbox}/files/list", params={"path": path}), 400)
    assert message == f"expected a directory, but {path} is {kind}", message


def test_a_listing_through_a_file_still_blames_the_component(api: httpx.Client, sandbox: str) -> None:
    message = error(api.get(f"/v1/sandboxes/{sandbox}/files/list", params={"path": "/tmp/file/x"}), 400)
    assert "a component of /tmp/file/x is not one" in message


def test_a_refused_move_names_both_paths(api: httpx.Client, sandbox: str) -> None:
    """The source's directory is read-only: the move is refused, naming the source too (it
    named only the destination, which the user may write); so is a move into itself."""
    body = {"src": "/tmp/ro/f", "dst": "/tmp/moved"}
    message = error(api.post(f"/v1/sandboxes/{sandbox}/files/rename", json=body), 403)
    assert message == "the sandbox user may not move /tmp/ro/f -> /tmp/moved", message
    body = {"src": "/tmp", "dst": "/tmp/sub/tmp"}
    message = error(api.post(f"/v1/sandboxes/{sandbox}/files/rename", json=body), 400)
    assert message.startswith("cannot move /tmp -> /tmp/sub/tmp ("), message
