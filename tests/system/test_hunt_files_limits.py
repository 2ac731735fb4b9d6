"""RootedFiles against trees a hostile sandbox can build: what one call may cost the server is
bounded by the call's limits, not by the size or depth of the sandbox's tree.

Each test builds a sandbox root in tmp_path with home/user owned by the sandbox user (1000) and
acts as that user, as the Linux driver does (needs root: setfsuid, chown).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.errors import Conflict, PayloadTooLarge
from agentcell.server.api.archive import archive_entries
from agentcell.server.sandbox.linux.files import RootedFiles, _open_doomed, _reopen_parent

pytestmark = pytest.mark.system
UID = GID = 1000


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "root" / "home" / "user"
    home.mkdir(parents=True)
    (tmp_path / "root").chmod(0o755)
    os.chown(home, UID, GID)
    yield home
    # a chain a failed test left would break pytest's own (recursive) tmp cleanup
    subprocess.run(["rm", "-rf", str(tmp_path / "root")], check=True)


@pytest.fixture
def files(home: Path) -> RootedFiles:
    return RootedFiles(str(home.parent.parent), UID, GID)


def make_chain(home: Path, depth: int) -> None:
    """home/d/d/d/... `depth` levels deep, owned by the sandbox user (deeper than PATH_MAX allows
    to name at once: it is built one level at a time, as a sandbox can)."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            os.chown("d", UID, GID, dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as leaf:
            os.fchown(leaf.fileno(), UID, GID)
    finally:
        os.close(fd)


@contextlib.contextmanager
def fd_headroom(spare: int) -> Iterator[None]:
    """Lower this process's open-file limit to what it has open now plus `spare`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_removing_a_deep_tree_holds_a_bounded_number_of_fds(files: RootedFiles, home: Path) -> None:
    """A tree 3000 levels deep is removed with at most a few hundred fds open: the server's fds
    (shared by every sandbox, and by every connection) are not the sandbox's to spend. It held one
    fd per level, so a 20000-deep tree ran the whole server out of fds (EMFILE, a 500)."""
    await files.stat("/")  # the pool and its threads exist before the limit drops
    make_chain(home, 3000)
    with fd_headroom(300):
        await files.remove("d")
    assert os.listdir(home) == []


async def test_a_deep_tree_climbs_back_only_through_its_own_directories(
    files: RootedFiles, home: Path
) -> None:
    """Removing climbs back up a deep tree by '..' and checks each parent is the one it came down
    through: a directory the sandbox moved meanwhile stops the removal with a Conflict instead of
    emptying another directory; an unchanged tree goes entirely, its siblings stay."""
    (home / "a" / "b").mkdir(parents=True)
    (home / "elsewhere").mkdir()
    a = os.open(home / "a", os.O_RDONLY | os.O_DIRECTORY)
    try:
        parent, child = _open_doomed(a, "."), _open_doomed(a, "b")
        parent.close()
        os.rename(home / "a" / "b", home / "elsewhere" / "b")
        with pytest.raises(Conflict, match="remove it again"):
            _reopen_parent(parent, child)
        assert parent.fd == -1
        child.close()
    finally:
        os.close(a)
    make_chain(home, 700)
    await files.remove("d")
    assert sorted(os.listdir(home)) == ["a", "elsewhere"]


async def test_listing_a_huge_directory_stops_at_the_entry_limit(home: Path) -> None:
    """A directory of 20000 entries listed with a limit of 100 is refused after reading about
    100 names: no stat of each entry and no list of them all in server memory first (a sandbox's
    million-entry directory cost ~300 MB of server memory and seconds of a pool thread per call),
    and the message does not tell a depth-1 listing to list less deep."""
    big = home / "big"
    big.mkdir()
    (big / "first").touch()
    for i in range(20000):  # hard links: a new inode each would take ext4 seconds
        os.link(big / "first", big / f"{i:06d}-some-longer-file-name")
    os.chown(big, UID, GID)
    files = RootedFiles(str(home.parent.parent), UID, GID, max_list_entries=100)
    await files.stat("/")
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match=r"over 100 entries") as refused:
            await files.list("/home/user/big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"listing held {peak} bytes"
    assert "less deep" not in refused.value.message
    with pytest.raises(PayloadTooLarge, match="less deep"):
        await files.list("/home/user", depth=2)
    assert len(await RootedFiles(str(home.parent.parent), UID, GID).list("/home/user/big")) == 20001


async def test_an_archive_of_a_tree_past_the_listing_limit_says_how_to_get_it(home: Path) -> None:
    """An archive lists its tree first: past the listing limit the refusal gives an archive's
    advice (download parts, or tar it inside the sandbox), not a listing's ("list less deep")."""
    tree = home / "tree" / "deeper"
    tree.mkdir(parents=True)
    for i in range(150):
        (tree / f"f{i}").touch()
    for path in (home / "tree", tree, *tree.iterdir()):
        os.chown(path, UID, GID)
    files = RootedFiles(str(home.parent.parent), UID, GID, max_list_entries=100)
    root = await files.stat("/home/user/tree")
    with pytest.raises(PayloadTooLarge) as refused:
        await archive_entries(files, root)
    message = refused.value.message
    assert message.startswith("/home/user/tree holds more entries than one archive may")
    assert "tar czf" in message and "less deep" not in message
    smaller = await files.stat("/home/user/tree/deeper")
    with pytest.raises(PayloadTooLarge):  # 150 entries: still too many, the same advice
        await archive_entries(files, smaller)
    (tree / "f0").unlink()
    assert len(await archive_entries(RootedFiles(str(home.parent.parent), UID, GID), root)) == 151
