"""A watch stream's lines after its `start` (scheduler/watch_streams.py), over a real FileWatch of
a temp dir (as tests/unit/test_file_watch.py has it) and a Sandbox record the test stops:
the `end` when the sandbox stops though inotify says nothing, the keepalive of a quiet stream, the
one `overflow`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.protocol.files import WatchEnd, WatchEvent, WatchKeepalive, WatchLine, WatchOverflow
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.sandbox import file_watch
from agentcell.server.sandbox.file_watch import FileWatch
from agentcell.server.sandbox.linux.files import RootedFiles
from agentcell.server.scheduler import watch_streams
from agentcell.server.scheduler.sandboxes import Sandbox
from agentcell.server.scheduler.watch_streams import SANDBOX_ENDED


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "home" / "user" / "w").mkdir(parents=True)
    return tmp_path


@pytest.fixture
async def watch(root: Path) -> AsyncIterator[FileWatch]:
    opened = await FileWatch.open(RootedFiles(str(root), uid=None, gid=None), "w")
    yield opened
    opened.close()


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(id="sbx_test", request=SandboxCreate(), created_at=0.0, expires_at=0.0)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_streams, "KEEPALIVE_S", 0.05)


async def test_a_sandbox_that_stops_ends_the_stream_though_inotify_says_nothing(
    root: Path, watch: FileWatch, sandbox: Sandbox
) -> None:
    (root / "home/user/w/f").write_text("x")
    watch.end_when(sandbox.stopping, SANDBOX_ENDED)
    lines = watch_streams._changes(watch)
    first = await anext(lines)
    sandbox.stopping.set()
    rest: list[WatchLine] = [line async for batch in lines for line in batch]
    assert first[0] == WatchEvent(kind="create", name="f", path="/home/user/w/f")
    assert [line for line in rest if not isinstance(line, WatchKeepalive | WatchEvent)] == [
        WatchEnd(reason=SANDBOX_ENDED)
    ]


async def test_a_quiet_stream_sends_keepalives(watch: FileWatch, sandbox: Sandbox) -> None:
    lines = watch_streams._changes(watch)
    assert await anext(lines) == [WatchKeepalive()]
    assert await anext(lines) == [WatchKeepalive()]
    await lines.aclose()


async def test_dropped_changes_are_told_once(
    root: Path, watch: FileWatch, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_watch, "MAX_PENDING", 2)
    for name in "abcde":
        (root / "home/user/w" / name).touch()
    lines = watch_streams._changes(watch)
    first = await anext(lines)
    (root / "home/user/w/later").touch()
    second = await anext(lines)
    await lines.aclose()
    assert [line for line in first if isinstance(line, WatchOverflow)] == [WatchOverflow()]
    assert second == [WatchEvent(kind="create", name="later", path="/home/user/w/later")]
