"""FileWatch: inotify on a real directory, through the confined file access a sandbox's files use
(as the fake driver has them: a sandbox root in a temp dir, acting as the server itself)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument, NotFound
from agentcell.server.sandbox import file_watch
from agentcell.server.sandbox.driver import FileStat
from agentcell.server.sandbox.file_watch import (
    IN_CREATE,
    IN_ISDIR,
    IN_MODIFY,
    FileEvent,
    FileWatch,
    parse_events,
)
from agentcell.server.sandbox.linux.files import RootedFiles

HOME = "/home/user"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "home" / "user" / "w").mkdir(parents=True)
    return tmp_path


@pytest.fixture
async def files(root: Path) -> RootedFiles:
    return RootedFiles(str(root), uid=None, gid=None)


@pytest.fixture
async def watched(files: RootedFiles) -> AsyncIterator[FileWatch]:
    watch = await FileWatch.open(files, "w")
    yield watch
    watch.close()


async def events_until(watch: FileWatch, count: int) -> list[tuple[str, str]]:
    """The events taken until at least `count` came (or 5 s of none)."""
    seen: list[FileEvent] = []
    while len(seen) < count:
        before = len(seen)
        await watch.wait(5.0)
        seen += watch.take()
        if len(seen) == before:
            break
    return [(e.name, e.kind) for e in seen]


def test_parse_events_reads_each_event_and_its_padded_name() -> None:
    first = struct.pack("iIII", 1, IN_CREATE, 0, 16) + b"a.txt".ljust(16, b"\0")
    second = struct.pack("iIII", 2, IN_MODIFY | IN_ISDIR, 7, 0)
    events = parse_events(first + second)
    assert [(e.wd, e.mask, e.cookie, e.name) for e in events] == [
        (1, IN_CREATE, 0, "a.txt"),
        (2, IN_MODIFY | IN_ISDIR, 7, ""),
    ]


async def test_changes_made_in_place_are_reported_in_order(root: Path, watched: FileWatch) -> None:
    target = root / "home/user/w/f.txt"
    target.write_text("one")
    target.chmod(0o600)
    target.rename(target.with_name("g.txt"))
    (root / "home/user/w/g.txt").unlink()
    assert await events_until(watched, 5) == [
        ("f.txt", "create"),
        ("f.txt", "write"),
        ("f.txt", "chmod"),
        ("f.txt", "rename"),
        ("g.txt", "create"),
        ("g.txt", "remove"),
    ]


async def test_a_files_api_write_is_a_create_and_write_then_a_write(
    files: RootedFiles, watched: FileWatch
) -> None:
    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        yield data

    await files.write("w/new.txt", chunks(b"first"))
    assert await events_until(watched, 2) == [("new.txt", "create"), ("new.txt", "write")]
    await files.write("w/new.txt", chunks(b"second"))
    assert await events_until(watched, 1) == [("new.txt", "write")]  # the temp file never shows


async def test_take_has_what_the_kernel_holds_before_the_loop_read_it(root: Path, watched: FileWatch) -> None:
    """E2B's `get_new_events` polls with `take()`: a change made just before it is in the answer,
    though the loop has not had a turn to read the watch's descriptor."""
    (root / "home/user/w/now.txt").write_text("")
    assert [(e.name, e.kind) for e in watched.take()] == [("now.txt", "create")]


async def test_a_recursive_watch_sees_a_tree_made_at_once(root: Path, files: RootedFiles) -> None:
    (root / "home/user/w/old").mkdir()
    watch = await FileWatch.open(files, "w", recursive=True)
    try:
        (root / "home/user/w/old/in_old.txt").write_text("x")
        # made faster than the watch can follow: what b and c hold is reported when watched
        (root / "home/user/w/a/b/c").mkdir(parents=True)
        (root / "home/user/w/a/b/c/deep.txt").write_text("deep")
        seen = set(await events_until(watch, 7))
    finally:
        watch.close()
    assert {
        ("old/in_old.txt", "create"),
        ("a", "create"),
        ("a/b", "create"),
        ("a/b/c", "create"),
        ("a/b/c/deep.txt", "create"),
        ("a/b/c/deep.txt", "write"),
    } <= seen


class FilesMakingDuringListing(RootedFiles):
    """Makes a file in the folder it lists as its listing ends, and lists it: as a process in
    the sandbox could while a late folder's watch begins, the event left unread by the loop."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), uid=None, gid=None)
        self.host_root = root
        self.make_in: str | None = None

    async def list(self, path: str, depth: int = 1) -> list[FileStat]:
        listed = await super().list(path, depth)
        if self.make_in is not None and path.endswith(self.make_in):
            made = self.host_root / path.lstrip("/") / "made_meanwhile.txt"
            made.write_text("")  # (and no await until the listing is read: the event waits)
            listed.append(FileStat(f"{path}/{made.name}", made.name, "file", 0, 0o644, datetime.now(UTC)))
        return listed


async def test_a_file_made_while_a_late_folder_is_listed_is_reported_once(root: Path) -> None:
    """Its `create` comes both from inotify (the folder's watch had begun) and from the listing
    that reports what the folder held: it is reported once."""
    files = FilesMakingDuringListing(root)
    watch = await FileWatch.open(files, "w", recursive=True)
    try:
        files.make_in = "/w/late"
        (root / "home/user/w/late").mkdir()
        seen = await events_until(watch, 2)
        await asyncio.sleep(0.2)  # (a duplicate would come from the kernel's queue, read later)
        seen += [(e.name, e.kind) for e in watch.take()]
    finally:
        watch.close()
    assert seen == [("late", "create"), ("late/made_meanwhile.txt", "create")]


async def test_a_flat_watch_does_not_report_inside_subdirectories(root: Path, files: RootedFiles) -> None:
    (root / "home/user/w/sub").mkdir()
    watch = await FileWatch.open(files, "w")
    try:
        (root / "home/user/w/sub/hidden.txt").write_text("x")
        (root / "home/user/w/top.txt").write_text("")
        assert await events_until(watch, 1) == [("top.txt", "create")]
    finally:
        watch.close()


async def test_removing_the_watched_directory_ends_the_watch(root: Path, watched: FileWatch) -> None:
    (root / "home/user/w").rmdir()
    await asyncio.wait_for(watched.wait(30.0), 10.0)
    watched.take()
    assert watched.ended is not None and "removed" in watched.ended


async def test_only_directories_inside_the_root_can_be_watched(root: Path, files: RootedFiles) -> None:
    (root / "home/user/file.txt").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        await FileWatch.open(files, "file.txt")
    with pytest.raises(NotFound):
        await FileWatch.open(files, "missing")
    # an absolute symlink resolves inside the sandbox root, never to the host's /etc
    assert stat.S_ISDIR(os.stat("/etc/ssl").st_mode)
    os.symlink("/etc", root / "home/user/escape")
    with pytest.raises(NotFound):
        await FileWatch.open(files, "escape/ssl")
    with pytest.raises(InvalidArgument):
        await FileWatch.open(files, "w/../../..")


async def test_past_the_queue_bound_events_are_dropped_and_said_so(
    root: Path, watched: FileWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_watch, "MAX_PENDING", 3)
    for index in range(5):
        (root / f"home/user/w/{index}").touch()
    await watched.wait(5.0)
    assert len(watched.take()) == 3 and watched.overflowed


async def test_close_releases_the_inotify_descriptor(files: RootedFiles) -> None:
    before = inotify_fds()
    watch = await FileWatch.open(files, "w")
    assert len(inotify_fds() - before) == 1
    watch.close()
    watch.close()
    assert inotify_fds() == before
    assert watch.ended == "closed"


def inotify_fds() -> set[str]:
    """This process's inotify descriptors (counting all of its fds would count other tests' too)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own, closed since)
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify":
                found.add(fd)
    return found
