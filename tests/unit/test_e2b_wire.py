"""E2B compatibility, the pure parts: Connect envelopes and deadlines, sandbox targets from
headers and hosts, entry info, result lines, and the polling directory watcher over real files."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentcell.errors import NotFound
from agentcell.protocol.code import CodeEndEvent, CodeResultEvent
from agentcell.server.e2b import connect
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.entries import entry_info
from agentcell.server.e2b.interpreter import lines_of
from agentcell.server.e2b.target import Target, from_headers, parse_label
from agentcell.server.e2b.watch import Watcher
from agentcell.server.gateway import e2b as gateway_e2b
from agentcell.server.sandbox.driver import FileStat
from agentcell.server.sandbox.linux.files import RootedFiles


def test_envelopes_round_trip_and_end_of_stream() -> None:
    body = connect.envelope({"a": 1}) + connect.envelope({"b": "x"}) + connect.end_of_stream()
    assert connect.decode_envelopes(body) == [{"a": 1}, {"b": "x"}]
    error = connect.end_of_stream(RpcError("deadline_exceeded", "late"))
    assert error[0] == connect.FLAG_END_STREAM
    assert json.loads(error[5:]) == {"error": {"code": "deadline_exceeded", "message": "late"}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x00\x00", "invalid_argument"),
        (b"\x00\x00\x00\x00\x09{}", "invalid_argument"),
        (b"\x00\x00\x00\x00\x02[]", "invalid_argument"),
        (b"\x00\x00\x00\x00\x03{x}", "invalid_argument"),
        (b"\x01\x00\x00\x00\x02{}", "internal"),
    ],
)
def test_malformed_envelopes_name_the_problem(body: bytes, code: str) -> None:
    with pytest.raises(RpcError) as failed:
        connect.decode_envelopes(body)
    assert failed.value.code == code and failed.value.status in (400, 500)


def test_envelope_reader_takes_messages_as_they_arrive() -> None:
    body = connect.envelope({"start": {}}) + connect.envelope({"data": 1}) + connect.end_of_stream()
    reader = connect.EnvelopeReader()
    got = [m for i in range(0, len(body), 3) for m in reader.feed(body[i : i + 3])]
    assert got == [{"start": {}}, {"data": 1}] and reader.ended
    reader.finish()
    cut = connect.EnvelopeReader()
    cut.feed(connect.envelope({"a": 1})[:-1])
    with pytest.raises(RpcError):
        cut.finish()


def test_deadline_header() -> None:
    assert connect.deadline_s(None) is None
    assert connect.deadline_s("60000") == 60.0
    assert connect.deadline_s("0") == 0.001
    with pytest.raises(RpcError):
        connect.deadline_s("-5")


def test_targets_from_headers_and_labels() -> None:
    assert from_headers({b"e2b-sandbox-id": b"sbx_1", b"e2b-sandbox-port": b"49999"}) == Target(
        "sbx_1", 49999
    )
    assert from_headers({b"e2b-sandbox-id": b"sbx_1"}) == Target("sbx_1", 49983)
    assert from_headers({}) is None
    assert parse_label("8080-sbx_ab") == Target("sbx_ab", 8080)
    assert parse_label("x-sbx") is None and parse_label("99999-sbx") is None


def test_gateway_host_parsing() -> None:
    domain = b"sbx.test"
    found = gateway_e2b.sandbox_port(b"8080-sbx_0a.SBX.test:8700", domain)
    assert found == gateway_e2b.SandboxPort("sbx_0a", 8080)
    assert gateway_e2b.sandbox_port(b"8080-sbx_0a.other.test", domain) is None
    assert gateway_e2b.sandbox_port(b"chat.sbx.test", domain) is None
    assert gateway_e2b.sandbox_port(b"8080-sbx_0a.sbx.test", None) is None
    assert gateway_e2b.control_path(found, b"/files") == b"/e2b/_sandbox/8080-sbx_0a/files"
    assert gateway_e2b.is_signed_file_url(b"/files", b"path=a&signature=v1_x")
    assert not gateway_e2b.is_signed_file_url(b"/files", b"path=a")


def test_entry_info_is_proto3_json() -> None:
    stat = FileStat("/home/user/a", "a", "dir", 4096, 0o755, datetime(2026, 1, 2, tzinfo=UTC))
    assert entry_info(stat) == {
        "name": "a",
        "type": "FILE_TYPE_DIRECTORY",
        "path": "/home/user/a",
        "size": "4096",
        "mode": 0o755,
        "permissions": "drwxr-xr-x",
        "owner": "user",
        "group": "user",
        "modifiedTime": "2026-01-02T00:00:00Z",
    }


def test_result_and_end_lines() -> None:
    result = CodeResultEvent(
        data={"text/plain": "2", "image/png": "iVBO", "x/custom": 1}, is_main_result=True
    )
    [line] = lines_of(result, "t", saw_error=False)
    assert line == {
        "type": "result",
        "is_main_result": True,
        "text": "2",
        "png": "iVBO",
        "extra": {"x/custom": 1},
    }
    end = CodeEndEvent(context_id="ctx_1", status="kernel_died", execution_count=3, duration_ms=1.0)
    lines = lines_of(end, "t", saw_error=False)
    assert [x["type"] for x in lines] == ["number_of_executions", "error", "end_of_execution"]


async def test_watcher_reports_create_write_remove(tmp_path: Path) -> None:
    home = tmp_path / "home" / "user" / "w"
    (home / "sub").mkdir(parents=True)
    (home / "keep.txt").write_text("1")
    watcher = Watcher(RootedFiles(str(tmp_path), uid=None, gid=None), "w", recursive=True)
    await watcher.start()
    assert await watcher.changes() == []
    (home / "sub" / "new.txt").write_text("data")
    (home / "keep.txt").write_text("22")
    os.utime(home / "keep.txt", (1, 1))
    events = await watcher.changes()
    assert [(e["name"], e["type"]) for e in events] == [
        ("sub/new.txt", "EVENT_TYPE_CREATE"),
        ("sub/new.txt", "EVENT_TYPE_WRITE"),
        ("keep.txt", "EVENT_TYPE_WRITE"),
        ("keep.txt", "EVENT_TYPE_CHMOD"),
    ]
    (home / "keep.txt").unlink()
    assert await watcher.changes() == [{"name": "keep.txt", "type": "EVENT_TYPE_REMOVE"}]
    (home / "sub" / "new.txt").unlink()
    (home / "sub").rmdir()
    home.rmdir()
    assert [e["name"] for e in await watcher.changes()] == ["sub/new.txt", "sub"]
    with pytest.raises(NotFound, match="is gone"):
        await watcher.changes()
    watcher.close()
