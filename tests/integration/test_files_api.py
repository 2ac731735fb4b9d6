"""The files API on awkward trees: names that are not UTF-8, unreadable files and symlinks, paths
that name a directory. A real server, real sandboxes; the trees are made by commands in them."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from e2b import FileType
from e2b import Sandbox as E2bSandbox

from agentcell.client import InvalidArgumentError, Sandbox
from tests.conftest import AUTH

MIB = 1 << 20
BAD_NAME = "bad\ufffdname"
"""How the API shows the name `bad\\xffname` (its undecodable byte as U+FFFD)."""


@pytest.fixture
def api(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=60) as client:
        yield client


@pytest.fixture
def sandbox_id(api: httpx.Client) -> Iterator[str]:
    reply = api.post("/v1/sandboxes", json={"timeout_s": 120, "metadata": {"suite": "files-api"}})
    assert reply.status_code == 201, reply.text
    sid: str = reply.json()["id"]
    yield sid
    api.delete(f"/v1/sandboxes/{sid}")


def run(api: httpx.Client, sandbox_id: str, cmd: str) -> str:
    reply = api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd})
    assert reply.status_code == 200, reply.text
    events = [json.loads(line) for line in reply.text.splitlines()]
    assert events[-1]["exit_code"] == 0, events
    return "".join(e["data"] for e in events if e["type"] == "stdout")


def files_url(sandbox_id: str, endpoint: str = "") -> str:
    return f"/v1/sandboxes/{sandbox_id}/files{endpoint}"


def test_non_utf8_names_are_listed_with_a_replacement_character(api: httpx.Client, sandbox_id: str) -> None:
    """A name with a byte that is not UTF-8 is listed (shallow and deep) with U+FFFD in its place,
    never a 500; the same holds for a symlink whose target is such a name."""
    run(
        api,
        sandbox_id,
        r'mkdir -p nu/sub && touch nu/ok nu/$(printf "bad\xffname") && ln -s '
        r'$(printf "bad\xffname") nu/sub/link',
    )
    listed = api.get(files_url(sandbox_id, "/list"), params={"path": "nu"})
    assert listed.status_code == 200, listed.text
    assert {e["name"] for e in listed.json()["entries"]} == {"ok", "sub", BAD_NAME}
    deep = api.get(files_url(sandbox_id, "/list"), params={"path": "/home/user", "depth": 4})
    assert deep.status_code == 200, deep.text
    paths = {e["path"]: e for e in deep.json()["entries"]}
    assert f"/home/user/nu/{BAD_NAME}" in paths
    assert paths["/home/user/nu/sub/link"]["symlink_target"] == BAD_NAME


def test_archives_carry_non_utf8_names_as_their_bytes(api: httpx.Client, sandbox_id: str) -> None:
    run(api, sandbox_id, r'mkdir -p nu && printf data > nu/$(printf "x\xffy")')
    reply = api.get(files_url(sandbox_id, "/archive"), params={"path": "nu"})
    assert reply.status_code == 200, reply.text
    with tarfile.open(fileobj=io.BytesIO(reply.content), encoding="utf-8", errors="surrogateescape") as tar:
        members = {m.name.encode("utf-8", "surrogateescape"): m for m in tar.getmembers()}
        assert set(members) == {b"nu", b"nu/x\xffy"}
        extracted = tar.extractfile(members[b"nu/x\xffy"])
        assert extracted is not None and extracted.read() == b"data"


def test_e2b_list_and_watch_show_non_utf8_names(
    api: httpx.Client, make_sandbox: Callable[..., E2bSandbox]
) -> None:
    sandbox = make_sandbox()
    sandbox.files.make_dir("nu")
    watcher = sandbox.files.watch_dir("nu")
    sandbox.commands.run(r'touch nu/$(printf "bad\xffname")')
    assert [e.name for e in sandbox.files.list("nu")] == [BAD_NAME]
    assert BAD_NAME in {e.name for e in watcher.get_new_events()}
    watcher.stop()


def test_e2b_lists_a_symlink_to_an_unreadable_place_as_a_symlink(
    make_sandbox: Callable[..., E2bSandbox],
) -> None:
    """`ln -s /proc/1/root p1`: the sandbox user may not stat the target, so the entry is shown as
    the symlink itself (as a dangling one is), and the rest of the listing is there."""
    sandbox = make_sandbox()
    sandbox.commands.run("mkdir d && ln -s /proc/1/root d/p1 && touch d/plain")
    listed = {e.name: e for e in sandbox.files.list("d")}
    assert set(listed) == {"p1", "plain"}
    assert (listed["p1"].type, listed["p1"].symlink_target) == (FileType.SYMLINK, "/proc/1/root")
    assert sandbox.files.get_info("d/p1").type == FileType.SYMLINK


def test_an_archive_with_an_unreadable_file_is_refused_before_it_starts(
    api: httpx.Client, sandbox_id: str
) -> None:
    """tar would warn and exit non-zero; an HTTP answer cannot, so the archive is a 403 that names
    the file rather than a 200 whose stream breaks half-way."""
    run(
        api,
        sandbox_id,
        "mkdir -p perm/sub && echo a >perm/a && echo x >perm/sub/locked && chmod 0 perm/sub/locked",
    )
    reply = api.get(files_url(sandbox_id, "/archive"), params={"path": "perm"})
    assert reply.status_code == 403, reply.text
    assert reply.json()["code"] == "permission_denied"
    assert "/home/user/perm/sub/locked" in reply.json()["message"]
    run(api, sandbox_id, "chmod 644 perm/sub/locked && chmod 000 perm/sub")
    reply = api.get(files_url(sandbox_id, "/archive"), params={"path": "perm"})
    assert reply.status_code == 403, reply.text
    assert "/home/user/perm/sub" in reply.json()["message"]
    run(api, sandbox_id, "chmod 755 perm/sub")
    reply = api.get(files_url(sandbox_id, "/archive"), params={"path": "perm"})
    assert reply.status_code == 200, reply.text
    with tarfile.open(fileobj=io.BytesIO(reply.content)) as tar:
        assert sorted(tar.getnames()) == ["perm", "perm/a", "perm/sub", "perm/sub/locked"]


@pytest.mark.parametrize("path", ["newdir/", "/home/user/newdir/", "newdir/."])
def test_a_file_path_may_not_end_with_a_slash(api: httpx.Client, sandbox_id: str, path: str) -> None:
    reply = api.put(files_url(sandbox_id), params={"path": path}, content=b"x")
    assert reply.status_code == 400, reply.text
    assert "may not end with '/'" in reply.json()["message"]
    assert api.get(files_url(sandbox_id, "/stat"), params={"path": "newdir"}).status_code == 404


def test_an_upload_part_naming_a_directory_is_refused(api: httpx.Client, sandbox_id: str) -> None:
    reply = api.post(files_url(sandbox_id, "/upload"), files={"f": ("a/", b"x")})
    assert reply.status_code == 400, reply.text
    assert "may not end with '/'" in reply.json()["message"]
    assert api.get(files_url(sandbox_id, "/stat"), params={"path": "a"}).status_code == 404


def test_uploading_a_tree_skips_outside_links_and_non_utf8_names(
    server_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`files.upload` (what `agentcell cp` uses) leaves out a link to a host file outside the tree
    and a file whose name is not UTF-8, each with a warning, and uploads the rest."""
    (tmp_path / "secret").write_text("host secret")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ok.txt").write_text("ok")
    (tree / "inside").symlink_to("ok.txt")
    (tree / "shadow").symlink_to(tmp_path / "secret")
    bad = os.fsdecode(b"x\xffy")
    (tree / bad).write_text("bad")
    with Sandbox.create(api_url=server_url, timeout_s=120) as sandbox:
        with caplog.at_level(logging.WARNING, logger="agentcell.client.transfer"):
            sandbox.files.upload(tree, "/home/user")
        assert {e.name for e in sandbox.files.list("tree")} == {"ok.txt", "inside"}
        assert sandbox.files.read("tree/inside") == b"ok"
        with pytest.raises(InvalidArgumentError, match="not valid UTF-8"):
            sandbox.files.write(f"/home/user/{bad}", b"bad")
    assert len(caplog.records) == 2


def test_downloading_a_tree_keeps_non_utf8_names_as_their_bytes(server_url: str, tmp_path: Path) -> None:
    with Sandbox.create(api_url=server_url, timeout_s=120) as sandbox:
        sandbox.commands.run(r'mkdir dir && printf data > dir/$(printf "x\xffy")', check=True)
        sandbox.files.download("/home/user/dir", tmp_path / "dir")
    assert os.listdir(os.fsencode(tmp_path / "dir")) == [b"x\xffy"]
    assert (tmp_path / "dir" / os.fsdecode(b"x\xffy")).read_bytes() == b"data"


def test_a_multipart_upload_too_big_for_the_disk_is_refused_as_it_streams(
    api: httpx.Client, server_url: str
) -> None:
    """Parts stream into the sandbox (nothing is spooled on the server's disk): 256 MiB sent to a
    16 MB disk is a 429 as soon as the disk is full, long before the client has sent it all."""
    reply = api.post("/v1/sandboxes", json={"timeout_s": 120, "disk_mb": 16})
    assert reply.status_code == 201, reply.text
    sid = reply.json()["id"]
    try:
        status, sent = _send_multipart(server_url, f"/v1/sandboxes/{sid}/files/upload", 256 * MIB)
        assert status.startswith(b"HTTP/1.1 429"), status
        assert sent < 128 * MIB, f"the server read {sent >> 20} MiB before answering"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def _send_multipart(server_url: str, path: str, size: int) -> tuple[bytes, int]:
    """Send one file part of `size` zero bytes until the server answers; (status line, bytes sent)."""
    boundary = "acell-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="f"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    url = httpx.URL(server_url)
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {url.host}\r\nx-api-key: {AUTH['x-api-key']}\r\n"
        f"content-type: multipart/form-data; boundary={boundary}\r\n"
        f"content-length: {len(head) + size + len(tail)}\r\n\r\n"
    ).encode()
    sent = 0
    with socket.create_connection((url.host, url.port or 80), timeout=30) as sock:
        sock.sendall(request + head)
        with contextlib.suppress(OSError):  # the server may close as it answers
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(bytes(MIB))
                sent += MIB
        answer = sock.recv(4096)
    return answer.split(b"\r\n", 1)[0], sent


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not multipart at all", "malformed"),
        (
            b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="cut.txt"\r\n\r\nhalf',
            "ended inside",
        ),
        (b'--xyz\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--xyz--\r\n', "filename"),
    ],
    ids=["garbage", "truncated", "not-a-file"],
)
def test_bad_multipart_bodies_are_a_400_and_leave_nothing(
    api: httpx.Client, sandbox_id: str, body: bytes, needle: str
) -> None:
    reply = api.post(
        files_url(sandbox_id, "/upload"),
        content=body,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert reply.status_code == 400, reply.text
    assert needle in reply.json()["message"]
    assert run(api, sandbox_id, "ls -A /home/user") == ""
